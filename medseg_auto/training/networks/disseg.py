"""``--network disseg``: the plans' DynUNet with Med-DisSeg's attention and multi-scale decoding.

Med-DisSeg (``../shared/papers/med_disseg_dispersive.txt`` Sec. 3.3) puts ELAT on the encoder,
three scale-specific CBAT decoders D_S, D_M, D_L whose outputs are summed (Eq. 9), and TeLU in
these units; the blocks are in :mod:`.disseg_blocks`. The paper's network is ConDSeg on a
ResNet-50 (CDFA fusion, foreground/background/uncertainty maps, three decoders on pairs of
encoder levels); this variant keeps the plans' U-Net, so it works for any configuration, 2D or
3D, and with any trainer (feature taps and deep supervision unchanged). The mapping:

- ELAT after every encoder stage: ``input_block``, each ``downsamples[i]`` and the
  ``bottleneck`` (the paper: "attached to encoder blocks"; which ones is not said).
- D_S, D_M, D_L are the last three decoder stages (full, half and quarter resolution; fewer in
  a network with fewer stages). Each is the DynUNet up block (Eq. 8's ``[Up(F_1); F_2]`` plus
  its two convolutions) followed by Eq. 8's three residual CBT steps and CBAT. Unlike the paper
  they are stacked, not parallel: ``F_1`` of D_M is D_L's output, not an encoder level, because
  the U-Net decoder is sequential. The deeper decoder stages stay plain DynUNet stages.
- Eq. 9's ``O = O_S + O_M + O_L``: each path gets a 1x1 head to class logits, and the logits of
  D_M and D_L are upsampled (bilinear / trilinear) to full resolution and added to D_S's. The
  paper does not say how outputs at different resolutions are summed.
- TeLU is used inside these units only (the paper: "in the encoder-side adaptive attention and
  the decoder-side calibration design"); the U-Net's own convolutions keep the leaky ReLU.
- Not reproduced: ConDSeg's CDFA, the fg/bg/uncertainty branch and the ResNet-50 backbone.

Feature taps (:mod:`~medseg_auto.training.network`) see the outputs *after* ELAT and after the
calibrated decoder stages. Parameter count and step time against the plain DynUNet:
``benchmarks/network_cost.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.training.network import DeepSupervisedDynUNet, build_dynunet
from medseg_auto.training.network_registry import register_network
from medseg_auto.training.networks.disseg_blocks import AttendedEncoderStage, CalibratedDecoderStage

SCALE_PATHS = 3  # D_S, D_M, D_L


class DisSegDynUNet(DeepSupervisedDynUNet):
    """DynUNet with ELAT on the encoder and Med-DisSeg's scale paths on the last decoder stages.

    ``forward`` as :class:`~medseg_auto.training.network.DeepSupervisedDynUNet`: ``(B, C, *patch)``
    in; in training with deep supervision the heads ``[(B, K, *patch), (B, K, *s_1), ...]``,
    otherwise the fused logits ``(B, K, *patch)``. DynUNet builds its blocks through the
    ``get_*`` methods overridden here, so its constructor, weight initialisation and tap table
    stay as they are.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        paths = self.scale_paths()
        self.scale_heads = nn.ModuleList(
            nn.Conv2d(self.filters[level], self.out_channels, 1) if self.spatial_dims == 2
            else nn.Conv3d(self.filters[level], self.out_channels, 1)
            for level in range(1, paths)
        )

    def scale_paths(self) -> int:
        """How many of D_S, D_M, D_L this network has (one per decoder stage, at most 3)."""
        return min(SCALE_PATHS, len(self.filters) - 1)

    # ----- blocks (called by DynUNet.__init__) -------------------------------------------------
    def get_input_block(self) -> nn.Module:
        return AttendedEncoderStage(super().get_input_block(), self.spatial_dims, self.filters[0])

    def get_downsamples(self) -> nn.ModuleList:
        blocks = super().get_downsamples()
        return nn.ModuleList(AttendedEncoderStage(block, self.spatial_dims, self.filters[i])
                             for i, block in enumerate(blocks, start=1))

    def get_bottleneck(self) -> nn.Module:
        return AttendedEncoderStage(super().get_bottleneck(), self.spatial_dims, self.filters[-1])

    def get_upsamples(self) -> nn.ModuleList:
        blocks = list(super().get_upsamples())  # deepest first; block j outputs filters[n-2-j]
        n = len(self.filters)
        first_calibrated = len(blocks) - self.scale_paths()
        return nn.ModuleList(
            CalibratedDecoderStage(block, self.spatial_dims, self.filters[n - 2 - j]) if j >= first_calibrated else block
            for j, block in enumerate(blocks)
        )

    # ----- forward -----------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder stage's output, deepest first (``[-1]`` is full resolution)."""
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        out = self.bottleneck(skips[-1])
        decoded = []
        for block, skip in zip(self.upsamples, reversed(skips)):
            out = block(out, skip)
            decoded.append(out)
        return decoded

    def fused_logits(self, decoded: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 9: D_S's logits plus D_M's and D_L's, upsampled to full resolution."""
        full = decoded[-1]
        logits = self.output_block(full)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        for level, head in enumerate(self.scale_heads, start=1):
            coarse = head(decoded[-1 - level])
            logits = logits + F.interpolate(coarse, size=full.shape[2:], mode=mode, align_corners=False)
        return logits

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        decoded = self.decode(x)
        logits = self.fused_logits(decoded)
        if not self.deep_supervision:
            return [logits]
        # DynUNet's order: head k supervises the decoder stage at resolution level k + 1
        return [logits, *(head(decoded[-2 - k]) for k, head in enumerate(self.deep_supervision_heads))]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        if self.training and self.deep_supervision:
            return self.forward_heads(x)
        return self.fused_logits(self.decode(x))


@register_network("disseg", "DynUNet + Med-DisSeg encoder attention (ELAT), calibrated multi-scale decoder (CBAT), TeLU")
def build_disseg(configuration: ConfigurationPlan, in_channels: int, num_classes: int,
                 deep_supervision: bool = True) -> DisSegDynUNet:
    """The plans' DynUNet (same checks and arguments as ``build_dynunet``) with the DisSeg blocks."""
    return build_dynunet(configuration, in_channels, num_classes, deep_supervision, network_class=DisSegDynUNet)
