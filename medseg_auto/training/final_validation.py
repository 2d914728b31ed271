"""The call point for the final validation of a fold (nnU-Net's ``perform_actual_validation``).

After training, every validation case of the fold is predicted with the sliding window at full
resolution, brought back to its original geometry, and scored; per-case metrics go to
``fold_F/validation/summary.json``. The prediction and the metrics belong to the inference
and evaluation stages, so this module only hands a :class:`FinalValidationRequest` to
``medseg_auto.inference.validation.predict_validation_cases(request) -> dict`` (the summary).
While that module does not exist, the step is logged as skipped and the summary says so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medseg_auto.planning.plans import Plans
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

INFERENCE_MODULE = "medseg_auto.inference.validation"
INFERENCE_FUNCTION = "predict_validation_cases"
VALIDATION_FOLDER = "validation"
SUMMARY_FILE = "summary.json"

log = get_logger("training.final_validation")


@dataclass
class FinalValidationRequest:
    """Everything the inference stage needs to validate one trained fold.

    ``network`` is the bare module (eval mode, on ``device``) holding the weights of
    ``checkpoint_name``; its eval forward maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``.
    ``output_folder`` is ``fold_F/validation``; ``mirror_axes`` the axes allowed for test-time
    mirroring (None: none); ``save_probabilities`` is ``--npz``. ``reference_sites``: the sites
    the training batches came from (:mod:`~medseg_auto.training.sampled_sites`); only validation
    cases of these sites form the OOD reference (None: every validation case).
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
    reference_sites: list[str | None] | None = None


def find_predictor() -> Callable[[FinalValidationRequest], dict[str, Any]] | None:
    """``predict_validation_cases`` if the inference stage is installed, else None."""
    try:
        module = importlib.import_module(INFERENCE_MODULE)
    except ModuleNotFoundError as error:
        if error.name is not None and INFERENCE_MODULE.startswith(error.name):
            return None
        raise
    return getattr(module, INFERENCE_FUNCTION, None)


def run_final_validation(request: FinalValidationRequest) -> dict[str, Any]:
    """Predict and score the fold's validation cases; return (and write) the summary.

    Without the inference stage the summary is ``{"skipped": true, "reason": ...}``.
    """
    summary_path = request.output_folder / SUMMARY_FILE
    predictor = find_predictor()
    if predictor is None:
        reason = f"final validation skipped: {INFERENCE_MODULE}.{INFERENCE_FUNCTION} is not available yet"
        log.info(reason)
        summary: dict[str, Any] = {
            "skipped": True, "reason": reason, "checkpoint": request.checkpoint_name,
            "configuration": request.configuration_name, "case_ids": list(request.case_ids),
        }
        write_json_atomic(summary_path, summary)
        return summary
    request.network.eval()
    log.info("final validation of %d cases with %s", len(request.case_ids), request.checkpoint_name)
    summary = predictor(request)
    if not summary_path.is_file():
        write_json_atomic(summary_path, summary)
    return summary
