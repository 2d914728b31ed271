"""Issue 13: SiteAdversarial and IntraSiteVariabilityAlignment read the bottleneck through its
global average *after* instance norm, which is nearly the same for every sample. They now read
second-order (SiteAdversarial: channel covariance) and pre-norm (AIVA: mean and std before the
last norm) statistics, which differ between samples whose channel means agree."""

from __future__ import annotations

import torch

from medseg_auto.planning.plans import Plans
from medseg_auto.training.feature_statistics import (
    CovariancePooling, last_norm, prenorm_recorder, scale_free_mean_std,
)
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet
from medseg_auto.training.trainers.intra_site_alignment import bottleneck_embedding
from medseg_auto.training.trainers.site_adversarial import SiteAdversarial


def _same_means_different_covariance() -> torch.Tensor:
    """Two samples ``(2, 4, 8, 8)``: every channel has mean 0 and std 1 in both, but channels
    0 and 1 are equal in the first sample and opposite in the second."""
    torch.manual_seed(0)
    base = torch.randn(4, 64)
    base = (base - base.mean(1, keepdim=True)) / base.std(1, unbiased=False, keepdim=True)
    first, second = base.clone(), base.clone()
    first[1], second[1] = base[0], -base[0]
    return torch.stack([first, second]).reshape(2, 4, 8, 8)


def _site_adversarial(plans: Plans, **options) -> SiteAdversarial:
    method = SiteAdversarial({"grl_no_ramp": True, **options})
    method.setup(TrainingContext(plans=plans, configuration=plans.configuration("2d"), network=torch.nn.Identity(),
                                 device=torch.device("cpu"), num_classes=3, tap_channels={"bottleneck": 4},
                                 train_case_ids=["c1", "c2"], sites={"c1": "x", "c2": "y"},
                                 settings=TrainingSettings(num_epochs=2)))
    method.on_epoch_start(0, {})
    return method


def _toy_plans(home) -> Plans:
    return Plans.load(next(home.preprocessed.iterdir()) / "plans.json")


def test_site_head_tells_apart_samples_whose_channel_means_agree(toy_home):
    features = _same_means_different_covariance()
    assert torch.allclose(features[0].flatten(1).mean(1), features[1].flatten(1).mean(1), atol=1e-6)
    method = _site_adversarial(_toy_plans(toy_home))
    scores = method.head(features)
    assert (scores[0] - scores[1]).abs().max() > 1e-3
    old = _site_adversarial(_toy_plans(toy_home), site_features="gap")  # the previous reading, still selectable
    old_scores = old.head(features)
    assert torch.allclose(old_scores[0], old_scores[1], atol=1e-5)


def test_covariance_pooling_shape_and_values():
    pooling = CovariancePooling(4, reduced=4)
    with torch.no_grad():
        pooling.projection.weight.copy_(torch.eye(4))
    features = _same_means_different_covariance()
    pooled = pooling(features)
    assert pooled.shape == (2, 10) and pooling.out_features == 10
    # entry (0, 1) of the covariance is the second value of the upper triangle: +1 and -1
    torch.testing.assert_close(pooled[:, 1], torch.tensor([1.0, -1.0]), atol=1e-4, rtol=0)


def test_aiva_embedding_reads_the_bottleneck_before_its_last_norm(toy_home):
    plans = _toy_plans(toy_home)
    network = build_dynunet(plans.configuration("2d"), 1, plans.num_classes).eval()
    assert last_norm(network.bottleneck) is network.bottleneck.norm2
    torch.manual_seed(1)
    images = torch.randn(8, 1, 16, 16) * torch.linspace(0.2, 3, 8).reshape(8, 1, 1, 1)
    images[:4] = torch.nn.functional.avg_pool2d(images[:4], 3, 1, 1)  # a smoother "site"
    recorded = {}
    hooks = [network.bottleneck.register_forward_hook(lambda m, i, o: recorded.__setitem__("after", o)),
             network.bottleneck.norm2.register_forward_pre_hook(lambda m, i: recorded.__setitem__("before", i[0]))]
    with torch.no_grad(), prenorm_recorder(network.bottleneck) as record:
        network(images)
        embedding = bottleneck_embedding(record["features"])
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(embedding, scale_free_mean_std(recorded["before"]))
    old = recorded["after"].flatten(2).mean(2)

    def spread(vectors: torch.Tensor) -> float:
        """Between-sample spread relative to size."""
        return float(vectors.std(0).mean() / vectors.abs().mean())

    assert spread(embedding) > 2 * spread(old)


def test_aiva_embedding_differences_do_not_change_when_a_prenorm_channel_is_scaled():
    """The norm after these features undoes a per-channel scale, so the embedding's between-sample
    differences must not change with it (else the alignment loss could be lowered for free)."""
    torch.manual_seed(3)
    features = torch.randn(4, 3, 5, 5) + torch.tensor([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)
    scaled = features * torch.tensor([0.5, 1.0, 7.0]).reshape(1, 3, 1, 1)
    difference = bottleneck_embedding(features)[0] - bottleneck_embedding(features)[1]
    torch.testing.assert_close(bottleneck_embedding(scaled)[0] - bottleneck_embedding(scaled)[1], difference,
                               rtol=1e-3, atol=1e-3)
