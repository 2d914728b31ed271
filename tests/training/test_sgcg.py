"""SGCG: the closed-form loss (by hand and against Monte Carlo), the online class statistics, the
label plumbing, and the trainer end to end with its statistics in the checkpoint."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.losses.class_statistics import ClassFeatureStatistics
from medseg_auto.training.losses.semantic_contrast import (
    IGNORE, downsample_labels, sample_pixels, semantic_contrastive_loss,
)
from medseg_auto.run.train import TrainRequest, train_fold


def test_closed_form_known_value_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    mean = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    variance = torch.tensor([[0.5, 0.5], [0.2, 0.1]])
    # tau = 1: z_0 = 1 + 0.5/2 = 1.25, z_1 = 0 + 0.2/2 = 0.1; label 0 adds q^T S_0 q / 2 = 0.25
    expected = -math.log(math.exp(1.25) / (math.exp(1.25) + math.exp(0.1))) + 0.25
    loss = semantic_contrastive_loss(q, torch.tensor([0]), mean, variance, tau=1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # tau = 0.5: z_0 = 2 + 0.5/0.5 = 3, z_1 = 0 + 0.2/0.5 = 0.4; label 1 adds 0.2/0.5 = 0.4
    expected = -math.log(math.exp(0.4) / (math.exp(3.0) + math.exp(0.4))) + 0.4
    assert float(semantic_contrastive_loss(q, torch.tensor([1]), mean, variance, tau=0.5)) == pytest.approx(expected, rel=1e-6)


def random_problem(seed: int, n: int = 5, classes: int = 3, dim: int = 4):
    generator = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(classes, (n,), generator=generator)
    mean = 0.5 * torch.randn(classes, dim, generator=generator, dtype=torch.float64)
    factors = 0.3 * torch.randn(classes, dim, dim, generator=generator, dtype=torch.float64)
    full = factors @ factors.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    return q, labels, mean, full


def test_eq10_equals_eq11_and_diagonal_equals_full_with_diagonal_matrices():
    q, labels, mean, full = random_problem(0)
    tau = 0.7
    loss = semantic_contrastive_loss(q, labels, mean, full, tau)
    z = q @ mean.T / tau + torch.einsum("na,kab,nb->nk", q, full, q) / (2 * tau**2)
    eq10 = torch.logsumexp(z, dim=1) - (q * mean[labels]).sum(1) / tau  # log sum exp(z) - q.mu+/tau
    assert float(loss) == pytest.approx(float(eq10.mean()), rel=1e-10)
    variances = torch.diagonal(full, dim1=1, dim2=2)
    assert float(semantic_contrastive_loss(q, labels, mean, variances, tau)) == pytest.approx(
        float(semantic_contrastive_loss(q, labels, mean, torch.diag_embed(variances), tau)), rel=1e-12)


def test_closed_form_bounds_the_monte_carlo_infinite_sample_loss():
    """Eq. 4 (infinitely many positives and negatives, the right side of Eq. 5) by Monte Carlo on
    small Gaussians: below the closed form (Jensen), while Monte Carlo of the bound itself (Eq. 7)
    reproduces the closed form (the Gaussian moment-generating function, Eq. 9)."""
    q, labels, mean, full = random_problem(3, n=4, classes=3, dim=3)
    tau, samples = 0.8, 400_000
    generator = torch.Generator().manual_seed(7)
    chol = torch.linalg.cholesky(full)
    draws = mean[:, None, :] + torch.einsum("kab,ksb->ksa", chol, torch.randn(3, samples, 3, generator=generator,
                                                                                   dtype=torch.float64))
    infinite, bound_mc = [], []
    for qi, yi in zip(q, labels):
        similarity = draws @ qi / tau  # (K, S): q . x / tau for samples of every class
        negatives = sum(similarity[j].exp().mean() for j in range(3) if j != yi)
        positive = similarity[yi]
        infinite.append((torch.log(positive.exp() + negatives) - positive).mean())
        bound_mc.append(torch.log(positive.exp().mean() + negatives) - positive.mean())
    closed = float(semantic_contrastive_loss(q, labels, mean, full, tau))
    mc_infinite, mc_bound = float(torch.stack(infinite).mean()), float(torch.stack(bound_mc).mean())
    print(f'closed form {closed:.4f}, Monte Carlo bound {mc_bound:.4f}, Monte Carlo Eq. 4 {mc_infinite:.4f}')
    assert mc_bound == pytest.approx(closed, rel=5e-3)
    assert mc_infinite < closed
    assert closed - mc_infinite < 0.05  # a bound, and a tight one at this spread (gap 0.013)
    zero = torch.zeros_like(full)  # no spread: Jensen is an equality and both are the plain CE
    point = semantic_contrastive_loss(q, labels, mean, zero, tau)
    plain = torch.nn.functional.cross_entropy(q @ mean.T / tau, labels)
    assert float(point) == pytest.approx(float(plain), rel=1e-12)


def test_gradients_and_unknown_classes():
    q, labels, mean, full = random_problem(1)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: semantic_contrastive_loss(x, labels, mean, full, 0.5), (q,))
    known = torch.tensor([True, True, False])
    loss = semantic_contrastive_loss(q, labels, mean, full, 0.5, known_classes=known)
    keep = labels != 2
    z = q @ mean.T / 0.5 + torch.einsum("na,kab,nb->nk", q, full, q) / 0.5
    expected = torch.nn.functional.cross_entropy(z[keep][:, :2], labels[keep], reduction="none") + z[keep, labels[keep]] \
        - (q @ mean.T / 0.5)[keep, labels[keep]]
    assert float(loss.detach()) == pytest.approx(float(expected.detach().mean()), rel=1e-10)
    none_known = semantic_contrastive_loss(q, labels, mean, full, 0.5, known_classes=torch.zeros(3, dtype=torch.bool))
    assert float(none_known.detach()) == 0.0 and none_known.requires_grad


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_online_statistics_equal_the_pooled_batch_computation(kind):
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(300, 4, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + 1.5
    labels = torch.randint(3, (300,), generator=generator)
    labels[labels == 2] = 1  # class 2 never appears
    stats = ClassFeatureStatistics(3, 4, kind)
    for chunk in (slice(0, 40), slice(40, 41), slice(41, 180), slice(180, 300)):
        stats.update(features[chunk], labels[chunk])
    for k in (0, 1):
        members = features[labels == k]
        assert float(stats.count[k]) == members.shape[0]
        torch.testing.assert_close(stats.mean[k], members.mean(0))
        population = torch.cov(members.T, correction=0)
        expected = population if kind == "full" else torch.diagonal(population)
        torch.testing.assert_close(stats.covariance[k], expected)
    assert float(stats.count[2]) == 0 and float(stats.mean[2].abs().sum()) == 0.0
    restored = ClassFeatureStatistics(3, 4, kind)
    restored.load_state_dict(stats.state_dict())
    torch.testing.assert_close(restored.covariance, stats.covariance)
    with pytest.raises(ValueError, match="do not fit"):
        ClassFeatureStatistics(3, 5, kind).load_state_dict(stats.state_dict())


def test_labels_downsampled_by_majority_and_pixels_gathered():
    target = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [2, 2, 1, 0], [2, 2, 0, 1]])[None, None]
    small = downsample_labels(target, (2, 2), num_classes=3)
    assert small.tolist() == [[[1, 0], [2, IGNORE]]]  # 3/4 is kept, 2/4 is not
    assert torch.equal(downsample_labels(target, (4, 4), 3), target[:, 0])
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    labels = torch.tensor([[[0, IGNORE], [1, 2]], [[IGNORE, IGNORE], [1, 0]]])
    gathered, kept = sample_pixels(features, labels, max_pixels=0)
    expected = features.permute(0, 2, 3, 1).reshape(-1, 3)[labels.reshape(-1) >= 0]
    torch.testing.assert_close(gathered, expected)
    assert kept.tolist() == [0, 1, 2, 1, 0]
    assert sample_pixels(features, labels, max_pixels=3)[0].shape == (3, 3)


@pytest.mark.slow
def test_sgcg_trains_warms_up_and_resumes_its_statistics(toy_home_factory):
    home = toy_home_factory(sites=["a", "b"] * 3)
    kwargs = dict(trainer_name="SemanticGuidedContrastive", device="cpu", seed=0)
    common_settings = dict(iterations_per_epoch=2, num_workers=0)
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, settings=dict(num_epochs=2, **common_settings),
                                     **kwargs))
    with open(folder / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["sgcg_active"]) for row in rows] == [0.0, 1.0]
    assert float(rows[0]["sgcg_loss"]) == 0.0 and float(rows[1]["sgcg_loss"]) > 0.0
    assert [float(row["sgcg_pixels"]) for row in rows] == [4 * 16 * 16] * 2  # batch 4, 16x16, full-resolution tap
    state = load_checkpoint(folder / FINAL)["methods_state"]["SemanticGuidedContrastive"]
    assert float(state["statistics"]["count"].sum()) == 4 * 4 * 16 * 16 and state["statistics"]["kind"] == "diagonal"
    assert state["head"]["2.weight"].shape == (64, 4)  # the 2d toy's last decoder stage has 4 channels
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, continue_training=True,
                                     settings=dict(num_epochs=3, **common_settings), **kwargs))
    resumed = load_checkpoint(folder / FINAL)["methods_state"]["SemanticGuidedContrastive"]
    assert float(resumed["statistics"]["count"].sum()) == 6 * 4 * 16 * 16  # counts went on from the checkpoint
