"""``FeatureDiscrepancy`` (Roy et al., eq. 1): the loss on hand-made tensors, the masks at a
layer's resolution, samples without foreground, gradients, the warm-up schedule, and training
end to end on the two-site toy data."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medseg_auto.training.losses.feature_discrepancy import (
    EPS, VARIANCE_EPS, MaskedChannelSums, MaskPyramid, discrepancy_loss, layer_statistics,
)
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.feature_discrepancy import FeatureDiscrepancy, scheduled_weight

from tests.helpers.toy_home import make_toy_home

TWO_SITES = ["a", "a", "a", "b", "b", "b"]


def two_by_two(rows_0, rows_1) -> torch.Tensor:
    """A ``(1, 2, 2, 2)`` feature map from the rows of its two channels."""
    return torch.tensor([[rows_0, rows_1]], dtype=torch.float32)


def test_binary_loss_equals_the_hand_computed_value():
    features = two_by_two([[1.0, 1.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[[[1, 1], [0, 0]]]])  # top row foreground
    masks = MaskPyramid(target, num_classes=2).at((2, 2))
    # F_g = (1, 2), B_g = (0, 0): squared differences 1 and 4, averaged over the 2 channels
    loss, pairs = discrepancy_loss(layer_statistics(features, masks, "none"))
    assert int(pairs) == 1
    assert float(loss) == pytest.approx(-math.log((1 + 4) / 2 + EPS))
    # divided by each channel's variance over the batch (0.25 and 1.0)
    loss, _ = discrepancy_loss(layer_statistics(features, masks, "variance"))
    expected = -math.log((1 / (0.25 + VARIANCE_EPS) + 4 / (1.0 + VARIANCE_EPS)) / 2 + EPS)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_variance_normalisation_makes_the_loss_scale_free():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 8, 8)
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:5, 3:6] = 1
    masks = MaskPyramid(target, 2).at((8, 8))
    base, _ = discrepancy_loss(layer_statistics(features, masks))
    scaled, _ = discrepancy_loss(layer_statistics(7.0 * features + 3.0, masks))
    raw, _ = discrepancy_loss(layer_statistics(7.0 * features, masks, "none"))
    assert float(scaled) == pytest.approx(float(base), abs=1e-4)
    assert float(raw) < float(base) - 3.0  # -log(49 d): unnormalised, scaling alone lowers the loss


def test_masked_channel_sums_gradients_match_autograd():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    weights = (torch.rand(2, 4, 7, dtype=torch.float64) > 0.5).double()
    assert torch.autograd.gradcheck(MaskedChannelSums.apply, (features, weights))
    # bf16 features: float32 sums, and a gradient in bf16 equal to float32 autograd's up to rounding
    low = features.detach().to(torch.bfloat16).requires_grad_(True)
    sums, squares = MaskedChannelSums.apply(low, weights.float())
    assert sums.dtype == squares.dtype == torch.float32
    (sums.square().sum() + squares.sum()).backward()
    reference = low.detach().float().requires_grad_(True)
    (torch.bmm(weights.float(), reference.transpose(1, 2)).square().sum() + reference.square().sum()).backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), reference.grad, rtol=2e-2, atol=2e-2)


def test_masks_are_max_pooled_for_classes_and_strictly_background():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0] = 1  # one foreground voxel in the top-left 2x2 cell
    target[0, 0, 3, 3] = 2
    masks = MaskPyramid(target, num_classes=3).at((2, 2))
    assert masks[0, 1].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # class 1 survives pooling
    assert masks[0, 2].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert masks[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]  # background: cells with no foreground at all
    # a size that does not divide the patch: adaptive pooling from the full resolution
    odd = MaskPyramid(torch.zeros(1, 1, 5, 5, dtype=torch.long), 2).at((3, 3))
    assert odd.shape == (1, 2, 3, 3) and float(odd[0, 0].min()) == 1.0 and float(odd[0, 1].max()) == 0.0


def test_multiclass_averages_the_classes_present_and_skips_samples_without_foreground():
    features = torch.zeros(3, 1, 1, 4)
    features[:, 0, 0] = torch.tensor([0.0, 1.0, 3.0, 0.0])
    target = torch.zeros(3, 1, 1, 4, dtype=torch.long)
    target[0, 0, 0] = torch.tensor([0, 1, 2, 0])  # both classes
    target[1, 0, 0] = torch.tensor([0, 1, 0, 0])  # class 1 only
    # sample 2: background only, contributes nothing
    loss, pairs = discrepancy_loss(layer_statistics(features, MaskPyramid(target, 3).at((1, 4)), "none"))
    # sample 0: background mean 0, class 1 mean 1, class 2 mean 3 -> distances 1 and 9;
    # sample 1: background mean (0 + 3 + 0) / 3 = 1, class 1 mean 1 -> distance 0; no class 2
    expected = [-math.log(1.0 + EPS), -math.log(9.0 + EPS), -math.log(0.0 + EPS)]
    assert int(pairs) == 3
    assert float(loss) == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_no_foreground_anywhere_gives_zero_and_finite_gradients():
    features = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    loss, pairs = discrepancy_loss(layer_statistics(features, MaskPyramid(target, 2).at((4, 4))))
    loss.backward()
    assert int(pairs) == 0 and float(loss.detach()) == 0.0
    assert torch.isfinite(features.grad).all() and float(features.grad.abs().max()) == 0.0
    # foreground everywhere: no background, the same
    full = torch.ones(2, 1, 4, 4, dtype=torch.long)
    loss, pairs = discrepancy_loss(layer_statistics(features, MaskPyramid(full, 2).at((4, 4))))
    assert int(pairs) == 0 and float(loss.detach()) == 0.0


def test_warmup_schedule_follows_the_paper_then_ramps():
    fraction = 100 / 175
    assert [scheduled_weight(epoch, 175, 0.3, fraction) for epoch in (0, 50, 99)] == [0.0, 0.0, 0.0]
    assert scheduled_weight(100, 175, 0.3, fraction) == pytest.approx(0.3 / 8)  # ramp: a tenth of 75 epochs
    assert scheduled_weight(107, 175, 0.3, fraction) == pytest.approx(0.3)
    assert scheduled_weight(174, 175, 0.3, fraction) == pytest.approx(0.3)
    assert scheduled_weight(0, 10, 0.3, 0.0) == pytest.approx(0.3)  # no warm-up, one-epoch ramp


def fd_method(num_epochs: int = 10, **options) -> tuple[FeatureDiscrepancy, dict[str, torch.Tensor]]:
    """A FeatureDiscrepancy set up for a hand-made three-tap 'network'."""
    method = FeatureDiscrepancy(options)
    channels = {"encoder.0": 2, "bottleneck": 3, "decoder.0": 2}
    context = TrainingContext(plans=None, configuration=None, network=torch.nn.Identity(), device=torch.device("cpu"),
                              num_classes=2, tap_channels=channels, settings=TrainingSettings(num_epochs=num_epochs))
    method.setup(context)
    torch.manual_seed(0)
    features = {"encoder.0": torch.randn(2, 2, 8, 8, requires_grad=True),
                "bottleneck": torch.randn(2, 3, 2, 2, requires_grad=True),
                "decoder.0": torch.randn(2, 2, 4, 4, requires_grad=True)}
    return method, features


def toy_target() -> torch.Tensor:
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[0, 0, 1:4, 1:4] = 1
    target[1, 0, 5:8, 2:6] = 1
    return target


def test_gradients_reach_every_layer_and_the_layer_weights_after_the_warmup():
    method, features = fd_method(num_epochs=10, fd_weight=0.5, fd_warmup_fraction=0.5)
    assert method.feature_taps() == ("encoder.0", "bottleneck", "decoder.0")
    method.on_epoch_start(9, {})
    loss, logs = method.extra_loss(features, [], toy_target(), {"sites": ["a", "b"]})
    loss.backward()
    for name, feature in features.items():
        assert feature.grad is not None and float(feature.grad.abs().sum()) > 0, name
    logits = method.layer_weights.logits
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    # the loss is w * sum_l softmax_l * L_fd,l with equal shares at the start
    per_layer = [logs[f"fd/{tap}"] for tap in method.taps]
    assert float(loss.detach()) == pytest.approx(0.5 * sum(per_layer) / 3, rel=1e-5)
    assert logs["fd_weight"] == 0.5 and logs["fd_alpha/bottleneck"] == pytest.approx(0.5 / 3)


def test_warmup_epochs_add_nothing_but_still_log():
    method, features = fd_method(num_epochs=10, fd_weight=0.5, fd_warmup_fraction=0.5)
    method.on_epoch_start(4, {})
    loss, logs = method.extra_loss(features, [], toy_target(), {})
    assert float(loss) == 0.0 and not loss.requires_grad
    assert logs["fd_weight"] == 0.0 and logs["fd_loss"] == 0.0 and math.isfinite(logs["fd/encoder.0"])


def test_bf16_features_are_reduced_in_float32():
    method, features = fd_method(num_epochs=1, fd_warmup_fraction=0.0)
    low = {name: value.detach().to(torch.bfloat16) for name, value in features.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method.extra_loss(low, [], toy_target(), {})
    reference, _ = method.extra_loss({n: v.detach().to(torch.bfloat16).float() for n, v in features.items()}, [],
                                     toy_target(), {})
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)


def test_bad_options_are_refused():
    with pytest.raises(Exception, match="fd-warmup-fraction"):
        FeatureDiscrepancy({"fd_warmup_fraction": 1.5})
    with pytest.raises(Exception, match="fd-weight"):
        FeatureDiscrepancy({"fd_weight": -1.0})


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_trains_end_to_end_on_two_sites(tmp_path, configuration):
    home = make_toy_home(tmp_path / "home", sites=TWO_SITES)
    folder = train_fold(TrainRequest(home, "Toy", configuration, 0, trainer_name="FeatureDiscrepancy",
                                     device="cpu", seed=0, trainer_options={"fd_weight": 0.2},
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    rows = list(csv.DictReader(open(folder / "progress.csv")))
    assert [float(row["fd_weight"]) for row in rows] == [0.0, 0.2]  # round(2 * 100/175) = 1 warm-up epoch
    taps = [name[len("fd/"):] for name in rows[0] if name.startswith("fd/")]
    assert "bottleneck" in taps and any(t.startswith("encoder.") for t in taps) and any(t.startswith("decoder.") for t in taps)
    assert all(math.isfinite(float(rows[1][f"fd/{tap}"])) for tap in taps)
    assert sum(float(rows[1][f"fd_alpha/{tap}"]) for tap in taps) == pytest.approx(0.2, rel=1e-4)
    state = load_checkpoint(folder / FINAL)["methods_state"]["FeatureDiscrepancy"]
    assert sorted(state["taps"]) == sorted(taps)
    assert state["layer_logits"].shape == (len(taps),)
    assert get_trainer("FeatureDiscrepancy").methods == (FeatureDiscrepancy,)
