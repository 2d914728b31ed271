"""``ExchangeableFeatureDiscrepancy`` (Roy et al., eq. 4, Algorithm 1): the exchange term on
hand-made tensors, cross-site pairing and its single-site fallback, the site-balanced sampler,
and training end to end on the two-site toy data (and on one site)."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch

from medseg_auto.training.data.case_samplers import SiteBalancedCaseSampler
from medseg_auto.training.hooks import DatasetInfo, TrainingContext, TrainingSettings
from medseg_auto.training.losses.feature_discrepancy import (
    EPS, MaskPyramid, exchange_partners, exchangeable_discrepancy_loss, layer_statistics,
)
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.exchangeable_feature_discrepancy import ExchangeableFeatureDiscrepancy

from tests.helpers.toy_home import make_toy_home


def test_exchange_term_equals_the_hand_computed_value():
    # one channel, four positions; foreground = first two positions in both samples
    features = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]], [[[5.0, 5.0, 2.0, 2.0]]]])  # (2, 1, 1, 4)
    target = torch.tensor([[[[1, 1, 0, 0]]], [[[1, 1, 0, 0]]]])
    stats = layer_statistics(features, MaskPyramid(target, 2).at((1, 4)), "none")
    loss, pairs = exchangeable_discrepancy_loss(stats, torch.tensor([1, 0]))
    # F_0 = 1, B_0 = 0, F_1 = 5, B_1 = 2: d(F_0, B_1) + d(F_1, B_0) = 1 + 25, the same for both samples
    assert int(pairs) == 2
    assert float(loss) == pytest.approx(-math.log(1 + 25 + EPS))
    # a partner without foreground: the pair contributes nothing
    target[1] = 0
    stats = layer_statistics(features, MaskPyramid(target, 2).at((1, 4)), "none")
    loss, pairs = exchangeable_discrepancy_loss(stats, torch.tensor([1, 0]))
    assert int(pairs) == 0 and float(loss) == 0.0


def test_partners_come_from_another_site():
    torch.manual_seed(0)
    sites = ["a", "b", "a", "b", "c"]
    for _ in range(20):
        partner, crossed = exchange_partners(sites)
        assert crossed and all(sites[int(j)] != site for site, j in zip(sites, partner))


def test_single_site_falls_back_to_a_shuffled_derangement():
    torch.manual_seed(0)
    partner, crossed = exchange_partners(["a"] * 5)
    assert not crossed
    assert sorted(partner.tolist()) == list(range(5)) and all(int(j) != i for i, j in enumerate(partner))
    partner, crossed = exchange_partners([None, None])
    assert not crossed and partner.tolist() == [1, 0]


def exchange_method() -> ExchangeableFeatureDiscrepancy:
    method = ExchangeableFeatureDiscrepancy({"fd_warmup_fraction": 0.0, "fd_weight": 1.0})
    context = TrainingContext(plans=None, configuration=None, network=torch.nn.Identity(), device=torch.device("cpu"),
                              num_classes=2, tap_channels={"encoder.0": 2, "bottleneck": 2},
                              settings=TrainingSettings(num_epochs=1))
    method.setup(context)
    return method


def test_single_site_batch_is_logged_once_and_gradients_flow():
    method = exchange_method()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("medseg_auto.training.exchangeable_feature_discrepancy")
    logger.addHandler(handler)
    try:
        torch.manual_seed(0)
        target = torch.zeros(3, 1, 4, 4, dtype=torch.long)
        target[:, :, :2, :2] = 1
        for _ in range(3):
            features = {"encoder.0": torch.randn(3, 2, 4, 4, requires_grad=True),
                        "bottleneck": torch.randn(3, 2, 2, 2, requires_grad=True)}
            loss, logs = method.extra_loss(features, [], target, {"sites": ["a", "a", "a"]})
            assert logs["fd_exch_cross_site"] == 0.0 and math.isfinite(logs["fd_exch/encoder.0"])
    finally:
        logger.removeHandler(handler)
    assert len([r for r in records if "single site" in r.getMessage()]) == 1
    loss.backward()
    assert all(float(f.grad.abs().sum()) > 0 for f in features.values())
    assert float(method.layer_weights.logits.grad.abs().sum()) > 0
    # with two sites the term pairs across them
    _, logs = method.extra_loss({k: v.detach() for k, v in features.items()}, [], target, {"sites": ["a", "b", "a"]})
    assert logs["fd_exch_cross_site"] == 1.0


def test_batches_are_site_balanced():
    method = ExchangeableFeatureDiscrepancy()
    info = DatasetInfo(["a1", "a2", "a3", "a4", "b1"], {"a1": "a", "a2": "a", "a3": "a", "a4": "a", "b1": "b"})
    sampler = method.make_sampler(info)
    assert isinstance(sampler, SiteBalancedCaseSampler)
    batch = sampler.sample_batch(np.random.default_rng(0), 4)
    assert sum(case.startswith("b") for case in batch) == 2


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_trains_end_to_end_on_two_sites(tmp_path, configuration):
    home = make_toy_home(tmp_path / "home", sites=["a", "a", "a", "b", "b", "b"])
    folder = train_fold(TrainRequest(home, "Toy", configuration, 0, trainer_name="ExchangeableFeatureDiscrepancy",
                                     device="cpu", seed=0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    rows = list(csv.DictReader(open(folder / "progress.csv")))
    assert [float(row["fd_exch_cross_site"]) for row in rows] == [1.0, 1.0]
    exchange = [name for name in rows[1] if name.startswith("fd_exch/")]
    assert "fd_exch/bottleneck" in exchange and all(math.isfinite(float(rows[1][name])) for name in exchange)
    assert float(rows[0]["fd_weight"]) == 0.0 and float(rows[1]["fd_weight"]) > 0


@pytest.mark.slow
def test_one_site_dataset_trains_with_the_fallback(tmp_path):
    home = make_toy_home(tmp_path / "home")  # no sites
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="ExchangeableFeatureDiscrepancy",
                                     device="cpu", seed=0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    rows = list(csv.DictReader(open(folder / "progress.csv")))
    assert [float(row["fd_exch_cross_site"]) for row in rows] == [0.0, 0.0]
    assert "single site" in (folder / "training_log.txt").read_text()
