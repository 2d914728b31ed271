"""``validate_cases(signals=True, ood=scorer)`` writes every case's failure signals, read from
the prediction's own forward passes (the OOD scorer watches them; no second prediction)."""

from __future__ import annotations

from contextlib import contextmanager

import pandas as pd

from medseg_auto.inference.uncertainty import SIGNALS_FILE
from medseg_auto.evaluation.validation import validate_cases

from tests.helpers.known_networks import ThresholdNetwork


class CountingScorer:
    """Stands in for the OOD scorer: counts the passes it watched, scores each case by that count."""

    def __init__(self) -> None:
        self.watched = 0

    @contextmanager
    def watch(self, index, network, views):
        self.watched += 1
        yield

    def score_case(self):
        score, self.watched = float(self.watched), 0
        return {"score": score, "threshold": 9.0, "flagged": False}


def test_validation_writes_signals_and_ood_scores_per_case(tmp_path, preprocessed_syn2d):
    data = preprocessed_syn2d
    plans, config, spec, cache = data.plans, data.config, data.spec, data.cache
    output = tmp_path / "validation"
    validate_cases(ThresholdNetwork(), plans, config, cache, cache.case_ids(), spec, output, mirror_axes=[0, 1],
                   show_progress=False, signals=True, ood=CountingScorer())
    table = pd.read_csv(output / SIGNALS_FILE, dtype={"case_id": str})
    assert sorted(table["case_id"]) == sorted(cache.case_ids())
    assert table["ood_score"].eq(1.0).all()  # one watched prediction pass per case
    for column in ("entropy_image", "entropy_foreground", "soft_dice_deficit", "mirror_disagreement"):
        assert table[column].between(0, 1).all(), column
    assert table["fold_disagreement"].isna().all()  # one model
