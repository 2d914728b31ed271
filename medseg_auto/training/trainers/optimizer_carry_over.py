"""``OptimizerCarryOver`` (OCTL): fine-tuning continues the source run's optimizer state.

Paper: Goodman, Greenspan, Goldberger, "Supervised Domain Adaptation Using Gradients Transfer
for Improved Medical Image Analysis", DART 2022, Algorithms 2 and 3 (reading notes
``NOTES_dart2022.md`` 2.2). The source run's gradient history is passed on with its weights:

- SGD (the nnU-Net recipe): ``H_0 = H_source``; ``H_t = mu H_{t-1} + g_t``; ``theta_t =
  theta_{t-1} - gamma H_t`` with ``mu = 0.99``. The momentum buffers are copied; the update keeps
  the source run's Nesterov flag (nnU-Net trains with Nesterov, the paper's Algorithm 2 is
  heavy-ball; the buffer ``H`` is defined the same way in both).
- Adam: ``M_0, V_0 = M_source, V_source``, ``beta1, beta2 = 0.99, 0.999`` and bias correction
  ``1 - beta^(t + 100)``: the fine-tuning "starts at step 100" (the paper: step 1 forgets the
  source history at once, the last source step gives it too much weight). Implemented by setting
  ``torch.optim.Adam``'s step counter to 100, as the authors' code does (``FROM_STEP: 100``);
  the printed ``M_t = beta1 M_{t-1} + (1 - beta1) g_t^2`` is a typo for ``g_t``.

Only the per-parameter state is taken: learning rate, weight decay and schedule are this run's
(``settings.initial_lr`` for SGD, ``--octl-lr`` to change it; 1e-3 for Adam as in the paper),
and nnU-Net's poly decay runs over the fine-tuning epochs (the paper: 1e-3, x0.1 at epoch 45 of
60). The source checkpoint is ``--pretrained`` (read with ``weights_only=True``); its optimizer
must hold exactly this run's parameters in the same order and shapes (the same plans and
network, no extra trainable modules), otherwise the run stops with the mismatch named.
Resuming an OCTL run (``--continue``) restores its own optimizer instead. OCTL changes only the
optimizer; the paper fine-tunes on the target cases alone, which in a merged multi-site dataset
is ``-tr FineTuneOnSites+OptimizerCarryOver --train-sites TARGET --pretrained SOURCE.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint
from medseg_auto.training.hooks import DomainMethod, OptimizerSetup, TrainingContext, TrainingSettings
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.octl")

OCTL_MOMENTUM = 0.99
OCTL_BETAS = (0.99, 0.999)
OCTL_ADAM_LR = 1e-3
STATE_KEYS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


def optimizer_kind(state: Mapping[str, Any], source: Path) -> str:
    """``"sgd"`` or ``"adam"`` from an optimizer ``state_dict``'s hyper-parameter names."""
    groups = state.get("param_groups") or [{}]
    if "nesterov" in groups[0] and "momentum" in groups[0]:
        return "sgd"
    if "amsgrad" in groups[0] and "betas" in groups[0]:
        return "adam"
    raise CheckpointError(f"{source}: the optimizer state is neither SGD nor Adam (hyper-parameters "
                          f"{sorted(groups[0])}); OCTL carries over only these two")


def carry_state(source_state: Mapping[str, Any], optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                kind: str, source: Path, step_offset: int = 100) -> int:
    """Copy the per-parameter buffers of ``source_state`` into ``optimizer`` for ``params`` (in
    order); Adam's step counter is set to ``step_offset``. Returns how many parameters got state."""
    source_ids = [index for group in source_state["param_groups"] for index in group["params"]]
    if len(source_ids) != len(params):
        raise CheckpointError(f"{source}: its optimizer holds {len(source_ids)} parameter tensors, this run trains "
                              f"{len(params)}; OCTL needs the same network (plans, configuration, --network) and "
                              "no extra trainable modules")
    per_parameter = source_state.get("state", {})
    carried = 0
    for position, (index, param) in enumerate(zip(source_ids, params)):
        entry = per_parameter.get(index)
        if entry is None:  # never stepped in the source run: starts from zero, as it would there
            continue
        missing = [key for key in STATE_KEYS[kind] if key not in entry]
        if missing:
            raise CheckpointError(f"{source}: parameter {position} has no {', '.join(missing)} in its optimizer state")
        new_state: dict[str, Any] = {}
        for key in STATE_KEYS[kind]:
            tensor = entry[key]
            if tuple(tensor.shape) != tuple(param.shape):
                raise CheckpointError(f"{source}: optimizer '{key}' of parameter {position} has shape "
                                      f"{tuple(tensor.shape)}, this network's has {tuple(param.shape)}")
            new_state[key] = tensor.detach().to(device=param.device, dtype=param.dtype).clone()
        if kind == "adam":
            new_state["step"] = torch.tensor(float(step_offset))
        optimizer.state[param] = new_state
        carried += 1
    return carried


