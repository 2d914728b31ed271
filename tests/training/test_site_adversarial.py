"""SiteAdversarial: gradient reversal, the site head's loss and accuracy, the one-site refusal,
and a run on the two-site toy data (sites a and b) that logs the site classifier per epoch."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.site_adversarial import SiteAdversarial, ramped_lambda, reverse_gradient

from tests.helpers.toy_home import make_toy_home, toy_plans

FAST = dict(device="cpu", seed=0)
FAST_SETTINGS = dict(num_workers=0, iterations_per_epoch=2, val_iterations_per_epoch=1)


def test_reverse_gradient_flips_and_scales():
    x = torch.randn(3, 5, requires_grad=True)
    weights = torch.randn(3, 5)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * weights)
    x.grad = None
    (reverse_gradient(x, 0.0) * weights).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_lambda_ramp():
    assert ramped_lambda(0.1, 0, 10) == 0.0
    assert ramped_lambda(0.1, 5, 10) == pytest.approx(0.1 * (2 / (1 + math.exp(-5)) - 1))
    assert ramped_lambda(0.1, 3, 10, ramp=False) == 0.1


def method_on(sites: dict[str, str | None], **options) -> SiteAdversarial:
    plans = toy_plans()
    method = SiteAdversarial({"grl_no_ramp": True, **options})
    method.setup(TrainingContext(plans=plans, configuration=plans.configuration("2d"), network=torch.nn.Identity(),
                                 device=torch.device("cpu"), num_classes=3, tap_channels={"bottleneck": 6},
                                 train_case_ids=list(sites), sites=sites, settings=TrainingSettings(num_epochs=4)))
    method.on_epoch_start(0, {})
    return method


def test_site_loss_reaches_the_encoder_reversed_and_scaled():
    method = method_on({"c1": "x", "c2": "y", "c3": "y", "c4": None}, grl_lambda=0.5, site_weighting="none")
    assert method.site_index == {"x": 0, "y": 1}
    features = torch.randn(4, 6, 2, 2, requires_grad=True)
    batch = {"sites": ["x", "y", None, "y"]}
    loss, logs = method.extra_loss({"bottleneck": features}, [], torch.zeros(4, 1, 2, 2), batch)
    loss.backward()
    # the same loss without reversal, through the same head: the encoder's gradient is -0.5 times it
    plain = features.detach().clone().requires_grad_(True)
    labels = torch.tensor([0, 1, -100, 1])
    scores = method.head(plain)
    plain_loss = torch.nn.functional.cross_entropy(scores, labels, ignore_index=-100)
    plain_loss.backward()
    torch.testing.assert_close(loss, plain_loss)
    torch.testing.assert_close(features.grad, -0.5 * plain.grad)
    assert plain.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters())  # head: not reversed
    predicted = scores.argmax(dim=1)
    assert logs["site_accuracy"] == pytest.approx(float((predicted[[0, 1, 3]] == labels[[0, 1, 3]]).float().mean()))
    assert logs["grl_lambda"] == 0.5 and logs["site_loss"] == pytest.approx(float(plain_loss.detach()))


def test_site_loss_is_weighted_inverse_to_the_sites_share_of_training_cases():
    """On pooled data that is mostly one site an unweighted head learns to always answer it
    (BUSI + STU: balanced accuracy 0.50); each site's cases weigh N / (S n_site)."""
    sites = {f"big{i}": "big" for i in range(9)} | {"small": "small"}
    method = method_on(sites)
    torch.testing.assert_close(method.site_weights, torch.tensor([10 / (2 * 9), 10 / (2 * 1)]))
    features = torch.randn(3, 6, 2, 2)
    loss, _ = method.extra_loss({"bottleneck": features}, [], torch.zeros(3, 1, 2, 2), {"sites": ["big", "small", "big"]})
    scores = method.head(features)
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1, 0]), weight=method.site_weights)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1, 0])))


