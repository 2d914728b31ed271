"""The call point for the final validation of a fold (nnU-Net's ``perform_actual_validation``).

After training, every validation case of the fold is predicted with the sliding window at full
resolution, brought back to its original geometry, and scored; per-case metrics go to
``fold_F/validation/summary.json``. The prediction and the metrics belong to the inference
and evaluation stages, so this module only hands a :class:`FinalValidationRequest` to
:func:`medseg_auto.inference.validation.predict_validation_cases` (it returns the summary).

That call is the one import from training up into inference (``tests/test_import_graph.py``
lists it): nnU-Net's recipe validates a fold as the last step of training, so ``train``
needs the predictor. It is imported inside the function, so importing the training stage
does not load the inference and evaluation stages (and their dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg_auto.planning.plans import Plans
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

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
    show_progress: bool = True
    reference_sites: list[str | None] | None = None


def run_final_validation(request: FinalValidationRequest) -> dict[str, Any]:
    """Predict and score the fold's validation cases; return (and write) the summary."""
    from medseg_auto.inference.validation import predict_validation_cases  # see the module docstring

    summary_path = request.output_folder / SUMMARY_FILE
    request.network.eval()
    log.info("final validation of %d cases with %s", len(request.case_ids), request.checkpoint_name)
    summary = predict_validation_cases(request)
    if not summary_path.is_file():
        write_json_atomic(summary_path, summary)
    return summary