def build_optimizer(kind: str, params: list[nn.Parameter], lr: float, weight_decay: float,
                    nesterov: bool = True) -> torch.optim.Optimizer:
    """OCTL's optimizer: SGD with mu 0.99 or Adam with betas (0.99, 0.999)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=OCTL_MOMENTUM, weight_decay=weight_decay, nesterov=nesterov)
    return torch.optim.Adam(params, lr=lr, betas=OCTL_BETAS, weight_decay=weight_decay)


@register_trainer("OptimizerCarryOver")
class OptimizerCarryOver(DomainMethod):
    """OCTL (DART 2022): fine-tuning continues the --pretrained run's SGD momentum / Adam moments."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--octl-lr", type=float, default=None,
                            help="fine-tuning learning rate (default: the recipe's 0.01 for SGD, 1e-3 for Adam)")
        parser.add_argument("--octl-step-offset", type=int, default=100,
                            help="Adam only: bias correction uses step t + OFFSET (the paper's 100)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.source: Path | None = None
        self.output_folder: Path | None = None
        self.settings = TrainingSettings()
        self.awaiting_resume = False
        self.resumed = False
        self.carried = 0

    def setup(self, context: TrainingContext) -> None:
        self.source = context.pretrained_checkpoint
        self.output_folder = context.output_folder
        self.settings = context.settings or self.settings

    def make_optimizer(self, params: list[nn.Parameter]) -> OptimizerSetup:
        if self.source is None:
            return self._optimizer_for_resume(params)
        state = load_checkpoint(self.source).get("optimizer_state")
        if not isinstance(state, Mapping) or "param_groups" not in state:
            raise CheckpointError(f"{self.source}: holds no optimizer state; OCTL needs a training checkpoint "
                                  "(checkpoint_final.pt / checkpoint_best.pt), not bare weights")
        kind = optimizer_kind(state, self.source)
        optimizer = build_optimizer(kind, params, self._lr(kind), self.settings.weight_decay,
                                    nesterov=bool(state["param_groups"][0].get("nesterov", True)))
        self.carried = carry_state(state, optimizer, params, kind, self.source, int(self.options["octl_step_offset"]))
        log.info("OCTL: %s state of %d of %d parameter tensors carried over from %s", kind.upper(), self.carried,
                 len(params), self.source)
        return OptimizerSetup(optimizer)

    def _lr(self, kind: str) -> float:
        if self.options.get("octl_lr") is not None:
            return float(self.options["octl_lr"])
        return self.settings.initial_lr if kind == "sgd" else OCTL_ADAM_LR

    def _optimizer_for_resume(self, params: list[nn.Parameter]) -> OptimizerSetup:
        """No ``--pretrained``: only a resumed OCTL run may go on (its checkpoint restores the
        carried-over optimizer); :meth:`on_epoch_start` stops any other run before its first step."""
        resume = find_resume_checkpoint(self.output_folder) if self.output_folder is not None else None
        if resume is None:
            raise MedsegError("OptimizerCarryOver needs --pretrained SOURCE_CHECKPOINT: it continues that run's "
                              "optimizer state (e.g. results/.../Base__.../fold_0/checkpoint_final.pt)")
        state = load_checkpoint(resume).get("optimizer_state") or {}
        kind = optimizer_kind(state, resume)
        self.awaiting_resume = True
        return OptimizerSetup(build_optimizer(kind, params, self._lr(kind), self.settings.weight_decay))

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.awaiting_resume and not self.resumed:
            raise MedsegError("OptimizerCarryOver needs --pretrained SOURCE_CHECKPOINT (or --continue to resume an "
                              "OCTL run); without either there is no optimizer state to carry over")

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"source_checkpoint": str(self.source) if self.source else "", "carried_parameters": self.carried}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.resumed = True
        self.source = Path(state["source_checkpoint"]) if state.get("source_checkpoint") else self.source
        self.carried = int(state.get("carried_parameters", self.carried))
