"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, nothing else, so loading
never unpickles an arbitrary object (a checkpoint from the internet cannot run code). Random
states are stored in that form too: Python's as a list, numpy's as a tensor plus numbers.

Keys (nnU-Net's, plus what exact resumption needs)::

    format_version, network_weights, optimizer_state, scheduler_state, grad_scaler_state,
    current_epoch (the next epoch to run), logging (the curves), best_ema, rng_states,
    trainer_name, init_args, plans_name, configuration, inference_allowed_mirroring_axes,
    methods_state ({method class name: extra state})

Files in a fold folder: ``checkpoint_latest.pt`` (every ``save_every`` epochs),
``checkpoint_best.pt`` (whenever the EMA pseudo Dice improves), ``checkpoint_final.pt`` (at the
end; ``checkpoint_latest.pt`` is then removed, as nnU-Net does). ``--continue`` resumes from
the first that exists of final, latest, best.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import get_logger

CHECKPOINT_FORMAT_VERSION = 1
FINAL, LATEST, BEST = "checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt"
RESUME_ORDER = (FINAL, LATEST, BEST)
DDP_PREFIX = "module."

log = get_logger("training.checkpoint")


class CheckpointError(MedsegError):
    """A checkpoint is missing, unreadable, or does not fit the network."""


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    with atomic_path(path, suffix=".pt") as temp:
        torch.save(dict(payload), temp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, refusing anything but plain data (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, foreign formats
        raise CheckpointError(f"{path}: cannot be read as a plain-data checkpoint ({error})") from error


def find_resume_checkpoint(fold_folder: str | os.PathLike) -> Path | None:
    """The checkpoint ``--continue`` uses: final, else latest, else best; None if none exists."""
    for name in RESUME_ORDER:
        candidate = Path(fold_folder) / name
        if candidate.is_file():
            return candidate
    return None


def capture_rng_states() -> dict[str, Any]:
    """Python's, numpy's and torch's global random states as plain data."""
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_states` (CUDA states only where the same devices exist)."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    state = states["numpy"]
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def network_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights without the DDP wrapper's ``module.`` prefix."""
    bare = network.module if hasattr(network, "module") else network
    return bare.state_dict()


def load_pretrained_weights(network: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Copy weights whose name and shape match from a checkpoint (or plain state dict) at ``path``.

    Returns ``{"loaded": [...], "skipped": [...], "missing": [...]}``: ``skipped`` names
    checkpoint tensors that are absent from the network or differ in shape (e.g. a new number of
    classes), ``missing`` the network's tensors left at their initialisation. Only weights are
    taken: no optimizer, epoch or random state (that is ``--continue``).
    """
    payload = load_checkpoint(path)
    weights = payload.get("network_weights", payload)
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: holds no network weights ('network_weights' or a plain state dict)")
    bare = network.module if hasattr(network, "module") else network
    own = bare.state_dict()
    matched, skipped = {}, []
    for name, tensor in weights.items():
        key = name[len(DDP_PREFIX):] if name.startswith(DDP_PREFIX) else name
        if key in own and own[key].shape == tensor.shape:
            matched[key] = tensor
        else:
            skipped.append(name)
    bare.load_state_dict(matched, strict=False)
    report = {"loaded": sorted(matched), "skipped": sorted(skipped), "missing": sorted(set(own) - set(matched))}
    log.info("pretrained weights from %s: %d tensors loaded, %d skipped, %d left at initialisation",
             path, len(report["loaded"]), len(skipped), len(report["missing"]))
    for name in skipped:
        log.info("  skipped %s (absent or different shape)", name)
    return report
