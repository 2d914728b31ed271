"""Planner presets: the constants of the planner as a JSON file in ``plans/``.

``default`` reproduces nnU-Net v2's default ``ExperimentPlanner`` (8 GB reference budget);
other presets (``cpu_small``, ``gpu_large``) change the memory budget and the plans name.
A preset is found by name in, in order: a path given directly, ``$MEDSEG_AUTO_PRESETS``, the
repository's ``plans/`` folder (editable installs), and ``<prefix>/share/medseg_auto/plans``
(regular installs, e.g. Docker).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from medseg_auto.errors import PlansError
from medseg_auto.utils.atomic import read_json

PRESETS_ENV = "MEDSEG_AUTO_PRESETS"


@dataclass
class PlannerPreset:
    """Every constant the planner uses; the defaults are nnU-Net v2's."""

    name: str = "default"
    description: str = ""
    plans_name: str = "plans"
    gpu_memory_target_gb: float = 8.0
    reference_memory_gb: float = 8.0
    reference_value_3d: float = 560e6
    reference_value_2d: float = 85e6
    reference_batch_size_3d: int = 2
    reference_batch_size_2d: int = 12
    base_num_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    featuremap_min_edge_length: int = 4
    n_conv_per_stage_encoder: int = 2
    n_conv_per_stage_decoder: int = 2
    min_batch_size: int = 2
    max_dataset_covered: float = 0.05
    lowres_creation_threshold: float = 0.25
    anisotropy_threshold: float = 3.0
    spacing_scale: float = 1.0
    configurations: list[str] = field(default_factory=lambda: ["2d", "3d_fullres", "3d_lowres"])

    @classmethod
    def from_json(cls, payload: dict, source: str) -> "PlannerPreset":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known - {"preset_version", "$schema", "comment"})
        if unknown:
            raise PlansError(f"{source}: unknown preset key(s) {unknown}; known: {sorted(known)}")
        return cls(**{key: value for key, value in payload.items() if key in known})


def preset_search_folders() -> list[Path]:
    folders = []
    if os.environ.get(PRESETS_ENV):
        folders.append(Path(os.environ[PRESETS_ENV]))
    folders.append(Path(__file__).resolve().parents[2] / "plans")
    folders.append(Path(sys.prefix) / "share" / "medseg_auto" / "plans")
    return folders


def load_preset(name_or_path: str = "default") -> PlannerPreset:
    """Load a preset by name (``default``, ``cpu_small``, ...) or by a path to a JSON file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        return PlannerPreset.from_json(read_json(candidate), str(candidate))
    for folder in preset_search_folders():
        path = folder / f"{name_or_path}.json"
        if path.is_file():
            return PlannerPreset.from_json(read_json(path), str(path))
    available = sorted({p.stem for f in preset_search_folders() if f.is_dir() for p in f.glob("*.json")} - {"plans_schema"})
    raise PlansError(f"preset '{name_or_path}' not found (available: {', '.join(available) or 'none'})")
