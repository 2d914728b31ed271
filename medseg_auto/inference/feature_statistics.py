"""Early-layer feature statistics of one case, recorded by forward hooks during the sliding window.

For the out-of-distribution score (:mod:`.ood`, after ODEx, DART 2022 #11). ODEx takes the
features of a network's first BatchNorm layers. Our networks use instance normalization, whose
*output* has per-channel mean ``beta`` and standard deviation ``gamma`` in every window by
construction, so it carries no information; what an instance-norm layer removes, the
per-channel mean and standard deviation of its *input*, is the analogue of the batch
statistics ODEx models. For each tap (default ``encoder.0`` and ``encoder.1``, see
``training/network.py``) we therefore hook the block's first normalization layer (``norm1``,
whose input is the block's first convolution) and accumulate, over every sliding-window patch
of a case, per channel ``F``: the mean and the log standard deviation. A case's vector is
``[mean_0..mean_F-1, logstd_0..logstd_F-1]`` per tap, concatenated (``2 * sum F`` values).
A block without ``norm1`` (another network) is hooked on its output instead.

Only the identity view of the mirrored batch is used (the first ``1 / views`` of each batch,
see ``sliding_window.MirroredPredictor``), so the statistics are the same with and without
mirroring, and a reference computed without mirroring (cheap) fits predictions made with it.
The hooks read the activations; they do not change them, so predictions are unchanged.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from medseg_auto.inference.sliding_window import mirror_combinations
from medseg_auto.training.network import tap_modules

DEFAULT_TAPS = ("encoder.0", "encoder.1")


def has_taps(network: nn.Module, taps: Sequence[str] = DEFAULT_TAPS) -> bool:
    """True when ``network`` is a DynUNet-style network with every tap in ``taps``."""
    if not hasattr(network, "input_block") or not hasattr(network, "downsamples"):
        return False
    return all(name in tap_modules(network) for name in taps)  # type: ignore[arg-type]


def views_per_window(mirror_axes: Sequence[int] | None, use_mirroring: bool) -> int:
    """How many views (identity + flips) the mirrored predictor stacks into one batch."""
    return 1 + (len(mirror_combinations(mirror_axes)) if use_mirroring and mirror_axes else 0)


def tap_signature(network: nn.Module, taps: Sequence[str] = DEFAULT_TAPS) -> str:
    """sha256 of the weights the statistics depend on (the tapped blocks and all before them:
    the tapped blocks are the first ones), to tell a stale reference from a retrained fold."""
    digest = hashlib.sha256()
    modules = tap_modules(network)  # type: ignore[arg-type]
    for name in taps:
        for key, tensor in sorted(modules[name].state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureStatistics:
    """Per-channel running sums of the tapped activations of ``network``; use as a context manager.

    ``views`` is the number of views per batch (:func:`views_per_window`); only the first
    ``batch / views`` samples of each forward pass count.
    """

    def __init__(self, network: nn.Module, taps: Sequence[str] = DEFAULT_TAPS, views: int = 1) -> None:
        modules = tap_modules(network)  # type: ignore[arg-type]
        unknown = [name for name in taps if name not in modules]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {', '.join(modules)}")
        self.taps = list(taps)
        self.views = max(1, int(views))
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._handles = []
        for name in self.taps:
            norm = getattr(modules[name], "norm1", None)
            if isinstance(norm, nn.Module):
                self._handles.append(norm.register_forward_hook(self._recorder(name, use_input=True)))
            else:
                self._handles.append(modules[name].register_forward_hook(self._recorder(name, use_input=False)))

    def _recorder(self, name: str, use_input: bool):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            tensor = inputs[0] if use_input else output
            identity = tensor[: max(1, tensor.shape[0] // self.views)].detach().float()
            channels = identity.transpose(0, 1).reshape(identity.shape[1], -1)
            update = [channels.sum(dim=1).double(), (channels * channels).sum(dim=1).double(),
                      torch.tensor(float(channels.shape[1]), dtype=torch.float64, device=channels.device)]
            previous = self._sums.get(name)
            self._sums[name] = update if previous is None else [a + b for a, b in zip(previous, update)]

        return record

    def vector(self) -> np.ndarray:
        """``[mean (F), log std (F)]`` per tap, concatenated; float64. Raises if nothing was recorded."""
        parts = []
        for name in self.taps:
            if name not in self._sums:
                raise RuntimeError(f"feature tap '{name}' recorded nothing: was the network run inside the context?")
            total, squares, count = (value.cpu().numpy() for value in self._sums[name])
            mean = total / count
            variance = np.maximum(squares / count - mean * mean, 0.0)
            parts += [mean, 0.5 * np.log(variance + 1e-12)]
        return np.concatenate(parts)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureStatistics":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


class CaseFeatureRecorder:
    """Collects one statistics vector per model of an ensemble for the case being predicted.

    ``with recorder.watch(index, network, views): ...`` records model ``index``; :meth:`take`
    returns ``{index: vector}`` and starts the next case.
    """

    def __init__(self, taps: Sequence[str] = DEFAULT_TAPS) -> None:
        self.taps = list(taps)
        self._vectors: dict[int, np.ndarray] = {}

    @contextmanager
    def watch(self, index: int, network: nn.Module, views: int) -> Iterator[None]:
        if not has_taps(network, self.taps):
            yield
            return
        with FeatureStatistics(network, self.taps, views) as statistics:
            yield
            self._vectors[index] = statistics.vector()

    def take(self) -> dict[int, np.ndarray]:
        vectors, self._vectors = self._vectors, {}
        return vectors
