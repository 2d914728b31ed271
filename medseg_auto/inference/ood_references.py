"""OOD scores at prediction time: the folds' references (made at final validation or by ``predict``) and the scorer.

A fold's reference (``fold_F/ood_reference.json``) holds the feature statistics of the fold's
validation cases. Two ways to make it, one definition (:class:`~.ood.OodReference`):

- at the end of training, the final validation predicts every validation case anyway; hooks on
  that pass record the statistics at no extra forward cost (``validation.validate_cases``);
- ``predict`` creates it when it is missing or stale (a fold trained before this existed, or
  retrained, or scored with another checkpoint: the weights' signature differs): it runs the
  sliding window once, without mirroring (the statistics use the identity view only, so they
  are the same), over at most ``max_cases`` validation cases of the fold, read from the
  preprocessed training cache (evenly spread over the sorted case ids). Fold ``all`` has no
  held-out cases, so its reference uses training cases and its threshold is optimistic.

Either way only validation cases of the sites the fold trained on count
(:mod:`~medseg_auto.training.sampled_sites`): with ``TrainOnSites --train-sites busi`` the
fold's STU validation cases are out of distribution and must not define "normal".
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.inference.feature_statistics import (
    DEFAULT_TAPS, CaseFeatureRecorder, FeatureStatistics, has_taps, tap_signature,
)
from medseg_auto.inference.ood import DEFAULT_PERCENTILE, MIN_REFERENCE_CASES, OOD_REFERENCE_FILE, OodReference
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.inference.sliding_window import predict_logits
from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.splits import SPLIT_FILE, fold_cases, load_or_create_splits
from medseg_auto.training.sampled_sites import fold_training_sites, in_sites
from medseg_auto.utils.atomic import read_json
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("inference.ood")

MAX_REFERENCE_CASES = 200


def save_reference(network: nn.Module, vectors: dict[str, np.ndarray], path: Path, source: str,
                   taps: Sequence[str] = DEFAULT_TAPS,
                   training_sites: Sequence[str | None] | None = None) -> OodReference | None:
    """Build the reference from per-case vectors and write it; None (with a warning) when there
    are too few cases or the file cannot be written."""
    if len(vectors) < MIN_REFERENCE_CASES:
        log.warning("OOD reference not made: %d case(s), at least %d are needed (%s)", len(vectors),
                    MIN_REFERENCE_CASES, path)
        return None
    cases = sorted(vectors)
    reference = OodReference(list(taps), cases, np.stack([vectors[c] for c in cases]), tap_signature(network, taps),
                             source, training_sites=None if training_sites is None else list(training_sites))
    try:
        reference.save(path)
    except OSError as error:
        log.warning("%s: cannot write the OOD reference (%s); it is used for this run only", path, error)
    log.info("OOD reference of %d cases -> %s (threshold at the %gth percentile: %.3f)", len(cases), path,
             DEFAULT_PERCENTILE, reference.threshold())
    return reference


def case_statistics(network: nn.Module, data: np.ndarray, config: ConfigurationPlan, device: torch.device,
                    taps: Sequence[str] = DEFAULT_TAPS, step_size: float = 0.5, use_autocast: bool = False) -> np.ndarray:
    """The statistics vector of one preprocessed case ``data (C, Z, Y, X)`` (one unmirrored sliding window)."""
    with FeatureStatistics(network, taps, views=1) as statistics:
        predict_logits(network, data, config.patch_size, config.is_2d, None, step_size, device, use_autocast)
        return statistics.vector()


def reference_case_ids(fold_folder: Path, preprocessed_dataset_folder: Path, cache: PreprocessedCache,
                       max_cases: int = MAX_REFERENCE_CASES) -> list[str]:
    """The fold's reference cases (:func:`reference_cases_and_sites`)."""
    return reference_cases_and_sites(fold_folder, preprocessed_dataset_folder, cache, max_cases)[0]


def reference_cases_and_sites(fold_folder: Path, preprocessed_dataset_folder: Path, cache: PreprocessedCache,
                              max_cases: int = MAX_REFERENCE_CASES) -> tuple[list[str], list[str | None]]:
    """``(cases, training sites)``: the fold's validation cases of the sites it trained on, at
    most ``max_cases`` of them, evenly spread, from ``fold_<tag>/split.json`` for a run with an
    explicit split, else from the dataset's ``splits.json``. Fold ``all`` (no validation cases)
    uses its training cases."""
    own_split = fold_folder / SPLIT_FILE
    if own_split.is_file():
        payload = read_json(own_split)
        train_ids, val_ids = list(payload.get("train", [])), list(payload.get("val", []))
    else:
        fold = fold_folder.name[len("fold_"):]
        train_ids, val_ids = fold_cases(load_or_create_splits(preprocessed_dataset_folder, cache.case_ids()), fold)
    available = set(cache.case_ids())
    train_ids = [case for case in train_ids if case in available]
    sites = {case: cache.load_properties(case).site for case in available}
    trained_sites = fold_training_sites(fold_folder, train_ids, sites)
    cases = sorted(in_sites([case for case in (val_ids or train_ids) if case in available], sites, trained_sites))
    if len(cases) > max_cases:
        cases = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, max_cases).round()]
    return cases, trained_sites


