"""The dispersive loss variants on hand-made vectors, and the Dispersive trainer end to end."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.losses.dispersive import (
    EPS, VARIANTS, covariance, dispersive_loss, hinge, infonce_cos, infonce_l2, pool_representations,
)
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.dispersive import Dispersive


def test_infonce_l2_known_values_three_and_two_samples():
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # squared distances / d (d = 2): pairs (0,1) 1/2, (0,2) 4/2, (1,2) 5/2; each ordered pair twice
    mean_kernel = (math.exp(-0.5 / 0.8) + math.exp(-2.0 / 0.8) + math.exp(-2.5 / 0.8)) / 3
    assert float(infonce_l2(h, tau=0.8)) == pytest.approx(math.log(mean_kernel + EPS), rel=1e-6)
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # D = 25 / 2
    assert float(infonce_l2(two, tau=0.8)) == pytest.approx(math.log(math.exp(-12.5 / 0.8) + EPS), rel=1e-6)


def test_cosine_hinge_and_covariance_known_values():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = 1 - 1 / math.sqrt(2)
    expected = math.log((math.exp(-1.0 / 0.5) + 2 * math.exp(-c / 0.5)) / 3 + EPS)
    assert float(infonce_cos(h, tau=0.5)) == pytest.approx(expected, rel=1e-6)
    # one pair at root-mean-square distance sqrt(1/2): (1 - 0.7071)^2
    assert float(hinge(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), margin=1.0)) == pytest.approx((1 - math.sqrt(0.5)) ** 2)
    assert float(hinge(torch.tensor([[0.0, 0.0], [3.0, 3.0]]), margin=1.0)) == 0.0  # beyond the margin
    # h = [[1, 1], [-1, -1]]: C = [[2, 2], [2, 2]], off-diagonal energy 8, divided by d (d-1) = 2
    assert float(covariance(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))) == pytest.approx(4.0)
    assert float(covariance(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]))) == 0.0  # uncorrelated


def test_covariance_matches_the_explicit_matrix():
    h = torch.randn(7, 5, dtype=torch.float64)
    matrix = torch.cov(h.T)  # (d, d), divides by B - 1
    off_diagonal = matrix - torch.diag(torch.diag(matrix))
    assert float(covariance(h)) == pytest.approx(float(off_diagonal.pow(2).sum()) / (5 * 4), rel=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_permutation_and_translation_aware(variant):
    torch.manual_seed(0)
    h = torch.randn(6, 10, dtype=torch.float64)
    value = dispersive_loss(h, variant)
    assert float(dispersive_loss(h[torch.randperm(6)], variant)) == pytest.approx(float(value), rel=1e-10)
    if variant != "infonce_cos":  # distances and covariance ignore a common shift; angles do not
        assert float(dispersive_loss(h + 3.0, variant)) == pytest.approx(float(value), rel=1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_has_correct_gradients(variant):
    torch.manual_seed(1)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dispersive_loss(x, variant, tau=0.8, margin=2.0), (h,))


def test_l2_gradient_matches_the_hand_derivation_and_repels():
    h = torch.tensor([[0.2, -0.1, 0.4], [0.5, 0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    tau, d = 0.8, 3
    loss = infonce_l2(h, tau)
    loss.backward()
    diff = (h[0] - h[1]).detach()
    kernel = math.exp(-float(diff.pow(2).sum()) / d / tau)
    expected = -(kernel / (kernel + EPS)) / tau * 2 * diff / d  # dL/dh_0 for B = 2
    torch.testing.assert_close(h.grad[0], expected)
    torch.testing.assert_close(h.grad[1], -expected)
    stepped = (h - 0.1 * h.grad).detach()
    assert float((stepped[0] - stepped[1]).norm()) > float(diff.norm())  # descent pushes the pair apart


def test_far_apart_vectors_do_not_underflow_to_nan():
    h = torch.tensor([[0.0] * 4, [1e3] * 4], requires_grad=True)
    loss = infonce_l2(h, tau=0.8)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(EPS), rel=1e-6)
    assert torch.isfinite(h.grad).all()


def test_single_sample_gives_zero_and_pooling_shapes():
    features = torch.randn(3, 4, 6, 5, requires_grad=True)
    assert pool_representations(features, "flatten").shape == (3, 120)
    assert pool_representations(features, "gap").shape == (3, 4)
    lone = dispersive_loss(pool_representations(features[:1]), "infonce_l2")
    assert float(lone.detach()) == 0.0 and lone.requires_grad
    with pytest.raises(ValueError, match="unknown dispersive loss variant"):
        dispersive_loss(torch.zeros(2, 2), "l1")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_representations(features, "max")


def test_weights_switch_at_the_phase_boundary():
    method = Dispersive({"disp_weights": [0.2, 0.6], "disp_phase_boundary": 0.3})
    method.num_epochs = 10
    assert [method.weight_for_epoch(e) for e in (0, 2, 3, 9)] == [0.2, 0.2, 0.6, 0.6]
    with pytest.raises(MedsegError, match="phase-boundary"):
        Dispersive({"disp_phase_boundary": 1.5})


@pytest.mark.slow
def test_dispersive_trains_end_to_end_on_two_sites(toy_home_factory):
    home = toy_home_factory(sites=["a", "b"] * 3)
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="Dispersive", device="cpu", seed=0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=1, num_workers=0)))
    with open(folder / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["disp_weight"]) for row in rows] == [0.2, 0.6]
    assert all(math.log(EPS) <= float(row["disp_loss"]) <= 0.0 for row in rows)
    options = load_checkpoint(folder / FINAL)["init_args"]["method_options"]["Dispersive"]
    assert options["disp_tap"] == "encoder.1" and options["disp_tau"] == 0.8
    with pytest.raises(MedsegError, match="not a tap of this network"):
        train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="Dispersive", device="cpu",
                                trainer_options={"disp_tap": "encoder.7"},
                                settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
