"""``LocalContrastive`` (Chaitanya et al., supervised local contrastive loss): the loss on
hand-made embeddings, pixel sampling, gradients to the features and the projection head, and
training end to end on the two-site toy data."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.losses.local_contrastive import local_contrastive_loss, sample_pixels
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.local_contrastive import LocalContrastive

from tests.helpers.toy_home import make_toy_home


def test_loss_equals_the_hand_computed_value():
    # three unit vectors: anchors 0 and 1 of class 0 at 90 degrees, anchor 2 of class 1 opposite anchor 0
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    classes = torch.tensor([0, 0, 1])
    tau = 0.5
    loss, anchors = local_contrastive_loss(embeddings, classes, tau)
    s = lambda cos: cos / tau  # noqa: E731
    # anchor 0: positive 1 (cos 0), negative 2 (cos -1); anchor 1: positive 0 (cos 0), negative 2 (cos 0)
    term_0 = -math.log(math.exp(s(0)) / (math.exp(s(0)) + math.exp(s(-1))))
    term_1 = -math.log(math.exp(s(0)) / (math.exp(s(0)) + math.exp(s(0))))
    assert int(anchors) == 2  # anchor 2 has no positive
    assert float(loss) == pytest.approx((term_0 + term_1) / 2, rel=1e-6)
    # the embeddings are normalised first: the length of a vector does not matter
    scaled, _ = local_contrastive_loss(embeddings * torch.tensor([[3.0], [0.5], [7.0]]), classes, tau)
    assert float(scaled) == pytest.approx(float(loss), rel=1e-6)


def test_no_anchor_with_a_positive_and_a_negative_gives_zero_and_finite_gradients():
    embeddings = torch.randn(4, 3, requires_grad=True)
    loss, anchors = local_contrastive_loss(embeddings, torch.tensor([1, 1, 1, 1]), 0.1)  # no negatives
    loss.backward()
    assert int(anchors) == 0 and float(loss.detach()) == 0.0 and torch.isfinite(embeddings.grad).all()


def test_pixels_are_sampled_per_class_without_replacement():
    labels = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    index, classes, valid = sample_pixels(labels, num_classes=3, per_class=2, generator=torch.Generator().manual_seed(0))
    assert index.shape == classes.shape == valid.shape == (2, 3, 2)
    assert valid[0].tolist() == [[True, True], [True, True], [True, False]]
    assert valid[1].tolist() == [[True, True], [False, False], [False, False]]
    picked = labels.gather(1, index.flatten(1)).view(2, 3, 2)
    assert bool((picked[valid] == classes[valid]).all())
    assert len(set(index[0, 0].tolist())) == 2


def lc_method(**options) -> LocalContrastive:
    method = LocalContrastive(options)
    context = TrainingContext(plans=None, configuration=None, network=torch.nn.Identity(), device=torch.device("cpu"),
                              num_classes=2, tap_channels={"encoder.0": 4, "bottleneck": 8, "decoder.0": 8, "decoder.1": 4},
                              settings=TrainingSettings(num_epochs=1))
    method.setup(context)
    return method


def test_gradients_reach_the_features_and_the_head():
    method = lc_method()
    assert method.feature_taps() == ("decoder.1",)  # the full-resolution decoder stage by default
    torch.manual_seed(0)
    features = {"decoder.1": torch.randn(2, 4, 8, 8, requires_grad=True)}
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:6, 2:6] = 1
    loss, logs = method.extra_loss(features, [], target, {})
    loss.backward()
    assert logs["lc_anchors"] == 2 * 2 * 16 and math.isfinite(logs["lc_loss"])
    assert float(loss.detach()) == pytest.approx(0.1 * logs["lc_loss"], rel=1e-5)
    assert float(features["decoder.1"].grad.abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in method.head.parameters())


def test_a_coarser_tap_downsamples_the_labels_and_bad_taps_are_refused():
    method = lc_method(lc_tap="decoder.0", lc_pixels=3)
    features = {"decoder.0": torch.randn(1, 8, 4, 4, requires_grad=True)}
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[:, :, :4] = 1
    loss, logs = method.extra_loss(features, [], target, {})
    assert logs["lc_anchors"] == 6 and math.isfinite(float(loss.detach()))
    with pytest.raises(Exception, match="no such feature tap"):
        lc_method(lc_tap="decoder.7")
    with pytest.raises(Exception, match="lc-temperature"):
        LocalContrastive({"lc_temperature": 0.0})


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_trains_end_to_end_on_two_sites(tmp_path, configuration):
    home = make_toy_home(tmp_path / "home", sites=["a", "a", "a", "b", "b", "b"])
    folder = train_fold(TrainRequest(home, "Toy", configuration, 0, trainer_name="LocalContrastive", device="cpu",
                                     seed=0, trainer_options={"lc_pixels": 8},
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    rows = list(csv.DictReader(open(folder / "progress.csv")))
    assert all(math.isfinite(float(row["lc_loss"])) and float(row["lc_anchors"]) > 0 for row in rows)
    state = load_checkpoint(folder / FINAL)["methods_state"]["LocalContrastive"]
    assert state["tap"].startswith("decoder.") and "0.weight" in state["head"]
