"""``--network catenorm``: DynUNet whose first encoder stages use categorical normalization.

Paper: Xiao et al., "CateNorm: Categorical Normalization for Robust Medical Image
Segmentation", DART 2022 (LNCS 13542), pp. 129-146 (reading notes ``NOTES_dart2022.md`` 2.5).
A CateNorm layer normalises with the usual statistics and then applies one of two affine
transforms: the *BN branch*, a per-channel ``gamma_c, beta_c`` (eq. 1), or the *CateNorm
branch*, a per-pixel ``gamma(m), beta(m)`` predicted from a class mask ``m`` by a two-layer
convolutional net whose first layer has ``C/2`` channels (SPADE-style, eq. 2)::

    CN(x) = (x - mu) / sigma * (1 + gamma(m)) + beta(m)

The mask is the network's own prediction: a forward pass runs the whole network through the
BN branch (``y_B``, eq. 3), then again through the CateNorm branch with ``m = softmax(y_B)``
detached (``y_C``, eq. 4). Inference returns ``y_C`` (two passes); so do the validation loss
and ``predict``, because ``forward`` does both passes in every mode.

Training. The paper alternates two optimizer steps per iteration (alpha = 1: update shared +
BN parameters on ``L(y_B)``; alpha = 0: update shared + CateNorm parameters on ``L(y_C)``).
Here one training forward returns the heads of ``y_C`` and hands those of ``y_B`` to the
trainer through :meth:`CateNormDynUNet.pop_auxiliary_heads`; the trainer adds their
segmentation loss (weight 1), so one step minimises ``L(y_B) + L(y_C)``: the BN affine gets
gradient from ``L(y_B)`` only, the CateNorm nets from ``L(y_C)`` only (the mask is detached),
the shared weights from both. That is the paper's two steps taken jointly at the same point, so
it works with every trainer (no second optimizer step in the loop). The paper warms up from a
BN-only model: ``--pretrained`` with a plain DynUNet checkpoint loads everything but the
CateNorm nets, because the BN affine keeps the instance norm's parameter names
(``norm1.weight``, ``norm1.bias``).

Choices the paper leaves open, and gaps:

- Statistics: the paper's layers are BatchNorm; ours keep nnU-Net's instance norm (per sample
  and channel), shared by both branches as in eq. 2. Small batches of patches make batch
  statistics noisy, and the plans' network is built around instance norm.
- Mask: soft probabilities over all classes (the authors' code's default ``soft`` mode, eq. 4
  calls it a probability map), resized to each stage by (bi/tri)linear interpolation.
- Kernel size 3 and ReLU in the CateNorm net (the authors' code); default PyTorch
  initialisation ("randomly initialise theta_NC").
- Placement: every norm of the first stages. ``catenorm`` replaces the first 4 encoder stages
  (the paper's "block 1-4", its best multi-domain variant), ``catenorm1`` only the first
  ("block 1"); never the bottleneck. The plain-DynUNet stages are otherwise unchanged (no
  residual blocks, unlike the paper's residual encoder).
- Cost: two passes per forward (about twice the activation memory in training) plus the
  CateNorm nets, which run at the resolution of their stage. Measured with
  ``benchmarks/network_cost.py`` (Base trainer step and eval forward, bf16, one thread of this
  project's busy 2-core CPU, interleaved), against DynUNet: BreastUS ``plans_cpu_coarse`` 2d
  (128x160, batch 10, 6 stages): parameters +7.7% (``catenorm``; the paper: 1.073x) and +0.09%
  (``catenorm1``; the paper: 1.001x), training step 2.4x / 2.2x, eval forward 2.3x / 2.0x. A 3D
  64^3 patch (batch 2, 5 stages): parameters +28.7% / +0.35% (3x3x3 kernels), training step
  3.0x / 3.0x, eval forward 2.7x / 2.5x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.training.network import DeepSupervisedDynUNet, build_dynunet
from medseg_auto.training.network_registry import register_network

DEFAULT_STAGES = 4  # the paper's best multi-domain variant, "block 1-4"
HIDDEN_REDUCTION = 2  # first layer of the modulation net: C/2 channels
KERNEL_SIZE = 3
EPS = 1e-5  # instance norm's


class CategoricalNorm(nn.Module):
    """Instance-norm statistics with a per-channel (BN branch) or a mask-driven per-pixel affine.

    ``forward(x)``: ``x`` ``(B, C, *spatial)``. Without a mask (``self.mask is None``) returns
    ``weight_c * x_hat + bias_c``; with ``self.mask`` ``(B, K, *any)`` (class probabilities,
    resized here to ``x``'s size) returns ``x_hat * (1 + gamma(m)) + beta(m)``. The mask is set
    by :class:`CateNormDynUNet` around a pass, because DynUNet's blocks call their norm with one
    argument.
    """

    def __init__(self, spatial_dims: int, channels: int, num_classes: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        hidden = max(1, channels // HIDDEN_REDUCTION)
        self.spatial_dims = spatial_dims
        self.weight = nn.Parameter(torch.ones(channels))  # BN branch (theta_NB), InstanceNorm's names
        self.bias = nn.Parameter(torch.zeros(channels))
        self.shared = nn.Sequential(conv(num_classes, hidden, KERNEL_SIZE, padding=KERNEL_SIZE // 2), nn.ReLU())
        self.gamma = conv(hidden, channels, KERNEL_SIZE, padding=KERNEL_SIZE // 2)
        self.beta = conv(hidden, channels, KERNEL_SIZE, padding=KERNEL_SIZE // 2)
        self.mask: torch.Tensor | None = None

    def categorical_parameters(self) -> list[nn.Parameter]:
        """theta_NC: the parameters only the CateNorm branch uses."""
        return [*self.shared.parameters(), *self.gamma.parameters(), *self.beta.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=EPS)
        if self.mask is None:
            shape = (1, -1) + (1,) * self.spatial_dims
            return normalized * self.weight.view(shape) + self.bias.view(shape)
        mask = self.mask.to(normalized.dtype)
        if tuple(mask.shape[2:]) != tuple(x.shape[2:]):
            mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
            mask = F.interpolate(mask, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        hidden = self.shared(mask)
        return normalized * (1 + self.gamma(hidden)) + self.beta(hidden)


class CateNormDynUNet(DeepSupervisedDynUNet):
    """DeepSupervisedDynUNet with :class:`CategoricalNorm` in its first ``categorical_stages``
    encoder stages and a two-pass forward (BN branch -> mask -> CateNorm branch).

    Same inputs and outputs as :class:`DeepSupervisedDynUNet` (heads in training, logits in
    eval), the same feature taps (their last recorded output is the CateNorm pass's) and the same
    state-dict names plus ``normX.shared/gamma/beta``. ``categorical_stages`` must be set before
    :meth:`use_categorical_norm` (the builder does it).
    """

    def use_categorical_norm(self, stages: int) -> None:
        """Replace ``norm1``/``norm2`` of encoder stages ``0 .. stages-1`` (never the bottleneck)."""
        blocks = [self.input_block, *self.downsamples][: max(1, min(stages, len(self.filters) - 1))]
        # a plain list, not a ModuleList: the norms are registered in their blocks already, and a
        # second registration would put every tensor in the state dict twice
        self.categorical_norms: list[CategoricalNorm] = []
        for block, channels in zip(blocks, self.filters):
            for name in ("norm1", "norm2"):
                norm = CategoricalNorm(self.spatial_dims, int(channels), int(self.out_channels))
                setattr(block, name, norm)
                self.categorical_norms.append(norm)
        self._auxiliary: list[list[torch.Tensor]] = []

    def _pass(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """One pass through the BN (``mask=None``) or the CateNorm branch: the heads, full resolution first."""
        for norm in self.categorical_norms:
            norm.mask = mask
        try:
            out = self.output_block(self.skip_layers(x))
            return [out, *self.heads] if self.deep_supervision else [out]
        finally:
            for norm in self.categorical_norms:
                norm.mask = None

    def forward_both(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(heads of y_B, heads of y_C)``; the mask is ``softmax(y_B)`` (full resolution), detached."""
        bn_heads = self._pass(x, None)
        mask = torch.softmax(bn_heads[0].detach().float(), dim=1)
        return bn_heads, self._pass(x, mask)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        bn_heads, cn_heads = self.forward_both(x)
        if self.training:
            self._auxiliary = [bn_heads]
        return cn_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        if self.training:
            heads = self.forward_heads(x)
            return heads if self.deep_supervision else heads[0]
        with torch.no_grad():  # the mask is detached anyway: the first pass needs no graph
            bn_logits = self._pass(x, None)[0]
        return self._pass(x, torch.softmax(bn_logits.float(), dim=1))[0]

    def pop_auxiliary_heads(self) -> list[list[torch.Tensor]]:
        """The BN-branch heads of the last training forward (the trainer supervises them too), then forgets them."""
        auxiliary, self._auxiliary = self._auxiliary, []
        return auxiliary


def build_catenorm(configuration: ConfigurationPlan, in_channels: int, num_classes: int,
                   deep_supervision: bool = True, stages: int = DEFAULT_STAGES) -> CateNormDynUNet:
    """The plans' DynUNet with CateNorm in its first ``stages`` encoder stages."""
    network = build_dynunet(configuration, in_channels, num_classes, deep_supervision, network_class=CateNormDynUNet)
    assert isinstance(network, CateNormDynUNet)
    network.use_categorical_norm(stages)
    return network


@register_network("catenorm", "CateNorm (DART 2022): categorical normalization in the first 4 encoder stages, two-pass forward")
def build_catenorm_blocks_1_4(configuration: ConfigurationPlan, in_channels: int, num_classes: int,
                              deep_supervision: bool = True) -> CateNormDynUNet:
    return build_catenorm(configuration, in_channels, num_classes, deep_supervision, DEFAULT_STAGES)


@register_network("catenorm1", "CateNorm (DART 2022): categorical normalization in the first encoder stage only")
def build_catenorm_block_1(configuration: ConfigurationPlan, in_channels: int, num_classes: int,
                           deep_supervision: bool = True) -> CateNormDynUNet:
    return build_catenorm(configuration, in_channels, num_classes, deep_supervision, 1)

