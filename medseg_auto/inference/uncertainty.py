"""Per-case uncertainty signals that the prediction already holds: softmax entropy, and the
disagreement between mirrored views and between the folds of an ensemble.

Why: a user wants to know which cases will fail. The feature-statistics OOD score
(:mod:`.ood`) says whether an image *looks* unlike the training data, not whether its
segmentation is wrong; measured on external breast-ultrasound sites it predicted failure
(Dice < 0.5) with AUROC 0.56-0.57 only. The signals here read the model's own output, at the
cost of a few array operations per case (the votes of the mirrored views are stitched by the
same sliding window as the logits, :func:`~.sliding_window.predict_logits` ``return_votes``).
Which one predicts failure best is measured with :mod:`medseg_auto.evaluation.failure_prediction`
(README, "Which cases will fail"); :data:`DEFAULT_SIGNAL` is the winner (it needs mirroring: with
``--no-mirroring`` no failure score is given, the other signals still are).

Every signal is a number per case, larger = more likely to fail, in ``[0, 1]``:

- ``entropy_image``: mean normalised softmax entropy ``H(p) / log K`` over all voxels;
- ``entropy_foreground``: the same over the voxels predicted as foreground (1 when none is:
  nothing to be confident about);
- ``soft_dice_deficit``: ``1 - 2 sum(p_k [y = k]) / (sum p_k + sum [y = k])`` averaged over the
  foreground classes, with ``y`` the predicted labels: one minus the Dice the model expects of
  its own segmentation (0 where it is certain, 1 where its foreground has no probability mass);
  a class neither predicted nor given probability counts 0;
- ``mirror_disagreement``: ``1 - `` the pooled Dice between each mirrored view's argmax and the
  final labels, ``2 sum_{y=k} v_k / (sum v_k + |y = k|)``, with ``v_k`` the share of views voting
  ``k`` (needs mirroring);
- ``fold_disagreement``: the same over the folds of an ensemble (needs two or more models).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

UNCERTAINTY_SIGNALS = ("entropy_image", "entropy_foreground", "soft_dice_deficit", "mirror_disagreement",
                       "fold_disagreement")
# Measured (README, "Which cases will fail"): for Dice < 0.5 on 40 BUSI validation and 42 STU cases,
# AUROC 0.91 (mirror_disagreement), 0.84 (entropy_foreground), 0.82 (soft_dice_deficit), 0.31 (the
# feature distance). Above 0.3 the mirrored views disagree on more than 30 % of the pooled foreground.
DEFAULT_SIGNAL = "mirror_disagreement"
DEFAULT_THRESHOLD = 0.3  # flag a case as a likely failure above this value of DEFAULT_SIGNAL
FAILURE_DICE = 0.5  # a case "fails" below this Dice (the and the evaluation's definition)
#: Per-case failure signals beside a scored test folder's ``metrics.csv`` (experiments' cells):
#: ``case_id``, ``ood_score`` (the feature distance, empty without a reference) and every signal.
SIGNALS_FILE = "failure_signals.csv"
SIGNAL_COLUMNS = ("ood_score", *UNCERTAINTY_SIGNALS)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``H(p) / log K`` per voxel, in ``[0, 1]``, for ``probabilities (K, *spatial)`` -> ``(*spatial)``."""
    classes = probabilities.shape[0]
    clipped = np.clip(probabilities, 1e-8, 1.0)
    entropy = -(probabilities * np.log(clipped)).sum(axis=0)
    return entropy / np.log(max(classes, 2))


def _dice_deficit(labels: np.ndarray, weights: np.ndarray) -> float:
    """``1 - mean_k 2 sum_{labels=k} w_k / (sum w_k + |labels = k|)`` over foreground classes
    ``k >= 1`` of ``weights (K, *spatial)``; a class with neither labels nor weight counts 0."""
    deficits = []
    for k in range(1, weights.shape[0]):
        predicted = labels == k
        overlap = float(weights[k][predicted].sum())
        denominator = float(weights[k].sum()) + float(predicted.sum())
        deficits.append(0.0 if denominator <= 1e-6 else 1.0 - 2.0 * overlap / denominator)
    return float(np.mean(deficits)) if deficits else 0.0


