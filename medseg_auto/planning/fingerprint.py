"""The dataset fingerprint: what the planner needs to know about the raw data.

Per case: shape before and after cropping to the non-zero region, spacing, class voxel counts
and foreground intensity samples per channel. Dataset level: median and 10th-percentile
spacing, median shape, foreground intensity statistics per channel, class voxel frequencies,
and the same per site when sites are known. Written as ``dataset_fingerprint.json`` with the
nnU-Net key names where they exist (``spacings``, ``shapes_after_crop``,
``foreground_intensity_properties_per_channel``, ``median_relative_size_after_cropping``).

The fingerprint records a signature of the raw files (names, sizes, modification times and
dataset.json); an unchanged signature means the stored fingerprint is reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec
from medseg_auto.dataset.case_loader import load_and_check_case
from medseg_auto.errors import DatasetError
from medseg_auto.imaging.cropping import crop_to_nonzero
from medseg_auto.planning.intensity_statistics import sample_foreground_values, weighted_statistics
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

FINGERPRINT_FILE_NAME = "dataset_fingerprint.json"
FINGERPRINT_VERSION = 1
log = get_logger("fingerprint")


def raw_signature(spec: DatasetSpec, cases: list[CaseFiles]) -> str:
    """A hash of dataset.json and the names, sizes and mtimes of every case file."""
    digest = hashlib.sha256((spec.folder / "dataset.json").read_bytes())
    for case in cases:
        for path in [*case.images, *( [case.label] if case.label else [])]:
            stat = path.stat()
            digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def analyze_case(case: CaseFiles, spec: DatasetSpec) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Fingerprint one case: its entry for the JSON and its foreground intensity samples."""
    data, seg, geometry = load_and_check_case(case, spec)
    shape_before = list(data.shape[1:])
    data, seg, _ = crop_to_nonzero(data, seg)
    foreground = seg[0] > 0
    samples = [sample_foreground_values(data[c], foreground) for c in range(data.shape[0])]
    values, counts = np.unique(seg[0][seg[0] >= 0], return_counts=True)
    entry = {
        "site": case.site,
        "spacing": [float(v) for v in geometry.spacing],
        "shape_before_crop": shape_before,
        "shape_after_crop": list(data.shape[1:]),
        "relative_size_after_cropping": float(np.prod(data.shape[1:]) / np.prod(shape_before)),
        "class_voxel_counts": {str(int(v)): int(n) for v, n in zip(values, counts)},
        "is_2d": geometry.is_2d,
    }
    return entry, samples


def summarize(case_entries: dict[str, dict], case_samples: dict[str, list[np.ndarray]], num_channels: int) -> dict:
    """Dataset-level statistics over the given cases (used for all cases and per site)."""
    spacings = np.array([entry["spacing"] for entry in case_entries.values()], dtype=float)
    shapes = np.array([entry["shape_after_crop"] for entry in case_entries.values()], dtype=float)
    class_totals: dict[str, int] = {}
    for entry in case_entries.values():
        for label, count in entry["class_voxel_counts"].items():
            class_totals[label] = class_totals.get(label, 0) + count
    total = max(sum(class_totals.values()), 1)
    return {
        "num_cases": len(case_entries),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "percentile_10_spacing": np.percentile(spacings, 10, axis=0).tolist(),
        "median_shape_after_crop": np.median(shapes, axis=0).tolist(),
        "foreground_intensity_properties_per_channel": {
            str(c): weighted_statistics([case_samples[case][c] for case in case_entries]) for c in range(num_channels)
        },
        "class_voxel_frequencies": {label: count / total for label, count in sorted(class_totals.items())},
    }


def compute_fingerprint(spec: DatasetSpec, num_processes: int, show_progress: bool = True) -> dict[str, Any]:
    """Fingerprint every training case of ``spec`` (in parallel) and summarise."""
    cases = spec.training_cases()
    if not cases:
        raise DatasetError(f"{spec.folder / 'imagesTr'}: no training cases found (empty dataset)")
    results = parallel_map(analyze_case, [(case, spec) for case in cases], num_processes, "fingerprint", show_progress)
    entries = {case.case_id: entry for case, (entry, _) in zip(cases, results)}
    samples = {case.case_id: case_samples for case, (_, case_samples) in zip(cases, results)}
    fingerprint = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": spec.name,
        "raw_signature": raw_signature(spec, cases),
        "num_cases": len(cases),
        "num_channels": spec.num_channels,
        "spacings": [entry["spacing"] for entry in entries.values()],
        "shapes_after_crop": [entry["shape_after_crop"] for entry in entries.values()],
        "median_relative_size_after_cropping": float(
            np.median([entry["relative_size_after_cropping"] for entry in entries.values()])
        ),
        **summarize(entries, samples, spec.num_channels),
        "per_site": {},
        "cases": entries,
    }
    sites = sorted({entry["site"] for entry in entries.values() if entry["site"] is not None})
    for site in sites:
        site_entries = {case: entry for case, entry in entries.items() if entry["site"] == site}
        fingerprint["per_site"][site] = summarize(site_entries, samples, spec.num_channels)
    return fingerprint


def fingerprint_dataset(
    spec: DatasetSpec, output_folder: Path, num_processes: int, show_progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Return the fingerprint, reusing ``output_folder/dataset_fingerprint.json`` when the raw
    data is unchanged (same signature), else computing and writing it."""
    path = output_folder / FINGERPRINT_FILE_NAME
    if path.is_file() and not force:
        try:
            stored = read_json(path)
        except (ValueError, json.JSONDecodeError):
            stored = {}
        if stored.get("raw_signature") == raw_signature(spec, spec.training_cases()) and \
                stored.get("fingerprint_version") == FINGERPRINT_VERSION:
            log.info("raw data unchanged: reusing %s", path)
            return stored
    fingerprint = compute_fingerprint(spec, num_processes, show_progress)
    write_json_atomic(path, fingerprint)
    log.info("fingerprint of %d cases written to %s", fingerprint["num_cases"], path)
    return fingerprint
