"""Final validation of a training run: predict every validation case of the fold at full
resolution, export it in the case's original geometry, and score it against the raw label
file with the same per-case function as ``medseg-auto evaluate``, so both give equal numbers.

Cases come from the preprocessed cache (already through the shared pipeline), which avoids
reading and preprocessing the raw images a second time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import read_segmentation
from medseg_auto.evaluation.evaluate import EvaluationResult, summarise, tabulate
from medseg_auto.evaluation.metrics import evaluate_arrays
from medseg_auto.evaluation.writing import write_evaluation
from medseg_auto.inference.export import export_prediction
from medseg_auto.inference.predict import LoadedModel, PredictionOptions, predict_preprocessed
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("inference.validation")


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
) -> dict:
    """Predict and score ``case_ids``; write ``output_folder/{CASE.ext, metrics.csv,
    summary.json, summary.md}`` and return the summary dict."""
    output_folder.mkdir(parents=True, exist_ok=True)
    model = LoadedModel(network, plans, config, mirror_axes, "validation")
    options = PredictionOptions(step_size=step_size, device=str(device), show_progress=False)
    device = torch.device(device)
    rows_by_case: dict[str, list[dict]] = {}
    labels = [value for value in spec.label_values if value != 0]
    for case_id in tqdm(case_ids, desc="final validation", unit="case", disable=not show_progress):
        data, _, properties = cache.load_case(case_id, mmap=False)
        probabilities = predict_preprocessed([model], data, options, device)
        ending = properties.image_geometry.file_ending
        prediction = export_prediction(probabilities, properties, plans, config,
                                       output_folder / f"{case_id}{ending}", save_probabilities)
        reference, geometry = read_segmentation(spec.folder / "labelsTr" / f"{case_id}{spec.file_ending}")
        rows_by_case[case_id] = evaluate_arrays(prediction, reference, geometry.spacing, labels, geometry.is_2d)
    sites = {case: spec.sites[case] for case in case_ids if case in spec.sites} or None
    table = tabulate(rows_by_case, sites)
    names = {value: name for name, value in spec.labels.items()}
    summary = summarise(table, labels, names, per_site=bool(sites))
    write_evaluation(EvaluationResult(table, summary, output_folder, spec.folder / "labelsTr"), output_folder)
    log.info("final validation of %d case(s): mean foreground Dice %s", len(case_ids),
             summary.get("foreground_mean", {}).get("dice"))
    return summary


def predict_validation_cases(request) -> dict:
    """Entry point of the training's final validation (``training.final_validation``): unpack
    its :class:`FinalValidationRequest` and validate with :func:`validate_cases`."""
    plans = request.plans
    config = plans.configuration(request.configuration_name)
    if request.raw_dataset_folder is None:
        raise FileNotFoundError("the raw dataset folder is needed to score the validation cases")
    spec = DatasetSpec.load(request.raw_dataset_folder)
    cache = PreprocessedCache(Path(request.preprocessed_dataset_folder) / config.data_identifier)
    return validate_cases(
        request.network, plans, config, cache, list(request.case_ids), spec, Path(request.output_folder),
        request.mirror_axes, request.device, save_probabilities=request.save_probabilities,
    )
