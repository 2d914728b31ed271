"""Which signal flags a predicted case as a likely failure, and above which value: the rule a
trained fold carries (``fold_F/failure_rule.json``, written by its final validation, see
:mod:`medseg_auto.evaluation.failure_calibration`) or the fixed default.

Why per model: a fixed threshold does not travel between models. On the BUSI -> STU method
benchmark (13 models, 2d, 100 iterations each) ``mirror_disagreement > 0.3`` flagged none of the
STU failures in 12 models, because a briefly trained model's mirrored views agree even where it
is wrong; the rule each model learned from its own validation cases caught 24-100 % of them
(balanced accuracy 0.80 against 0.51; README, "Which cases will fail").

The file comes with a model folder, so it is read as untrusted input: a signal this version does
not compute or a threshold outside ``[0, 1]`` is ignored with a warning, and the default used.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medseg_auto.inference.uncertainty import DEFAULT_SIGNAL, DEFAULT_THRESHOLD, UNCERTAINTY_SIGNALS
from medseg_auto.utils.logging_setup import get_logger

FAILURE_RULE_FILE = "failure_rule.json"

log = get_logger("inference.failure_rule")


@dataclass(frozen=True)
class FailureRule:
    """Flag a case when its ``signal`` is above ``threshold``. ``source`` says where the rule comes
    from (``default``, ``calibrated``, or ``calibrated (N folds)``); ``details`` what it was
    learned from (cases, failures, AUROC per signal), for the summary."""

    signal: str
    threshold: float
    source: str = "default"
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULE = FailureRule(DEFAULT_SIGNAL, DEFAULT_THRESHOLD, "default",
                           {"why": "fixed default: no failure_rule.json in the model's fold folders"})


def read_failure_rule(path: Path) -> FailureRule | None:
    """The rule in ``path``; None when the file is absent or not a valid rule (warned)."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        signal, threshold = payload["signal"], float(payload["threshold"])
        details = payload.get("details", {})
    except (OSError, ValueError, TypeError, KeyError) as error:
        log.warning("%s: not a failure rule (%s); using the default", path, error)
        return None
    if signal not in UNCERTAINTY_SIGNALS or not 0.0 <= threshold <= 1.0 or not isinstance(details, dict):
        log.warning("%s: signal %r / threshold %r is not a rule this version applies; using the default",
                    path, signal, threshold)
        return None
    return FailureRule(signal, threshold, str(payload.get("source", "calibrated")), details)


def combine_rules(rules: Sequence[FailureRule | None]) -> FailureRule:
    """One rule for an ensemble: the signal most folds chose (ties: the first fold's), with the
    median of those folds' thresholds; the default when no fold has a rule."""
    present = [rule for rule in rules if rule is not None]
    if not present:
        return DEFAULT_RULE
    if len(present) == 1 and len(rules) == 1:
        return present[0]
    counts = Counter(rule.signal for rule in present)
    signal = max(counts, key=lambda name: (counts[name], -[r.signal for r in present].index(name)))
    chosen = [rule for rule in present if rule.signal == signal]
    return FailureRule(signal, float(statistics.median(rule.threshold for rule in chosen)),
                       f"calibrated ({len(chosen)} of {len(rules)} folds)",
                       {"per_fold": [rule.to_json() for rule in present]})


def rule_for_folds(experiment_folder: Path, fold_names: Sequence[str]) -> FailureRule:
    """The failure rule for predicting with the folds ``fold_names`` of ``experiment_folder``."""
    return combine_rules([read_failure_rule(Path(experiment_folder) / name / FAILURE_RULE_FILE)
                          for name in fold_names])
