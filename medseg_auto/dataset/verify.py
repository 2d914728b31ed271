"""Check a raw dataset before planning, listing every problem instead of stopping at the first.

Why all at once: a dataset with ten broken cases should cost one round of fixes, not ten.
Each :class:`Problem` names the case and file; ``severity`` is ``"error"`` for what would break
or silently corrupt training (unreadable files, geometry mismatches, undeclared labels, NaN)
and ``"warning"`` for what is legal but worth a look (a label with no foreground, stray files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec, find_cases_in_folder
from medseg_auto.dataset.image_io import check_same_geometry, non_finite_in_nifti, read_case_images, read_segmentation
from medseg_auto.errors import DatasetError, MedsegError
from medseg_auto.utils.atomic import TEMP_PREFIX
from medseg_auto.utils.parallel import default_num_processes, parallel_map

ERROR = "error"
WARNING = "warning"
LISTED_IN_ERROR = 20


@dataclass
class Problem:
    """One thing wrong with a dataset: which case, which file, what, and how bad."""

    case: str | None
    file: str | None
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = self.file or self.case or "dataset"
        return f"{self.severity}: {where}: {self.message}"

    def to_json(self) -> dict:
        return asdict(self)


def verify_dataset(spec: DatasetSpec, num_processes: int = default_num_processes(), show_progress: bool = True) -> list[Problem]:
    """Check every case of ``spec`` and the dataset as a whole; return all problems found.

    Per case: the label exists; images and label are readable; the channel count matches
    ``channel_names``; image and label agree in shape, spacing, origin and direction; label
    values are declared in ``labels``; images hold no NaN/inf; the label has foreground
    (a warning otherwise). Dataset-wide: at least one case, ``numTraining`` equals the number
    of cases, labels without images, ``sites`` entries without a case, stray files.
    """
    problems: list[Problem] = []
    images_folder = spec.folder / "imagesTr"
    if not images_folder.is_dir():
        return [Problem(None, str(images_folder), "folder not found; a raw dataset keeps its training images there")]
    try:
        case_images = find_cases_in_folder(images_folder, spec.file_ending, spec.num_channels)
    except MedsegError as error:
        return [Problem(None, str(images_folder), f"cannot list cases: {error}")]
    cases = [
        CaseFiles(case_id, images, spec.folder / "labelsTr" / f"{case_id}{spec.file_ending}", spec.site_of(case_id))
        for case_id, images in case_images.items()
    ]
    problems += _dataset_problems(spec, cases)
    arguments = [(case, spec.num_channels, tuple(spec.label_values)) for case in cases]
    for case_problems in parallel_map(verify_case, arguments, num_processes, "verify", show_progress):
        problems += case_problems
    return problems


def verify_case(case: CaseFiles, num_channels: int, label_values: tuple[int, ...]) -> list[Problem]:
    """All problems of one case (a worker function: reads the images once)."""
    assert case.label is not None
    label_name = str(case.label)
    if not case.label.is_file():
        return [Problem(case.case_id, label_name, "label file missing; every training case needs one in labelsTr/")]
    problems: list[Problem] = []
    image = label = image_geometry = label_geometry = None
    try:
        image, image_geometry = read_case_images(case.images)
        problems += _image_problems(case, image, num_channels)
    except MedsegError as error:
        problems.append(Problem(case.case_id, str(case.images[0]), str(error)))
    try:
        label, label_geometry = read_segmentation(case.label)
        problems += _label_problems(case, label, label_values)
    except MedsegError as error:
        problems.append(Problem(case.case_id, label_name, str(error)))
    if image is None or label is None:
        return problems
    if image.shape[1:] != label.shape:
        message = f"shape {label.shape} differs from image {case.images[0].name} {image.shape[1:]}"
        return problems + [Problem(case.case_id, label_name, message)]
    try:
        check_same_geometry(image_geometry, label_geometry, str(case.images[0]), label_name)  # type: ignore[arg-type]
    except MedsegError as error:
        problems.append(Problem(case.case_id, label_name, str(error)))
    return problems


def _image_problems(case: CaseFiles, image: np.ndarray, num_channels: int) -> list[Problem]:
    """Channel count and non-finite values of a ``(C, Z, Y, X)`` image."""
    problems = []
    if image.shape[0] != num_channels:
        message = f"has {image.shape[0]} channel(s) but dataset.json 'channel_names' lists {num_channels}"
        problems.append(Problem(case.case_id, str(case.images[0]), message))
    non_finite = ~np.isfinite(image).reshape(len(image), -1)
    bad_per_channel = non_finite.sum(axis=1)
    if bad_per_channel.any():  # a file per channel, except RGB natural images (one file)
        channel = int(np.argmax(bad_per_channel > 0))
        bad_files = [(case.images[min(channel, len(case.images) - 1)], int(bad_per_channel.sum()))]
    else:
        bad_files = [(path, non_finite_in_nifti(path)) for path in case.images]
    for path, count in bad_files:
        if count:
            message = f"{count} NaN or infinite voxel(s); replace them (e.g. with the background value) and save again"
            problems.append(Problem(case.case_id, str(path), message))
    return problems


def _label_problems(case: CaseFiles, label: np.ndarray, label_values: tuple[int, ...]) -> list[Problem]:
    """Undeclared values (an error) and an empty mask (a warning)."""
    problems = []
    unknown = sorted(set(np.unique(label).tolist()) - set(label_values))
    if unknown:
        message = f"label value(s) {unknown} not declared in dataset.json 'labels' {list(label_values)}"
        problems.append(Problem(case.case_id, str(case.label), message))
    if not np.any(label > 0):
        problems.append(Problem(case.case_id, str(case.label), "no foreground (empty mask)", WARNING))
    return problems


def raise_if_problems(problems: list[Problem]) -> None:
    """Raise :class:`DatasetError` listing every error-level problem (warnings do not raise)."""
    errors = [problem for problem in problems if problem.severity == ERROR]
    if not errors:
        return
    lines = [str(problem) for problem in errors[:LISTED_IN_ERROR]]
    if len(errors) > LISTED_IN_ERROR:
        lines.append(f"... and {len(errors) - LISTED_IN_ERROR} more (medseg-auto verify lists them all)")
    raise DatasetError(f"{len(errors)} problem(s) in the dataset:\n  " + "\n  ".join(lines))


def errors_only(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == ERROR]


def _dataset_problems(spec: DatasetSpec, cases: list[CaseFiles]) -> list[Problem]:
    json_name = str(spec.folder / "dataset.json")
    problems: list[Problem] = []
    if not cases:
        endings = sorted({_suffixes(p) for p in (spec.folder / "imagesTr").iterdir() if p.is_file()})
        hint = f" (files there end in {', '.join(endings)})" if endings else ""
        problems.append(Problem(None, str(spec.folder / "imagesTr"),
                                f"empty dataset: no CASE_XXXX{spec.file_ending} files{hint}"))
    if spec.num_training != len(cases):
        problems.append(Problem(None, json_name, f"numTraining is {spec.num_training} but imagesTr holds {len(cases)} case(s)"))
    case_ids = {case.case_id for case in cases}
    labels_folder = spec.folder / "labelsTr"
    if labels_folder.is_dir():
        for label in sorted(labels_folder.iterdir()):
            if label.name.endswith(spec.file_ending) and label.name[: -len(spec.file_ending)] not in case_ids:
                problems.append(Problem(None, str(label), "label without an image in imagesTr (ignored)", WARNING))
    for case_id in sorted(set(spec.sites) - case_ids):
        problems.append(Problem(case_id, json_name, "'sites' names a case that does not exist", WARNING))
    for folder in (spec.folder / "imagesTr", labels_folder):
        if folder.is_dir():
            for stale in sorted(folder.glob(TEMP_PREFIX + "*")):
                problems.append(Problem(None, str(stale), "temporary file of an interrupted write; delete it", WARNING))
    return problems


def _suffixes(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