@dataclass
class CaseSignals:
    """Collects one case's votes while :func:`~.predict.predict_images` runs, then :meth:`finish`.

    ``add(model_index, probabilities, mirror_votes)`` once per model and image, models in order:
    the softmax ``(K, *spatial)`` of that pass and its mirrored views' votes (None without
    mirroring). Only one model's summed softmax is held at a time; earlier models are kept as
    their argmax votes, so an ensemble costs one extra ``(K, *spatial)`` array, not one per fold.
    """

    mirror_votes: np.ndarray | None = None
    mirror_passes: int = 0
    fold_votes: np.ndarray | None = None
    models: int = 0
    _index: int | None = None
    _model_sum: np.ndarray | None = None

    def add(self, model_index: int, probabilities: np.ndarray, mirror_votes: torch.Tensor | np.ndarray | None) -> None:
        if mirror_votes is not None:
            votes = np.asarray(mirror_votes, dtype=np.float32)
            self.mirror_votes = votes if self.mirror_votes is None else self.mirror_votes + votes
            self.mirror_passes += 1
        if model_index != self._index:
            self._close_model()
            self._index = model_index
        self._model_sum = probabilities.copy() if self._model_sum is None else self._model_sum + probabilities

    def _close_model(self) -> None:
        if self._model_sum is None:
            return
        votes = one_hot(self._model_sum.argmax(axis=0), self._model_sum.shape[0])
        self.fold_votes = votes if self.fold_votes is None else self.fold_votes + votes
        self.models += 1
        self._model_sum = None

    def finish(self, probabilities: np.ndarray) -> dict[str, float]:
        """The signals (see the module docstring) of the case whose final softmax is ``probabilities``;
        then ready for the next case."""
        self._close_model()
        labels = probabilities.argmax(axis=0)
        entropy = normalised_entropy(probabilities)
        foreground = labels > 0
        signals = {
            "entropy_image": float(entropy.mean()),
            "entropy_foreground": float(entropy[foreground].mean()) if foreground.any() else 1.0,
            "soft_dice_deficit": _dice_deficit(labels, probabilities),
        }
        if self.mirror_votes is not None and self.mirror_passes:
            signals["mirror_disagreement"] = _dice_deficit(labels, self.mirror_votes / self.mirror_passes)
        if self.fold_votes is not None and self.models > 1:
            signals["fold_disagreement"] = _dice_deficit(labels, self.fold_votes / self.models)
        self.mirror_votes, self.mirror_passes, self.fold_votes, self.models = None, 0, None, 0
        self._index, self._model_sum = None, None
        return {name: round(value, 5) for name, value in signals.items()}


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """``labels (*spatial)`` -> float32 ``(K, *spatial)``."""
    return np.moveaxis(np.eye(classes, dtype=np.float32)[labels], -1, 0)


def case_entries(ood: dict[str, dict[str, Any]], signals: dict[str, dict[str, float]],
                 signal: str = DEFAULT_SIGNAL, threshold: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, Any]]:
    """Per case: the OOD entry (``score``, ``threshold``, ``flagged``: the feature distance, as
    before), ``signals`` (every uncertainty signal) and ``failure``: ``{signal, value,
    threshold, flagged}`` of the failure score, ``flagged`` when ``value > threshold``."""
    entries: dict[str, dict[str, Any]] = {}
    for case in sorted(set(ood) | set(signals)):
        entry = dict(ood.get(case, {}))
        case_signals = dict(signals.get(case, {}))
        if case_signals:
            entry["signals"] = case_signals
        if signal in case_signals:
            value = float(case_signals[signal])
            entry["failure"] = {"signal": signal, "value": value, "threshold": threshold, "flagged": value > threshold}
        entries[case] = entry
    return entries


def write_signal_table(path: Path, ood: dict[str, dict[str, Any]], signals: dict[str, dict[str, float]]) -> None:
    """Write :data:`SIGNALS_FILE` at ``path`` (atomically): one row per case of ``ood`` (OOD
    entries, their ``score``) or ``signals`` (:meth:`CaseSignals.finish` results); a signal a
    case lacks (no mirroring, one model, no OOD reference) is left empty."""
    from medseg_auto.utils.atomic import atomic_path

    with atomic_path(path, suffix=".csv") as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", *SIGNAL_COLUMNS])
        for case_id in sorted(set(ood) | set(signals)):
            values = {"ood_score": ood.get(case_id, {}).get("score"), **signals.get(case_id, {})}
            writer.writerow([case_id, *["" if values.get(name) is None else values[name] for name in SIGNAL_COLUMNS]])
