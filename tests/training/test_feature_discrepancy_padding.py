"""Issue 13: FeatureDiscrepancy's background masks counted the padding of padded patches (seg -1,
turned into label 0 by the augmentation) as background. The loader now passes a ``padding`` mask
and the masks leave it out."""

from __future__ import annotations

import numpy as np
import torch

from medseg_auto.planning.plans import Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.augmentation import build_validation_transforms
from medseg_auto.training.data.loader import make_training_loader
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.losses.feature_discrepancy import MaskPyramid
from medseg_auto.training.trainers.feature_discrepancy import FeatureDiscrepancy


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Target ``(2, 1, 8, 8)`` with a 3x3 lesion; the last two columns are padding."""
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, 0, 2:5, 2:5] = 1
    padding = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    padding[..., 6:] = True
    return target, padding


def test_background_mask_leaves_out_padding_at_every_resolution():
    target, padding = _padded_batch()
    pyramid = MaskPyramid(target, 2, padding)
    full = pyramid.at((8, 8))
    assert not bool(full[:, 0][padding[:, 0]].any())  # no padded voxel is background
    assert int(full[0, 0].sum()) == 64 - 9 - 16
    coarse = pyramid.at((4, 4))  # a cell touching padding is not background either
    assert not bool(coarse[:, 0, :, 3].any()) and bool(coarse[:, 0, 0, 0].all())


def test_feature_discrepancy_ignores_features_in_the_padding():
    """Features of padded positions must not change the loss (normalisation ``none``: the batch
    variance would see them)."""
    method = FeatureDiscrepancy({"fd_warmup_fraction": 0.0, "fd_normalization": "none"})
    method.setup(TrainingContext(plans=None, configuration=None, network=torch.nn.Identity(),
                                 device=torch.device("cpu"), num_classes=2, tap_channels={"encoder.0": 3},
                                 settings=TrainingSettings(num_epochs=1)))
    method.on_epoch_start(0, {})
    target, padding = _padded_batch()
    torch.manual_seed(0)
    features = torch.randn(2, 3, 8, 8)
    changed = features.clone()
    changed[..., 6:] = 50.0
    batch = {"case_ids": ["x", "y"], "sites": [None, None], "padding": padding}
    loss, _ = method.extra_loss({"encoder.0": features}, [], target, batch)
    loss_changed, _ = method.extra_loss({"encoder.0": changed}, [], target, batch)
    torch.testing.assert_close(loss, loss_changed)


def test_loader_batches_carry_the_padding_mask(toy_home):
    dataset = next(toy_home.preprocessed.iterdir())
    configuration = Plans.load(dataset / "plans.json").configuration("2d")
    cache = PreprocessedCache(dataset / configuration.data_identifier)
    batch = next(make_training_loader(cache, cache.case_ids(), configuration, num_workers=0, mirror_axes=None))
    assert batch["padding"].dtype == torch.bool and batch["padding"].shape == batch["target"].shape
    assert not bool(batch["target"][batch["padding"]].any())  # padded voxels are label 0 in the target
    seg = np.zeros((1, 1, 4, 4), dtype=np.int16)
    seg[..., 0] = -1
    out = build_validation_transforms()(data=np.zeros((1, 1, 4, 4), np.float32), seg=seg)
    assert out["padding"][..., 0].all() and not out["padding"][..., 1:].any()
