"""Predicting a folder of images with one model or a fold ensemble.

Per case: read -> the training preprocessing (same function) -> sliding window with mirroring
for every model -> average the softmax over models -> export (resample back, uncrop,
untranspose, write with the input's geometry). Reading of the next case runs in a thread and
export in worker processes, so the device keeps computing. A case that fails to read or
predict is reported and skipped; the others finish. Outputs are written atomically, and an
existing output is skipped unless ``overwrite``, so an interrupted run resumes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medseg_auto.dataset.case_loader import load_case_images
from medseg_auto.errors import MedsegError
from medseg_auto.inference.export import export_prediction, logits_to_probabilities
from medseg_auto.inference.feature_statistics import views_per_window
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.dataset.inputs import find_input_cases
from medseg_auto.inference.input_checks import check_case_dimension
from medseg_auto.inference.output_guard import (
    CaseLedger, ledger_released, refuse_writing_over_inputs, remove_stale_temporaries,
)
from medseg_auto.inference.sliding_window import predict_logits
from medseg_auto.paths import safe_child
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.case_pipeline import preprocess_case
from medseg_auto.utils.cpu_features import cpu_has_native_bf16
from medseg_auto.utils.devices import check_device_available
from medseg_auto.utils.disk import is_disk_full
from medseg_auto.utils.logging_setup import get_logger

if TYPE_CHECKING:
    from medseg_auto.inference.fda_donors import FdaAdapter
    from medseg_auto.inference.uncertainty import CaseSignals

log = get_logger("inference")


@dataclass
class PredictionOptions:
    step_size: float = 0.5
    use_mirroring: bool = True
    save_probabilities: bool = False
    overwrite: bool = False
    device: str = "auto"
    use_autocast: bool | None = None
    export_workers: int = 1
    show_progress: bool = True
    uncertainty: bool = False  # per-case uncertainty signals (inference/uncertainty.py) in report.uncertainty
    num_parts: int = 1  # predict only part ``part_id`` of the sorted cases (see .sharding)
    part_id: int = 0


@dataclass
class PredictionReport:
    predicted: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds_per_case: dict[str, float] = field(default_factory=dict)
    ood: dict[str, dict[str, Any]] = field(default_factory=dict)
    fda_donors: dict[str, list[str]] = field(default_factory=dict)
    uncertainty: dict[str, dict[str, float]] = field(default_factory=dict)


class FeatureWatcher(Protocol):
    """Something that records feature statistics while model ``index`` predicts (see :mod:`.ood`)."""

    def watch(self, index: int, network: nn.Module, views: int) -> ContextManager[None]: ...


class CaseScorer(FeatureWatcher, Protocol):
    """A :class:`FeatureWatcher` that scores the case it watched: the OOD scorer
    (:class:`~medseg_auto.inference.ood_references.OodScorer`). A protocol, so this module
    need not import the scorer's module (which imports :class:`LoadedModel`)."""

    def score_case(self) -> dict[str, Any] | None: ...


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; enables cudnn benchmark on CUDA."""
    check_device_available(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return chosen


def default_autocast(device: torch.device) -> bool:
    """Half precision by default where it is fast: fp16 on CUDA (as nnU-Net), bf16 on a CPU with
    native bf16. Measured on this project's AVX512-BF16 CPU, Hippocampus 3d_fullres with mirroring,
    one thread: 1.9 s per case in bf16 against 4.9 s in float32 (``benchmarks/predict_speed.py``
    has the end-to-end numbers); ``--fp32`` turns it off."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def predict_preprocessed(
    models: list[LoadedModel], data: np.ndarray, options: PredictionOptions, device: torch.device,
    recorder: FeatureWatcher | None = None,
) -> np.ndarray:
    """Averaged softmax ``(K, z, y, x)`` of every model for one preprocessed ``data (C, z, y, x)``."""
    return predict_images(models, [data], options, device, recorder)


def predict_images(
    models: list[LoadedModel], images: list[np.ndarray], options: PredictionOptions, device: torch.device,
    recorder: FeatureWatcher | None = None, signals: CaseSignals | None = None,
) -> np.ndarray:
    """Softmax ``(K, z, y, x)`` averaged over every model and every image of one case (the FDA
    views; all ``(C, z, y, x)``). ``recorder`` (OOD feature statistics) watches each model's
    forward passes through hooks; it reads activations and leaves the prediction unchanged.
    ``signals`` collects each model's softmax and its mirrored views' votes (uncertainty signals)."""
    autocast = default_autocast(device) if options.use_autocast is None else options.use_autocast
    total: np.ndarray | None = None
    for index, model in enumerate(models):
        mirror_axes = model.mirror_axes if options.use_mirroring else None
        watch = recorder.watch(index, model.network, views_per_window(mirror_axes, True)) if recorder else nullcontext()
        with watch:
            for image in images:
                votes = None
                logits = predict_logits(
                    model.network, image, model.config.patch_size, model.config.is_2d, mirror_axes,
                    options.step_size, device, autocast, return_votes=signals is not None and bool(mirror_axes),
                )
                if isinstance(logits, tuple):
                    logits, votes = logits
                probabilities = logits_to_probabilities(logits)
                if signals is not None:
                    signals.add(index, probabilities, votes)
                total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / (len(models) * len(images))


