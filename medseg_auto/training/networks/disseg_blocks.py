"""Building blocks of the ``disseg`` network (Med-DisSeg, ``../shared/papers/med_disseg_dispersive.txt``
Sec. 3.3 and App. A.1): TeLU, the encoder-side attention (ELAT), the Conv-Norm-TeLU block (CBT),
Eq. 8's residual refinement and the decoder-side calibration unit (CBAT).

Shapes: every block maps ``(B, C, *spatial)`` to the same shape; ``spatial_dims`` (2 or 3)
picks the convolution type, so 2D and 3D share one code path (MONAI's layer factories). The
paper gives no equations for ELAT and CBAT (NOTES_disseg_sgcg.md A.6 items 1-2); what we
filled in is said at each class. These attention units are written here because MONAI has no
parallel channel + multi-scale spatial unit (its ``ChannelSELayer`` is the channel half only).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import nn

#: ``exp`` is evaluated at ``min(t, 8)``: ``tanh(exp(8)) = tanh(2981)`` is 1 in every float
#: format, so the value is unchanged, while ``exp`` of a large ``t`` would overflow float16
#: (above t = 11.1) and turn the gradient's ``t * e^t * sech^2(e^t)`` term into ``inf * 0 = NaN``.
TELU_EXP_CLAMP = 8.0
ATTENTION_REDUCTION = 8
ATTENTION_MIN_HIDDEN = 4
SPATIAL_KERNELS = (3, 5, 7)  # ELAT's multi-scale spatial branch (CBAM's single kernel is 7)
CBAT_SPATIAL_KERNEL = 7
REFINEMENT_STEPS = 3  # Eq. 8: t = 0, 1, 2


def telu(x: torch.Tensor) -> torch.Tensor:
    """TeLU ``t * tanh(exp(t))`` (App. A.1, Eq. 10), with the ``exp`` argument clamped."""
    return x * torch.tanh(torch.exp(x.clamp(max=TELU_EXP_CLAMP)))


class TeLU(nn.Module):
    """:func:`telu` as a module (shape-preserving)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return telu(x)


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class CBT(nn.Sequential):
    """Conv - InstanceNorm - TeLU. The paper never expands "CBT"; by analogy with ConDSeg's CBR
    (Conv-BN-ReLU) it is Conv-BN-TeLU. Instance norm replaces batch norm, as everywhere in
    nnU-Net's networks (batches of 2 make batch statistics useless)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            _conv(spatial_dims, in_channels, out_channels, kernel_size, bias=False),
            Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=True),
            TeLU(),
        )


class ChannelGate(nn.Module):
    """Channel weights in (0, 1), ``(B, C, *s) -> (B, C, 1, ...)``: average- and max-pooled
    descriptors through one shared two-layer MLP (CBAM's channel attention) with TeLU, summed,
    sigmoid. Hidden width ``max(4, C // 8)``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        hidden = max(ATTENTION_MIN_HIDDEN, channels // ATTENTION_REDUCTION)
        self.mlp = nn.Sequential(_conv(spatial_dims, channels, hidden, 1), TeLU(), _conv(spatial_dims, hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        average = x.mean(dim=dims, keepdim=True)
        maximum = x.amax(dim=dims, keepdim=True)
        return torch.sigmoid(self.mlp(average) + self.mlp(maximum))


class SpatialGate(nn.Module):
    """Spatial weights in (0, 1), ``(B, C, *s) -> (B, 1, *s)``: the channel mean and max maps
    (CBAM) through one convolution per kernel size in parallel; several kernel sizes (the
    "multi-scale spatial branch") are joined by TeLU and a 1x1 convolution."""

    def __init__(self, spatial_dims: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_conv(spatial_dims, 2, 1, k) for k in kernel_sizes)
        self.fuse = nn.Sequential(TeLU(), _conv(spatial_dims, len(kernel_sizes), 1, 1)) if len(kernel_sizes) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        responses = torch.cat([branch(pooled) for branch in self.branches], dim=1)
        return torch.sigmoid(self.fuse(responses) if self.fuse is not None else responses)


class ELAT(nn.Module):
    """Encoder-side attention (Sec. 3.3.1): a channel branch and a multi-scale spatial branch *in
    parallel*, ``y = x * a_channel + x * a_spatial`` (the concurrent form of scSE, Roy et al.
    2018: each branch reweights the input on its own, and the two are summed). Fig. 2(a), which
    holds the real design, is not available: the branch internals (:class:`ChannelGate`,
    :class:`SpatialGate` with kernels 3, 5, 7) and the sum are our choices. At initialisation both
    weights are near 0.5, so the unit starts close to the identity."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.channel = ChannelGate(spatial_dims, channels)
        self.spatial = SpatialGate(spatial_dims, SPATIAL_KERNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel(x) + x * self.spatial(x)


class CBAT(nn.Module):
    """Decoder-side calibration unit (Sec. 3.3.2, "adaptive balancing of channel and spatial
    responses"; its structure is only in the unavailable Fig. 2(d)). Ours: channel and spatial
    weights as in :class:`ELAT` (one 7x7 spatial kernel) mixed by two learnable balance weights,
    ``y = x * (w_c a_channel + w_s a_spatial)``, ``(w_c, w_s) = 2 softmax(theta)``, ``theta = 0``
    at start (equal balance, near-identity unit); each decoder path learns its own balance."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.channel = ChannelGate(spatial_dims, channels)
        self.spatial = SpatialGate(spatial_dims, (CBAT_SPATIAL_KERNEL,))
        self.balance_logits = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = 2 * torch.softmax(self.balance_logits, dim=0)
        return x * (weights[0] * self.channel(x) + weights[1] * self.spatial(x))


class Refinement(nn.Module):
    """Eq. 8's residual refinement, ``F <- F + CBT_3x3(CBT_1x1(F))`` three times. The paper does
    not give widths; the 1x1 CBT halves the channels (a bottleneck) and the 3x3 CBT restores them,
    so the residual sum type-checks and the cost stays about half that of full width."""

    def __init__(self, spatial_dims: int, channels: int, steps: int = REFINEMENT_STEPS) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.steps = nn.ModuleList(
            nn.Sequential(CBT(spatial_dims, channels, hidden, 1), CBT(spatial_dims, hidden, channels, 3))
            for _ in range(steps)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = x + step(x)
        return x


class AttendedEncoderStage(nn.Module):
    """A DynUNet encoder block followed by :class:`ELAT` (the paper attaches ELAT "to encoder blocks")."""

    def __init__(self, block: nn.Module, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.block = block
        self.attention = ELAT(spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.block(x))


class CalibratedDecoderStage(nn.Module):
    """One of Med-DisSeg's scale-specific decoders (Eq. 8) on a DynUNet up block: the up block
    upsamples ``F_1``, concatenates the skip ``F_2`` and reduces the channels (two 3x3 convs),
    then :class:`Refinement` and :class:`CBAT`. ``forward(inp, skip)`` like ``UnetUpBlock``."""

    def __init__(self, up_block: nn.Module, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.up_block = up_block
        self.refinement = Refinement(spatial_dims, channels)
        self.calibration = CBAT(spatial_dims, channels)

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.calibration(self.refinement(self.up_block(inp, skip)))