def test_epoch_balanced_accuracy_is_the_mean_per_site_recall_over_the_epoch():
    """A head that always answers the majority site has plain accuracy = the majority rate but
    balanced accuracy 1 / sites: the number that shows whether site information is left."""
    method = method_on({"c1": "x", "c2": "y"})
    for parameter in method.head.parameters():
        torch.nn.init.zeros_(parameter)
    with torch.no_grad():
        method.head.classifier[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # always site x
    for sites in (["x", "x", "x", "y"], ["x", "x", None, "x"]):  # 6 x, 1 y over two batches
        _, logs = method.extra_loss({"bottleneck": torch.randn(4, 6, 2, 2)}, [], torch.zeros(4, 1, 2, 2),
                                    {"sites": sites})
    row: dict = {}
    method.on_epoch_end(0, row)
    assert row["site_balanced_accuracy"] == pytest.approx(0.5)
    assert row["site_majority_rate"] == pytest.approx(6 / 7)
    method.on_epoch_start(1, {})  # counts start again each epoch
    row = {}
    method.on_epoch_end(1, row)
    assert row == {}


def test_single_linear_head_option():
    method = method_on({"c1": "x", "c2": "y"}, site_hidden=0)
    assert isinstance(method.head.classifier, torch.nn.Linear) and method.head.classifier.out_features == 2


def test_one_site_is_refused(tmp_path):
    with pytest.raises(MedsegError, match="at least two sites"):
        method_on({"c1": "x", "c2": "x", "c3": None})
    home = make_toy_home(tmp_path / "one_site", sites=["a"] * 6)
    with pytest.raises(MedsegError, match="at least two sites"):
        train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SiteAdversarial",
                                settings=dict(num_epochs=1, **FAST_SETTINGS), **FAST))


@pytest.mark.slow
def test_site_adversarial_end_to_end_logs_accuracy_and_resumes(tmp_path):
    home = make_toy_home(tmp_path / "home", sites=["a", "a", "a", "b", "b", "b"])
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SiteAdversarial",
                                     trainer_options={"grl_lambda": 0.2},
                                     settings=dict(num_epochs=2, **FAST_SETTINGS), **FAST))
    with open(folder / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["site_accuracy"]) <= 1.0 and float(row["site_loss"]) > 0
        assert 0.0 <= float(row["site_balanced_accuracy"]) <= 1.0 and float(row["site_majority_rate"]) >= 0.5
    assert [float(row["grl_lambda"]) for row in rows] == pytest.approx([0.0, ramped_lambda(0.2, 1, 2)])
    state = load_checkpoint(folder / FINAL)["methods_state"]["SiteAdversarial"]
    assert state["sites"] == ["a", "b"] and state["head"]
    train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SiteAdversarial", continue_training=True,
                            trainer_options={"grl_lambda": 0.2}, settings=dict(num_epochs=3, **FAST_SETTINGS),
                            **FAST))
    resumed = load_checkpoint(folder / FINAL)["methods_state"]["SiteAdversarial"]["head"]
    assert any(not torch.equal(resumed[name], state["head"][name]) for name in resumed)  # trained on, not reset


def test_auto_stage_is_the_middle_encoder_stage_and_bottleneck_stays_selectable():
    """On pooled BUSI + STU the head on the bottleneck never told the sites apart (balanced
    accuracy 0.50) and on encoder.3 of the same 6-stage network it reached 0.98: the default
    reads the middle encoder stage."""
    from medseg_auto.training.trainers.site_adversarial import middle_encoder_stage

    six_stages = {f"encoder.{i}": 2 ** i for i in range(5)} | {"bottleneck": 32}
    assert middle_encoder_stage(six_stages) == "encoder.3"
    assert middle_encoder_stage({f"encoder.{i}": 1 for i in range(3)} | {"bottleneck": 1}) == "encoder.2"
    assert middle_encoder_stage({"bottleneck": 6}) == "bottleneck"
    plans = toy_plans()
    for options, stage, channels in (({}, "encoder.3", 8), ({"site_stage": "bottleneck"}, "bottleneck", 32)):
        method = SiteAdversarial(options)
        method.setup(TrainingContext(plans=plans, configuration=plans.configuration("2d"), network=torch.nn.Identity(),
                                     device=torch.device("cpu"), num_classes=3, tap_channels=six_stages,
                                     train_case_ids=["c1", "c2"], sites={"c1": "x", "c2": "y"},
                                     settings=TrainingSettings(num_epochs=2)))
        assert method.feature_taps() == (stage,)
        method.on_epoch_start(0, {})
        loss, _ = method.extra_loss({stage: torch.randn(2, channels, 3, 3)}, [], torch.zeros(2, 1, 3, 3),
                                    {"sites": ["x", "y"]})
        assert torch.isfinite(loss)