def load_or_create_reference(
    network: nn.Module, fold_folder: Path, config: ConfigurationPlan, preprocessed_dataset_folder: Path,
    device: torch.device, use_autocast: bool = False, max_cases: int = MAX_REFERENCE_CASES,
    taps: Sequence[str] = DEFAULT_TAPS,
) -> OodReference | None:
    """The fold's reference, made from the training cache if missing or stale; None (with a
    warning) where none can be made (a network without taps, no cache, too few cases)."""
    if not has_taps(network, taps):
        log.warning("%s: the network has no feature taps %s; no OOD score", fold_folder, list(taps))
        return None
    path = fold_folder / OOD_REFERENCE_FILE
    signature = tap_signature(network, taps)
    if path.is_file():
        try:
            reference = OodReference.load(path)
        except MedsegError as error:
            log.warning("%s; recomputing it", error)
        else:
            if reference.signature == signature and reference.taps == list(taps):
                return reference
            log.info("%s was made with other weights; recomputing it", path)
    cache = PreprocessedCache(preprocessed_dataset_folder / config.data_identifier)
    try:
        cases, trained_sites = reference_cases_and_sites(fold_folder, preprocessed_dataset_folder, cache, max_cases)
    except MedsegError as error:
        log.warning("no OOD reference for %s: %s", fold_folder, error)
        return None
    if not cases:
        log.warning("no OOD reference for %s: no preprocessed cases in %s", fold_folder, cache.folder)
        return None
    log.info("OOD reference for %s: feature statistics of %d validation case(s) (once)", fold_folder.name, len(cases))
    vectors = {}
    for case_id in cases:
        data, _, _ = cache.load_case(case_id, mmap=False)
        vectors[case_id] = case_statistics(network, data, config, device, taps, use_autocast=use_autocast)
    return save_reference(network, vectors, path, "predict (from the training cache)", taps, trained_sites)


class OodScorer:
    """Scores each predicted case against the references of the models that predicted it.

    ``references[i]`` belongs to ``names[i]`` (``None``: that model has no reference and is left
    out). Use :attr:`recorder` while predicting a case, then :meth:`score_case`.
    """

    def __init__(self, references: Sequence[OodReference | None], names: Sequence[str],
                 percentile: float = DEFAULT_PERCENTILE) -> None:
        if not any(reference is not None for reference in references):
            raise MedsegError("no model has an OOD reference")
        taps = {tuple(reference.taps) for reference in references if reference is not None}
        if len(taps) != 1:
            raise MedsegError(f"the folds' OOD references use different feature taps: {sorted(taps)}")
        self.references = list(references)
        self.names = list(names)
        self.percentile = float(percentile)
        self.recorder = CaseFeatureRecorder(list(taps.pop()))
        self.thresholds = [None if r is None else r.threshold(self.percentile) for r in self.references]

    @contextmanager
    def watch(self, index: int, network: nn.Module, views: int) -> Iterator[None]:
        with self.recorder.watch(index, network, views):
            yield

    def score_case(self) -> dict[str, Any] | None:
        """``{score, threshold, flagged, per_fold}`` of the case just predicted (None: nothing recorded)."""
        vectors = self.recorder.take()
        distances, thresholds, per_fold = [], [], {}
        for index, vector in sorted(vectors.items()):
            reference = self.references[index]
            if reference is None:
                continue
            distance = float(reference.distance(vector))
            distances.append(distance)
            thresholds.append(self.thresholds[index])
            per_fold[self.names[index]] = round(distance, 4)
        if not distances:
            return None
        score, threshold = float(np.mean(distances)), float(np.mean(thresholds))
        return {"score": round(score, 4), "threshold": round(threshold, 4), "flagged": bool(score > threshold),
                "per_fold": per_fold}


def make_scorer(models: Sequence[LoadedModel], experiment_folder: Path, preprocessed_dataset_folder: Path,
                device: torch.device, use_autocast: bool = False,
                percentile: float = DEFAULT_PERCENTILE) -> OodScorer | None:
    """An :class:`OodScorer` for a fold ensemble (each fold ``experiment_folder/<model.name>``),
    its references loaded or made; None (with a warning) when no fold has one."""
    references = []
    for model in models:
        model.network.to(device).eval()
        references.append(load_or_create_reference(model.network, experiment_folder / model.name, model.config,
                                                   preprocessed_dataset_folder, device, use_autocast))
    if all(reference is None for reference in references):
        # info, not a second warning: each fold already warned why it has no reference
        log.debug("no OOD reference for %s; predicting without OOD scores", experiment_folder)
        return None
    return OodScorer(references, [model.name for model in models], percentile)
