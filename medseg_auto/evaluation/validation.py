"""The final validation of a trained fold (nnU-Net's ``perform_actual_validation``): predict
every validation case at full resolution, export it in the case's original geometry, and score
it against the raw label file with the same per-case function as ``medseg-auto evaluate``, so
both give equal numbers. Per-case metrics go to ``fold_F/validation/{metrics.csv, summary.json,
summary.md}``.

Cases come from the preprocessed cache (already through the shared pipeline), which avoids
reading and preprocessing the raw images a second time. :func:`run_final_validation` is the
last step of :func:`medseg_auto.run.train.train_fold`; :func:`validate_cases` also scores the
experiments' test cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import read_segmentation
from medseg_auto.errors import MedsegError
from medseg_auto.evaluation.evaluate import EvaluationResult, summarise, tabulate
from medseg_auto.evaluation.failure_calibration import calibrate_validation_folder
from medseg_auto.evaluation.metrics import evaluate_arrays
from medseg_auto.evaluation.writing import write_evaluation
from medseg_auto.inference.export import export_prediction
from medseg_auto.inference.feature_statistics import CaseFeatureRecorder, has_taps
from medseg_auto.inference.ood import OOD_REFERENCE_FILE
from medseg_auto.inference.ood_references import save_reference
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.inference.predict import CaseScorer, PredictionOptions, predict_images
from medseg_auto.inference.uncertainty import SIGNALS_FILE, CaseSignals, write_signal_table
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

VALIDATION_FOLDER = "validation"
SUMMARY_FILE = "summary.json"

log = get_logger("evaluation.validation")


@dataclass
class FinalValidationRequest:
    """Everything needed to validate one trained fold.

    ``network`` is the bare module (on ``device``) holding the weights of ``checkpoint_name``;
    its eval forward maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``. ``output_folder`` is
    ``fold_F/validation``; ``mirror_axes`` the axes allowed for test-time mirroring (None: none);
    ``save_probabilities`` is ``--npz``. ``reference_sites``: the sites the training batches
    came from (:mod:`~medseg_auto.training.sampled_sites`); only validation cases of these sites
    form the OOD reference (None: every validation case).
    """

    fold_folder: Path
    output_folder: Path
    network: nn.Module
    plans: Plans
    configuration_name: str
    case_ids: list[str]
    preprocessed_dataset_folder: Path
    raw_dataset_folder: Path | None
    device: torch.device
    mirror_axes: list[int] | None
    save_probabilities: bool = False
    checkpoint_name: str = "checkpoint_final.pt"
    show_progress: bool = True
    reference_sites: list[str | None] | None = None


def run_final_validation(request: FinalValidationRequest) -> dict[str, Any]:
    """Predict and score the fold's validation cases with :func:`validate_cases` (the OOD
    reference and the failure rule learned from the cases' signals, :mod:`.failure_calibration`,
    written beside the checkpoints); return (and write) the summary."""
    summary_path = request.output_folder / SUMMARY_FILE
    request.network.eval()
    log.info("final validation of %d cases with %s", len(request.case_ids), request.checkpoint_name)
    if request.raw_dataset_folder is None:
        raise FileNotFoundError("the raw dataset folder is needed to score the validation cases")
    config = request.plans.configuration(request.configuration_name)
    spec = DatasetSpec.load(request.raw_dataset_folder)
    cache = PreprocessedCache(Path(request.preprocessed_dataset_folder) / config.data_identifier)
    summary = validate_cases(
        request.network, request.plans, config, cache, list(request.case_ids), spec, Path(request.output_folder),
        request.mirror_axes, request.device, save_probabilities=request.save_probabilities,
        show_progress=request.show_progress, ood_reference_file=Path(request.fold_folder) / OOD_REFERENCE_FILE,
        ood_reference_sites=request.reference_sites, signals=True,
    )
    try:  # a by-product, like the OOD reference: predict falls back to the default rule without it
        calibrate_validation_folder(Path(request.output_folder), Path(request.fold_folder))
    except (OSError, ValueError, KeyError) as error:
        log.warning("failure rule not written to %s: %s", request.fold_folder, error)
    if not summary_path.is_file():
        write_json_atomic(summary_path, summary)
    return summary


def validate_cases(
    network: nn.Module,
    plans: Plans,
    config: ConfigurationPlan,
    cache: PreprocessedCache,
    case_ids: list[str],
    spec: DatasetSpec,
    output_folder: Path,
    mirror_axes: list[int] | None,
    device: torch.device | str = "cpu",
    step_size: float = 0.5,
    save_probabilities: bool = False,
    show_progress: bool = True,
    ood_reference_file: Path | None = None,
    ood_reference_sites: list[str | None] | None = None,
    signals: bool = False,
    ood: CaseScorer | None = None,
) -> dict:
    """Predict and score ``case_ids``; write ``output_folder/{CASE.ext, metrics.csv,
    summary.json, summary.md}`` and return the summary dict.

    With ``ood_reference_file``, hooks record the cases' early-layer feature statistics during
    the same prediction pass and the OOD reference (:mod:`.ood`) is written there, from the cases
    of ``ood_reference_sites`` only (the sites the model trained on; None: every case).

    With ``signals`` every case's failure signals (:mod:`.uncertainty`: softmax entropy, mirror
    disagreement, ...; and with ``ood``, a scorer watching the same passes, its OOD score) are
    read from the same forward passes and written to ``output_folder/``:data:`SIGNALS_FILE`."""
    if ood is not None and ood_reference_file is not None:
        raise ValueError("validate_cases: record an OOD reference or score against one, not both")
    output_folder.mkdir(parents=True, exist_ok=True)
    model = LoadedModel(network, plans, config, mirror_axes, "validation")
    options = PredictionOptions(step_size=step_size, device=str(device), show_progress=False)
    device = torch.device(device)
    rows_by_case: dict[str, list[dict]] = {}
    labels = [value for value in spec.label_values if value != 0]
    recorder = CaseFeatureRecorder() if ood_reference_file is not None and has_taps(network) else None
    collector = CaseSignals() if signals else None
    case_signals: dict[str, dict[str, float]] = {}
    ood_scores: dict[str, dict] = {}
    statistics: dict[str, np.ndarray] = {}
    for case_id in tqdm(case_ids, desc="final validation", unit="case", disable=not show_progress):
        data, _, properties = cache.load_case(case_id, mmap=False)
        probabilities = predict_images([model], [data], options, device, ood or recorder, collector)
        if collector is not None:
            case_signals[case_id] = collector.finish(probabilities)
        if ood is not None:
            ood_scores[case_id] = ood.score_case() or {}
        if recorder is not None:
            recorded = recorder.take()
            if 0 in recorded and (ood_reference_sites is None or properties.site in ood_reference_sites):
                statistics[case_id] = recorded[0]
        ending = properties.image_geometry.file_ending
        prediction = export_prediction(probabilities, properties, plans, config,
                                       output_folder / f"{case_id}{ending}", save_probabilities)
        reference, geometry = read_segmentation(spec.folder / "labelsTr" / f"{case_id}{spec.file_ending}")
        rows_by_case[case_id] = evaluate_arrays(prediction, reference, geometry.spacing, labels, geometry.is_2d)
    if recorder is not None and ood_reference_file is not None:
        try:  # a by-product: predict makes the reference itself if this fails
            save_reference(network, statistics, ood_reference_file, "final validation",
                           training_sites=ood_reference_sites)
        except (MedsegError, ValueError, ArithmeticError, np.linalg.LinAlgError) as error:
            log.warning("OOD reference not written to %s: %s", ood_reference_file, error)
    if collector is not None:
        write_signal_table(output_folder / SIGNALS_FILE, ood_scores, case_signals)
    sites = {case: spec.sites[case] for case in case_ids if case in spec.sites} or None
    table = tabulate(rows_by_case, sites)
    names = {value: name for name, value in spec.labels.items()}
    summary = summarise(table, labels, names, per_site=bool(sites))
    write_evaluation(EvaluationResult(table, summary, output_folder, spec.folder / "labelsTr"), output_folder)
    log.info("final validation of %d case(s): mean foreground Dice %s", len(case_ids),
             summary.get("foreground_mean", {}).get("dice"))
    return summary
