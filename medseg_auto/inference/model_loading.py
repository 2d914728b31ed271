"""Loading trained folds for prediction, from ``results/DATASET/TRAINER__PLANS__CONFIG/``.

The network is rebuilt the way the trainer built it (a method's ``build_network`` if it has
one, else the registered network the checkpoint names, ``--network``, with the run's
deep-supervision setting), then the weights are
loaded from a plain-data checkpoint (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.planning.plans import PLANS_FILE_NAME, ConfigurationPlan, Plans
from medseg_auto.training.checkpoint import load_checkpoint
from medseg_auto.training.network_registry import DEFAULT_NETWORK, build_registered_network
from medseg_auto.training.registry import get_trainer

CHECKPOINT_FILES = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


@dataclass
class LoadedModel:
    """One trained network with what prediction needs to know about it.

    ``network`` (eval mode) maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``; ``mirror_axes``
    are the spatial axes allowed for test-time mirroring (None: none); ``name`` is the fold
    folder's name (``fold_0``), which the OOD references are looked up by.
    """

    network: nn.Module
    plans: Plans
    config: ConfigurationPlan
    mirror_axes: list[int] | None
    name: str = "model"


def experiment_folder(results_dataset_folder: Path, trainer: str, plans_name: str, configuration: str) -> Path:
    folder = results_dataset_folder / f"{trainer}__{plans_name}__{configuration}"
    if not folder.is_dir():
        known = sorted(p.name for p in results_dataset_folder.glob("*__*__*")) if results_dataset_folder.is_dir() else []
        raise MedsegError(f"{folder}: no trained model (trained: {', '.join(known) or 'none'})")
    return folder


def available_folds(folder: Path, checkpoint: str = "final") -> list[str]:
    """Fold names (``0``..``4``, ``all``) that have the requested checkpoint."""
    name = CHECKPOINT_FILES[checkpoint]
    return sorted(p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{name}"))


def load_fold(folder: Path, fold: str, checkpoint: str = "final") -> LoadedModel:
    """One fold's network in eval mode, with its plans, configuration and mirroring axes."""
    plans = Plans.load(folder / PLANS_FILE_NAME)
    path = folder / f"fold_{fold}" / CHECKPOINT_FILES[checkpoint]
    payload = load_checkpoint(path)
    config = plans.configuration(payload["configuration"])
    init_args = payload.get("init_args", {}) or {}
    options: dict = {}
    for method_options in (init_args.get("method_options") or {}).values():
        options.update(method_options)
    methods = get_trainer(payload["trainer_name"]).create_methods(options)
    network = next((n for n in (m.build_network(plans, config) for m in methods) if n is not None), None)
    if network is None:
        deep_supervision = bool((init_args.get("settings") or {}).get("deep_supervision", True))
        network_name = str(payload.get("network_name") or DEFAULT_NETWORK)
        network = build_registered_network(network_name, config, plans.num_input_channels, plans.num_classes,
                                           deep_supervision)
    try:
        network.load_state_dict(payload["network_weights"])
    except RuntimeError as error:
        raise MedsegError(f"{path}: weights do not fit the network the plans describe ({error})") from error
    mirror_axes = payload.get("inference_allowed_mirroring_axes")
    return LoadedModel(network.eval(), plans, config, list(mirror_axes) if mirror_axes else None, f"fold_{fold}")


def load_folds(folder: Path, folds: list[str] | None, checkpoint: str = "final") -> list[LoadedModel]:
    """The requested folds (default: every fold that has the checkpoint)."""
    chosen = folds or available_folds(folder, checkpoint)
    if not chosen:
        raise MedsegError(f"{folder}: no fold has {CHECKPOINT_FILES[checkpoint]}; train first or pick --checkpoint")
    return [load_fold(folder, str(fold), checkpoint) for fold in chosen]
