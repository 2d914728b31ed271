"""Per-sample feature summaries that keep between-sample (site, style) information.

Why (issue 13): every DynUNet stage ends in instance norm, so the global average of a stage's
*output* is nearly the same for every sample (the norm's bias, through the leaky ReLU): a site
classifier or a clustering of those vectors has almost nothing to work with. Measured on
synthetic two-site data (site b: smoothed-noise texture, lower lesion contrast; 240 32x32
patches, randomly initialised 4-stage network, 5-fold logistic regression; chance 0.5):

=============  ===================  ======================  ==============================
stage          GAP after the norm   mean, std before norm   covariance after norm (all F)
=============  ===================  ======================  ==============================
encoder.1      0.93                 1.00                    1.00
encoder.2      0.60                 0.85                    0.97
bottleneck     0.53                 0.52                    0.68
=============  ===================  ======================  ==============================

With depth-dependent shading added to site b (a vertical intensity ramp, as ultrasound
attenuation) the bottleneck row becomes 0.57 / 0.73 / 0.72. Training the site heads of
:mod:`~medseg_auto.training.trainers.site_adversarial` (hidden 64, the trainer's SGD, 300 steps of
8) on those frozen bottleneck features, two initialisations: the global-average head reached
0.45 / 0.55 accuracy on its own training patches, the covariance head 0.80 / 0.92; on held-out
patches both stayed near chance (0.44-0.56) on this small random-init network, so the claim is
only that the covariance head *can* see site differences the average hides.

Two summaries are offered:

- :func:`scale_free_mean_std` of :func:`prenorm_recorder`'s features: the per-channel mean
  (over the standard deviation) and log standard deviation of a block's features *before* its
  last instance norm (what the norm removes; MixStyle's and DSU's "style"
  statistics), ``(B, 2F)``; no parameters, so usable as a fixed embedding (clustering).
- :class:`CovariancePooling`: second-order pooling of a block's *output*: a learnt 1x1
  projection to ``r`` channels, then the ``r x r`` channel covariance over space (its upper
  triangle, ``r (r + 1) / 2`` values). Instance norm fixes each channel's variance but not the
  covariances between channels (texture, Gatys et al.'s style), and the projection keeps the size
  independent of the stage width (a 512-channel bottleneck would give 131,328 values).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

STD_EPS = 1e-5


def channel_mean_std(features: torch.Tensor) -> torch.Tensor:
    """``(B, F, *s) -> (B, 2F)`` float32: per-channel spatial mean, then standard deviation."""
    flat = features.float().flatten(2)
    variance, mean = torch.var_mean(flat, dim=2, unbiased=False)
    return torch.cat([mean, (variance + STD_EPS).sqrt()], dim=1)


def scale_free_mean_std(features: torch.Tensor) -> torch.Tensor:
    """``(B, F, *s) -> (B, 2F)`` float32: per channel ``mean / std`` and ``log std``.

    For features *before* an instance norm: the norm undoes any per-channel scaling of them, so
    the network could shrink a distance between raw means and stds for free (as it inflated
    features to lower a scale-dependent dispersive loss). Scaling channel ``k`` by ``c`` leaves
    ``mean / std`` unchanged and adds ``log c`` to every sample's ``log std``, so differences
    between samples, which is what an alignment loss measures, do not change.
    """
    statistics = channel_mean_std(features)
    mean, std = statistics.chunk(2, dim=1)
    return torch.cat([mean / std, std.log()], dim=1)


def last_norm(block: nn.Module) -> nn.Module | None:
    """The module whose input is the block's features before its final norm: the last submodule
    named ``norm2`` (MONAI's ``UnetBasicBlock``/``UnetResBlock``, also inside wrappers such as
    the DisSeg stages), or None when the block has none."""
    found = None
    for name, module in block.named_modules():
        if name.split(".")[-1] == "norm2":
            found = module
    return found


@contextlib.contextmanager
def prenorm_recorder(block: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While open, ``record["features"]`` is the input of ``block``'s last norm in the latest
    forward pass, or (for a block without one) the block's output."""
    record: dict[str, torch.Tensor] = {}
    norm = last_norm(block)
    if norm is not None:
        handle = norm.register_forward_pre_hook(lambda module, inputs: record.__setitem__("features", inputs[0]))
    else:
        handle = block.register_forward_hook(lambda module, inputs, output: record.__setitem__("features", output))
    try:
        yield record
    finally:
        handle.remove()




class CovariancePooling(nn.Module):
    """``(B, F, *s) -> (B, r (r + 1) / 2)``: 1x1 projection to ``r`` channels, channel covariance
    over the spatial positions, upper triangle (diagonal included). Float32."""

    def __init__(self, channels: int, reduced: int = 32) -> None:
        super().__init__()
        self.reduced = min(int(reduced), int(channels))
        self.projection = nn.Linear(channels, self.reduced, bias=False)
        rows, cols = torch.triu_indices(self.reduced, self.reduced)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def out_features(self) -> int:
        return self.reduced * (self.reduced + 1) // 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.float().flatten(2).transpose(1, 2)  # (B, N, F)
        projected = flat @ self.projection.weight.float().T  # (B, N, r)
        centred = projected - projected.mean(dim=1, keepdim=True)
        covariance = centred.transpose(1, 2) @ centred / max(1, centred.shape[1])  # (B, r, r)
        return covariance[:, self.rows, self.cols]