def predict_folder(
    input_path: Path, output_folder: Path, models: list[LoadedModel], file_ending: str | None,
    options: PredictionOptions, postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    fda: FdaAdapter | None = None, ood: CaseScorer | None = None,
) -> PredictionReport:
    """Predict every case of ``input_path`` into ``output_folder``; return what happened.

    ``file_ending`` forces the output format; ``None`` keeps each input's own format. With
    ``fda`` every case is predicted once per style donor and the softmax averaged (the donors
    go to ``report.fda_donors``); with ``ood`` every case gets an OOD score (``report.ood``).
    """
    if not models:
        raise MedsegError("no trained model to predict with")
    plans, config = models[0].plans, models[0].config
    device = resolve_device(options.device)
    for model in models:
        model.network.to(device).eval()
    all_cases = find_input_cases(input_path, plans.num_input_channels)
    cases = all_cases
    if options.num_parts > 1:
        from medseg_auto.inference.sharding import Shard

        cases = {case: all_cases[case] for case in Shard(options.num_parts, options.part_id).select(list(all_cases))}
    output_folder.mkdir(parents=True, exist_ok=True)
    targets = {case_id: safe_child(output_folder, f"{case_id}{file_ending or _ending_of(files[0])}")
               for case_id, files in cases.items()}
    refuse_writing_over_inputs([f for files in all_cases.values() for f in files], targets.values())
    remove_stale_temporaries(output_folder)
    ledger = CaseLedger(output_folder)
    report = PredictionReport()
    todo = {}
    for case_id, files in cases.items():
        if not options.overwrite and ledger.is_done(case_id, targets[case_id]):
            report.skipped_existing.append(case_id)
        else:
            todo[case_id] = (files, targets[case_id])
    if report.skipped_existing:
        log.info("%d case(s) already predicted in %s (pass --overwrite to redo)", len(report.skipped_existing), output_folder)
    progress = tqdm(total=len(todo), desc="predict", unit="case", disable=not options.show_progress)
    pending: list[tuple[str, Future]] = []
    with ledger_released(ledger), ThreadPoolExecutor(max_workers=1) as reader, \
            ProcessPoolExecutor(max_workers=max(1, options.export_workers)) as exporter:
        for case_id, loaded, started in _prefetch(reader, todo, plans, config):
            # Claimed only now (few locks held at once); another process may have taken or finished it.
            if not ledger.claim(case_id) or (not options.overwrite and ledger.is_done(case_id, todo[case_id][1])):
                ledger.release(case_id)
                log.info("case %s: being predicted by another process into %s; left to it", case_id, output_folder)
                report.skipped_existing.append(case_id)
                progress.update()
                continue
            try:
                if isinstance(loaded, Exception):
                    raise loaded
                data, properties = loaded
                probabilities = _predict_case(case_id, models, data, options, device, fda, ood, report)
                future = exporter.submit(
                    _export_job, probabilities, properties, plans.to_json(), config.name, todo[case_id][1],
                    options.save_probabilities, postprocess,
                )
                pending.append((case_id, future))
                report.seconds_per_case[case_id] = time.perf_counter() - started
            except (MedsegError, RuntimeError, ValueError, OSError) as error:
                if is_disk_full(error):
                    raise  # every later case would fail the same way: one clear error instead
                ledger.release(case_id)
                report.failed[case_id] = str(error)
                log.error("case %s failed: %s", case_id, error)
            pending = _collect(pending, report, max_pending=2 * max(1, options.export_workers), ledger=ledger, todo=todo)
            progress.update()
        _collect(pending, report, max_pending=0, ledger=ledger, todo=todo)
    progress.close()
    return report


