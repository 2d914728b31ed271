"""Predict with a model trained by nnU-Net v2: its results folder
(``nnUNet_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``), read, never written to.

The folder's ``plans.json`` and ``dataset.json`` become our :class:`Plans` (see
:mod:`medseg_auto.planning.nnunet_plans`), so preprocessing, sliding window, mirroring and
export are ours, and so are FDA, reports and site tables. The network is nnU-Net's own
``PlainConvUNet`` (or ``ResidualEncoderUNet``) from ``dynamic_network_architectures`` (the
``nnunet`` extra), built from the plans' ``arch_kwargs`` and loaded with the checkpoint's
weights.

Safety: the plans name classes to import (``conv_op``, ``norm_op``, ...); only the
:data:`ALLOWED_CLASSES` are accepted, never an arbitrary import. ``checkpoint_*.pth`` holds
more than weights (optimizer state, logging curves with numpy scalars, the trainer's init
arguments); it is read with ``torch.load(weights_only=True)``, which allows plain containers,
tensors and the few numpy types of :data:`NUMPY_SCALAR_GLOBALS` (data, no code), and never
unpickles other objects.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.planning.nnunet_plans import architecture_of, plans_from_nnunet, resolved_configuration
from medseg_auto.utils.atomic import read_json

CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}
NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
ALLOWED_CLASSES = {
    "conv_op": {"torch.nn.modules.conv.Conv2d", "torch.nn.modules.conv.Conv3d", "torch.nn.Conv2d", "torch.nn.Conv3d"},
    "norm_op": {f"torch.nn.modules.{module}.{name}{dims}d" for module, name in (("instancenorm", "InstanceNorm"),
                                                                                ("batchnorm", "BatchNorm"))
                for dims in (2, 3)} | {f"torch.nn.{name}{dims}d" for name in ("InstanceNorm", "BatchNorm") for dims in (2, 3)},
    "dropout_op": {f"torch.nn.modules.dropout.Dropout{s}" for s in ("", "2d", "3d")} | {"torch.nn.Dropout2d", "torch.nn.Dropout3d"},
    "nonlin": {"torch.nn.LeakyReLU", "torch.nn.ReLU", "torch.nn.modules.activation.LeakyReLU",
               "torch.nn.modules.activation.ReLU"},
}


def is_nnunet_model_folder(folder: Path) -> bool:
    """True for an nnU-Net v2 results folder: plans.json, dataset.json, fold_*/checkpoint_*.pth."""
    return ((folder / "plans.json").is_file() and (folder / "dataset.json").is_file()
            and any(folder.glob("fold_*/checkpoint_*.pth")))


def configuration_name(folder: Path) -> str:
    """``TRAINER__PLANS__CONFIG`` -> ``CONFIG``."""
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise MedsegError(f"{folder}: not an nnU-Net results folder name (TRAINER__PLANS__CONFIGURATION)")
    return parts[2]


def available_folds(folder: Path, checkpoint: str = "final") -> list[str]:
    return sorted(p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{CHECKPOINT_FILES[checkpoint]}"))


def load_nnunet_folds(folder: str | Path, folds: Sequence[str] | None = None,
                      checkpoint: str = "final") -> list[LoadedModel]:
    """The folds of an nnU-Net model folder as :class:`LoadedModel` s (networks in eval mode)."""
    folder = Path(folder)
    if checkpoint not in CHECKPOINT_FILES:
        raise MedsegError(f"checkpoint '{checkpoint}': choose one of {', '.join(CHECKPOINT_FILES)}")
    nnunet_plans, dataset_json = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    name = configuration_name(folder)
    plans = plans_from_nnunet(nnunet_plans, dataset_json)
    config = plans.configuration(name)
    chosen = [str(f) for f in folds] if folds else available_folds(folder, checkpoint)
    if not chosen:
        raise MedsegError(f"{folder}: no fold has {CHECKPOINT_FILES[checkpoint]}")
    models = []
    for fold in chosen:
        path = folder / f"fold_{fold}" / CHECKPOINT_FILES[checkpoint]
        payload = load_nnunet_checkpoint(path)
        network = build_nnunet_network(resolved_configuration(nnunet_plans, name), plans.num_input_channels,
                                       plans.num_classes)
        weights = {_strip_prefixes(key): value for key, value in payload["network_weights"].items()}
        try:
            network.load_state_dict(weights)
        except RuntimeError as error:
            raise MedsegError(f"{path}: weights do not fit the network of {folder / 'plans.json'} ({error})") from error
        axes = payload.get("inference_allowed_mirroring_axes")
        models.append(LoadedModel(network.eval(), plans, config, [int(a) for a in axes] if axes else None,
                                  f"fold_{fold}"))
    return models


def build_nnunet_network(config: dict[str, Any], num_input_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's network for a resolved configuration, without deep supervision (inference)."""
    class_name, kwargs = architecture_of(config)
    if class_name not in NETWORK_CLASSES:
        raise MedsegError(f"nnU-Net network class {class_name} is not supported (supported: {sorted(NETWORK_CLASSES)})")
    try:
        module_name, _, short = class_name.rpartition(".")
        network_class = getattr(importlib.import_module(module_name), short)
    except ImportError as error:
        raise MedsegError("nnU-Net models need dynamic_network_architectures: pip install 'medseg_auto[nnunet]' "
                          f"({error})") from error
    for key, allowed in ALLOWED_CLASSES.items():
        value = kwargs.get(key)
        if value is None:
            continue
        if value not in allowed:
            raise MedsegError(f"nnU-Net plans: {key} = {value!r} is not an allowed class ({sorted(allowed)})")
        module_name, _, short = value.rpartition(".")
        kwargs[key] = getattr(importlib.import_module(module_name), short)
    kwargs["deep_supervision"] = False
    return network_class(input_channels=num_input_channels, num_classes=num_classes, **kwargs)


def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint, read with ``weights_only=True`` and numpy scalars allowed."""
    if not path.is_file():
        raise MedsegError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise MedsegError(f"{path}: cannot be read as plain data with weights_only=True ({_first_line(error)})") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), dict):
        raise MedsegError(f"{path}: no 'network_weights' in this checkpoint (is it an nnU-Net v2 checkpoint?)")
    return payload


def _numpy_scalar_globals() -> list[Any]:
    """numpy's scalar and dtype constructors: what nnU-Net's logged curves (np.float64 values)
    need to unpickle. They rebuild numbers from bytes and run no other code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtype_classes]


def _strip_prefixes(key: str) -> str:
    """Weights saved from DDP (``module.``) or torch.compile (``_orig_mod.``) wrappers."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
