"""Ensembling predictions of several models: average their softmax probabilities, take the
argmax (nnU-Net's ``ensembling/ensemble.py``).

Why probabilities and not label maps: averaging keeps each model's confidence, so a voxel one
model is sure of and another only slightly disagrees with goes to the confident model; a
majority vote of two label maps has no way to break such ties. The probabilities are the
``CASE.npz`` files (key ``probabilities``, ``(K, Z, Y, X)`` in the case's original geometry)
that ``predict --save-probabilities`` and ``train --npz`` write; the geometry of the output
(spacing, origin, direction, file format) is taken from the first folder's label file of the
same case, since an ``.npz`` holds no geometry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medseg_auto.dataset.image_io import file_ending_of, is_supported, read_segmentation, write_segmentation
from medseg_auto.errors import MedsegError
from medseg_auto.preprocessing.restore import probabilities_to_segmentation
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

log = get_logger("inference.ensemble")

PROBABILITIES_KEY = "probabilities"
PROBABILITIES_ENDING = ".npz"
MISSING_SHOWN = 10


class EnsembleError(MedsegError):
    """Inputs of an ensemble do not fit together (missing probabilities, different shapes)."""


def load_probabilities(path: Path) -> np.ndarray:
    """``(K, Z, Y, X)`` float32 probabilities from one ``.npz`` (stored as float16)."""
    if not path.is_file():
        raise EnsembleError(f"{path}: probabilities file not found")
    with np.load(path, allow_pickle=False) as payload:
        if PROBABILITIES_KEY not in payload:
            raise EnsembleError(f"{path}: no '{PROBABILITIES_KEY}' array (keys: {', '.join(payload.files)})")
        return payload[PROBABILITIES_KEY].astype(np.float32)


def average_probabilities(paths: Sequence[Path]) -> np.ndarray:
    """Mean of the probabilities in ``paths``; shapes must agree (same classes, same grid)."""
    total: np.ndarray | None = None
    for path in paths:
        probabilities = load_probabilities(path)
        if total is None:
            total = probabilities
        elif probabilities.shape != total.shape:
            raise EnsembleError(f"{path}: probabilities of shape {probabilities.shape} (K, Z, Y, X) do not match "
                                f"{paths[0]} {total.shape}; ensemble models of the same dataset and labels only")
        else:
            total += probabilities
    if total is None:
        raise EnsembleError("no probabilities to average")
    return total / len(paths)


def ensemble_case(
    probability_files: Sequence[Path],
    template_label_file: Path,
    output_file: Path,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    save_probabilities: bool = False,
) -> np.ndarray:
    """Average one case's probabilities and write the argmax label map with the geometry of
    ``template_label_file``, atomically; return the ``(Z, Y, X)`` labels."""
    probabilities = average_probabilities(probability_files)
    template, geometry = read_segmentation(template_label_file)
    if probabilities.shape[1:] != template.shape:
        raise EnsembleError(f"{probability_files[0]}: probabilities cover {probabilities.shape[1:]} (Z, Y, X) but "
                            f"{template_label_file} has shape {template.shape}; they must come from the same run")
    segmentation = probabilities_to_segmentation(probabilities)
    if postprocess is not None:
        segmentation = postprocess(segmentation)
    ending = file_ending_of(output_file)
    with atomic_path(output_file, suffix=ending) as temporary:
        write_segmentation(segmentation, geometry, temporary)
    if save_probabilities:
        npz_file = output_file.with_name(output_file.name[: -len(ending)] + PROBABILITIES_ENDING)
        with atomic_path(npz_file, suffix=PROBABILITIES_ENDING) as temporary:
            np.savez_compressed(temporary, probabilities=probabilities.astype(np.float16))
    return segmentation


def ensemble_folders(
    input_dirs: Sequence[str | Path],
    output_dir: str | Path,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    save_probabilities: bool = False,
    num_processes: int = 1,
    show_progress: bool = True,
) -> list[str]:
    """Ensemble every case that has ``CASE.npz`` in all ``input_dirs``; return the case ids.

    Raises:
        EnsembleError: fewer than two folders, a folder without ``.npz`` files, a case missing
            from some folder, or a case without a label file in the first folder.
    """
    folders = [Path(folder) for folder in input_dirs]
    output_dir = Path(output_dir)
    if len(folders) < 2:
        raise EnsembleError("an ensemble needs at least two input folders")
    cases_per_folder = [_probability_cases(folder) for folder in folders]
    all_cases = sorted(set().union(*cases_per_folder))
    for folder, cases in zip(folders, cases_per_folder):
        missing = [case for case in all_cases if case not in cases]
        if missing:
            raise EnsembleError(
                f"{folder}: no probabilities for {len(missing)} case(s): {', '.join(missing[:MISSING_SHOWN])}"
                f"{' ...' if len(missing) > MISSING_SHOWN else ''} (predict them with --save-probabilities)")
    templates = _label_files(folders[0])
    arguments = []
    for case in all_cases:
        if case not in templates:
            raise EnsembleError(f"{folders[0]}: no label file for case '{case}' next to {case}{PROBABILITIES_ENDING}; "
                                "its geometry is needed (predict writes both)")
        template = templates[case]
        output_file = output_dir / f"{case}{file_ending_of(template)}"
        arguments.append(([folder / f"{case}{PROBABILITIES_ENDING}" for folder in folders], template, output_file,
                          postprocess, save_probabilities))
    output_dir.mkdir(parents=True, exist_ok=True)
    parallel_map(ensemble_case, arguments, num_processes, "ensemble", show_progress)
    log.info("ensembled %d case(s) of %s into %s", len(all_cases), ", ".join(str(f) for f in folders), output_dir)
    return all_cases


def _probability_cases(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise EnsembleError(f"{folder}: folder not found")
    cases = {p.name[: -len(PROBABILITIES_ENDING)] for p in folder.glob(f"*{PROBABILITIES_ENDING}")
             if not p.name.startswith(".")}
    if not cases:
        raise EnsembleError(f"{folder}: no {PROBABILITIES_ENDING} probabilities; predict with --save-probabilities")
    return cases


def _label_files(folder: Path) -> dict[str, Path]:
    """Case id -> label file (any supported image ending) of ``folder``."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and is_supported(path):
            files[path.name[: -len(file_ending_of(path))]] = path
    return files