def _predict_case(case_id: str, models: list[LoadedModel], data: np.ndarray, options: PredictionOptions,
                  device: torch.device, fda: FdaAdapter | None, ood: CaseScorer | None,
                  report: PredictionReport) -> np.ndarray:
    """The averaged softmax of one case, with FDA views and OOD score when asked for.

    The OOD score always describes the input image, so it means the same with and without FDA:
    with FDA the network sees only adapted images, so one extra unmirrored pass over the input
    records its statistics (``1 / (donors x views)`` of the FDA cost); the adapted images'
    score comes free from the hooks and is kept as ``score_fda_adapted`` (is FDA moving the
    image towards the training data?).
    """
    signals = _case_signals() if options.uncertainty else None
    if fda is None:
        probabilities = predict_images(models, [data], options, device, ood, signals)
        _record_ood(case_id, ood.score_case() if ood is not None else None, report)
        _record_signals(case_id, signals, probabilities, report)
        return probabilities
    images, donors = fda.adapt(data)
    report.fda_donors[case_id] = donors
    probabilities = predict_images(models, images, options, device, ood, signals)
    _record_signals(case_id, signals, probabilities, report)
    if ood is not None:
        adapted = ood.score_case()
        predict_images(models, [data], replace(options, use_mirroring=False), device, ood)
        entry = ood.score_case()
        if entry is not None and adapted is not None:
            entry["score_fda_adapted"] = adapted["score"]
        _record_ood(case_id, entry, report)
    return probabilities


def _prefetch(reader: ThreadPoolExecutor, todo: dict, plans: Plans, config: ConfigurationPlan) -> Iterator[tuple[str, Any, float]]:
    """Yield ``(case_id, (data, properties) or the exception, start time)``, reading the next
    case in a thread while the current one is predicted."""
    items = list(todo.items())
    future = reader.submit(_read_and_preprocess, items[0], plans, config) if items else None
    for index, (case_id, _) in enumerate(items):
        started = time.perf_counter()
        assert future is not None
        loaded = future.result()
        if index + 1 < len(items):
            future = reader.submit(_read_and_preprocess, items[index + 1], plans, config)
        yield case_id, loaded, started


def _read_and_preprocess(item, plans: Plans, config: ConfigurationPlan):
    case_id, (files, _) = item
    try:
        data, geometry = load_case_images(files, plans.num_input_channels, case_id, convert_channels=True)
        check_case_dimension(case_id, files[0], geometry.dimension, config)
        data, _, properties = preprocess_case(data, None, geometry, plans, config, case_id, sample_locations=False)
        properties.geometry["file_ending"] = _ending_of(files[0])
        return data, properties
    except Exception as error:  # reported per case by the caller
        return error


def _export_job(probabilities, properties, plans_json, configuration, target, save_probabilities, postprocess):
    plans = Plans.from_json(plans_json)
    config = plans.configuration(configuration)
    ending = _ending_of(target)
    properties.geometry["file_ending"] = ending
    segmentation = export_prediction(probabilities, properties, plans, config, Path(target), save_probabilities, postprocess)
    return segmentation.shape


def _collect(pending: list[tuple[str, Future]], report: PredictionReport, max_pending: int,
             ledger: CaseLedger | None = None, todo: dict | None = None) -> list[tuple[str, Future]]:
    """Record finished exports; wait for the oldest while more than ``max_pending`` are queued
    (bounds the memory held by probabilities waiting for export)."""
    remaining = []
    for case_id, future in pending:
        if future.done():
            _record_export(case_id, future, report, ledger, todo)
        else:
            remaining.append((case_id, future))
    while len(remaining) > max_pending:
        case_id, future = remaining.pop(0)
        _record_export(case_id, future, report, ledger, todo)
    return remaining


def _record_export(case_id: str, future: Future, report: PredictionReport, ledger: CaseLedger | None = None,
                   todo: dict | None = None) -> None:
    try:
        future.result()
        if ledger is not None and todo is not None:
            ledger.mark_done(case_id, todo[case_id][1])
        report.predicted.append(case_id)
    except Exception as error:
        if is_disk_full(error):
            raise
        report.failed[case_id] = f"export failed: {error}"
        log.error("case %s: export failed: %s", case_id, error)
    finally:
        if ledger is not None:
            ledger.release(case_id)


def _record_ood(case_id: str, score: dict[str, Any] | None, report: PredictionReport) -> None:
    if score is None:
        return
    report.ood[case_id] = score
    if score["flagged"]:
        log.warning("case %s looks out of distribution: OOD score %.2f above the threshold %.2f (learned from "
                    "the cross-validation cases); check its segmentation", case_id, score["score"], score["threshold"])


def _case_signals() -> CaseSignals:
    from medseg_auto.inference.uncertainty import CaseSignals

    return CaseSignals()


def _record_signals(case_id: str, signals: CaseSignals | None, probabilities: np.ndarray,
                    report: PredictionReport) -> None:
    if signals is not None:
        report.uncertainty[case_id] = signals.finish(probabilities)


def _ending_of(path: Path) -> str:
    from medseg_auto.dataset.image_io import file_ending_of

    return file_ending_of(path)
