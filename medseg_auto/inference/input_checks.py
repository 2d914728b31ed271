"""Checks on a prediction input against the model it is given to."""

from __future__ import annotations

from pathlib import Path

from medseg_auto.errors import ImageReadError
from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.utils.logging_setup import get_logger


def check_case_dimension(case_id: str, first_file: Path, dimension: int, config: ConfigurationPlan) -> None:
    """Refuse a 2D image for a 3D model; log that a 2D model predicts a 3D volume slice by slice.

    Why refuse: a 2D image given to a 3D model gets its dummy z-spacing (999) resampled to the
    model's spacing (about a thousand slices): minutes of work and gigabytes for a meaningless
    result. A 2D model on a volume is what nnU-Net allows, so it is kept, but said.
    """
    if dimension == 2 and not config.is_2d:
        raise ImageReadError(
            f"{first_file}: a 2D image, but configuration {config.name} is a 3D model; predict it with a 2d model"
        )
    if dimension == 3 and config.is_2d:
        get_logger("inference").info("case %s: a 3D volume with the 2d model: predicted slice by slice", case_id)
