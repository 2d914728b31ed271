"""Import 3D volumes: Medical Segmentation Decathlon task folders and plain image/label folders.

Layouts (first match wins):

- nnU-Net v2 raw: ``dataset.json`` with ``file_ending`` and name -> value ``labels``,
  ``imagesTr/CASE_0000.nii.gz``; copied as is (:mod:`.nnunet_v2`).
- Decathlon: ``TASK/dataset.json`` (``"modality": {"0": "MRI"}``, ``"labels": {"0":
  "background", "1": ...}``) with ``imagesTr/x.nii.gz`` and ``labelsTr/x.nii.gz``. 4D
  multi-modal images are split into one file per channel, as nnU-Net v2 expects.
- Plain: ``TASK/images/x.nii.gz`` + ``TASK/labels/x.nii.gz`` (or ``imagesTr``/``labelsTr``
  without dataset.json). Labels are inferred from the values found (``label_1``, ...) unless
  named with ``label_names``; the channel is called ``channel_name`` (default ``MRI``).

Images and labels are paired by file name. Unpaired files are skipped with a warning that lists
them: real copies of MSD are not always complete (the hippocampus copy in ../shared/data lacks
some files), and refusing the whole import for that would help nobody. ``.nii.gz`` files of
3D images are copied byte for byte (geometry and header untouched); other formats and 4D
images go through SimpleITK, which keeps spacing, origin and direction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg_auto.dataset.dataset_json import DatasetSpec, write_dataset_json
from medseg_auto.dataset.image_integrity import check_image_integrity, check_written_image
from medseg_auto.dataset.image_io import SITK_ENDINGS, file_ending_of, read_segmentation
from medseg_auto.dataset.importers.naming import check_encodable_names, file_stem, list_some, unique_case_ids
from medseg_auto.dataset.importers.output import clear_case_folders, copy_file_atomic, prepare_dataset_folder
from medseg_auto.errors import DatasetError, ImageReadError, MedsegError
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import atomic_path, read_json
from medseg_auto.utils.parallel import default_num_processes, parallel_map

logger = logging.getLogger("medseg_auto.import")
FILE_ENDING = ".nii.gz"
CARRIED_KEYS = ("name", "description", "reference", "licence", "license", "release")


@dataclass
class VolumeLayout:
    """Where a task folder keeps its images and labels, and its dataset.json if it has one."""

    images_dir: Path
    labels_dir: Path
    msd_json: dict | None


@dataclass
class ImportedVolume:
    """A worker's report: channels written and, when labels are inferred, the values seen."""

    case_id: str
    num_channels: int = 0
    label_values: list[int] = field(default_factory=list)
    error: str | None = None


def import_msd(
    home: DataHome,
    task_dir: str | Path,
    name: str,
    num_processes: int = default_num_processes(),
    dataset_id: int | None = None,
    label_names: Sequence[str] | None = None,
    channel_name: str = "MRI",
    show_progress: bool = True,
) -> DatasetSpec:
    """Import a Decathlon task or a plain ``images/`` + ``labels/`` folder; return the new spec.

    ``label_names`` names labels 1..K in order (a leading ``background`` is accepted and
    dropped), e.g. ``["anterior", "posterior"]`` for hippocampus.
    """
    task_dir = Path(task_dir)
    from medseg_auto.dataset.importers.nnunet_v2 import import_nnunet_v2, is_nnunet_v2_folder

    if is_nnunet_v2_folder(task_dir):
        if label_names:
            raise DatasetError(f"{task_dir / 'dataset.json'}: an nnU-Net v2 dataset names its labels; drop --labels")
        return import_nnunet_v2(home, task_dir, name, dataset_id, num_processes, show_progress)
    layout = find_volume_layout(task_dir)
    logger.info("recognised layout: %s", "Decathlon task (dataset.json with 'modality')" if layout.msd_json
                else f"plain folders {layout.images_dir.name}/ + {layout.labels_dir.name}/ (no dataset.json)")
    pairs = _pair_volumes(layout)
    names = _clean_label_names(label_names)
    folder, _ = prepare_dataset_folder(home, name, dataset_id, append=False)
    expected_channels = len(layout.msd_json["modality"]) if layout.msd_json else None
    infer_labels = layout.msd_json is None
    logger.info("importing %d case(s) from %s into %s", len(pairs), task_dir, folder)
    try:
        arguments = [
            (case_id, image, label, folder, expected_channels, infer_labels) for case_id, (image, label) in pairs.items()
        ]
        results = parallel_map(_import_case, arguments, num_processes, "import", show_progress)
        errors = [r.error for r in results if r.error]
        if errors:
            raise DatasetError(f"{len(errors)} case(s) failed, nothing was imported: {list_some(errors)}")
        channels = _channel_names(layout, results, channel_name)
        labels = _msd_labels(layout.msd_json, names) if layout.msd_json else _inferred_labels(results, names, pairs)
        extra = {key: layout.msd_json[key] for key in CARRIED_KEYS if layout.msd_json and key in layout.msd_json}
        spec = write_dataset_json(folder, channels, labels, len(results), FILE_ENDING, extra=extra)
    except BaseException:
        # A new dataset (prepare_dataset_folder refuses finished ones): all of it is this run's.
        (folder / "dataset.json").unlink(missing_ok=True)
        clear_case_folders(folder)
        raise
    logger.info("imported %d case(s) into %s; labels %s; channels %s", spec.num_training, folder, spec.labels, spec.channel_names)
    logger.info("check it with: medseg-auto verify %s", name)
    return spec


def find_volume_layout(task_dir: Path) -> VolumeLayout:
    """Recognise the layouts described in the module docstring."""
    if not task_dir.is_dir():
        raise DatasetError(f"{task_dir}: folder not found")
    json_path = task_dir / "dataset.json"
    if json_path.is_file() and (task_dir / "imagesTr").is_dir():
        try:
            payload = read_json(json_path)
        except ValueError as error:
            raise DatasetError(f"{json_path}: not valid JSON ({error})") from error
        if "modality" not in payload and "channel_names" in payload:
            payload["modality"] = payload["channel_names"]
        for key in ("modality", "labels"):
            if not isinstance(payload.get(key), dict) or not payload[key]:
                raise DatasetError(f"{json_path}: '{key}' missing or empty (a Decathlon dataset.json maps '0' to a name)")
        return VolumeLayout(task_dir / "imagesTr", task_dir / "labelsTr", payload)
    for images, labels in (("images", "labels"), ("imagesTr", "labelsTr")):
        if (task_dir / images).is_dir():
            if not (task_dir / labels).is_dir():
                raise DatasetError(f"{task_dir / labels}: labels folder not found next to {task_dir / images}")
            return VolumeLayout(task_dir / images, task_dir / labels, None)
    raise DatasetError(
        f"{task_dir}: neither a Decathlon task (dataset.json + imagesTr/ + labelsTr/) nor a plain "
        "images/ + labels/ folder"
    )


def _list_volumes(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    files = sorted(
        entry for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and file_ending_of(entry) in SITK_ENDINGS
    )  # hidden files skipped: MSD archives carry macOS '._x.nii.gz' resource forks
    check_encodable_names(files)
    return {file_stem(path): path for path in files}


def _pair_volumes(layout: VolumeLayout) -> dict[str, tuple[Path, Path]]:
    images, labels = _list_volumes(layout.images_dir), _list_volumes(layout.labels_dir)
    lonely_images = sorted(str(images[s]) for s in set(images) - set(labels))
    lonely_labels = sorted(str(labels[s]) for s in set(labels) - set(images))
    if lonely_images:
        logger.warning("skipping %d image(s) without a label: %s", len(lonely_images), list_some(lonely_images, 20))
    if lonely_labels:
        logger.warning("skipping %d label(s) without an image: %s", len(lonely_labels), list_some(lonely_labels, 20))
    pairs = unique_case_ids({stem: (images[stem], labels[stem]) for stem in sorted(set(images) & set(labels))})
    if not pairs:
        raise DatasetError(
            f"{layout.images_dir}: no image has a label of the same file name in {layout.labels_dir} "
            f"({len(images)} image(s), {len(labels)} label(s))"
        )
    return pairs


def _import_case(
    case_id: str, image: Path, label: Path, folder: Path, expected_channels: int | None, read_labels: bool
) -> ImportedVolume:
    """Worker: write one case's channel files and label; errors are returned so all can be listed."""
    try:
        check_image_integrity(image)  # .nii.gz files are copied byte for byte, never decoded here
        check_image_integrity(label)
        num_channels = _write_channels(image, folder / "imagesTr", case_id)
        if expected_channels is not None and num_channels != expected_channels:
            raise DatasetError(
                f"{image}: holds {num_channels} channel(s) but dataset.json 'modality' lists {expected_channels}"
            )
        if _dimension(label) != 3:
            raise ImageReadError(f"{label}: a label map must be a 3D volume")
        values: list[int] = []
        if read_labels:
            label_map, _ = read_segmentation(label)
            values = [int(v) for v in np.unique(label_map)]
        _copy_or_convert(label, folder / "labelsTr" / f"{case_id}{FILE_ENDING}")
        return ImportedVolume(case_id, num_channels, values)
    except MedsegError as error:
        return ImportedVolume(case_id, error=str(error))


def _write_channels(image: Path, images_folder: Path, case_id: str) -> int:
    """Write ``CASE_XXXX.nii.gz`` per channel; 4D images are split along their 4th axis."""
    if _dimension(image) != 4:
        _copy_or_convert(image, images_folder / f"{case_id}_0000{FILE_ENDING}")
        return 1
    import SimpleITK as sitk

    volume = _sitk_read(image)
    size = list(volume.GetSize())
    for channel in range(size[3]):
        # Extract collapses the 4th axis and keeps the 3D part of spacing, origin and direction.
        channel_image = sitk.Extract(volume, size[:3] + [0], [0, 0, 0, channel])
        with atomic_path(images_folder / f"{case_id}_{channel:04d}{FILE_ENDING}", suffix=FILE_ENDING) as temporary:
            sitk.WriteImage(channel_image, str(temporary), useCompression=True)
            check_written_image(temporary)  # SimpleITK does not raise on a full disk
    return size[3]


def _copy_or_convert(source: Path, destination: Path) -> None:
    if file_ending_of(source) == FILE_ENDING:
        copy_file_atomic(source, destination)
        return
    import SimpleITK as sitk

    with atomic_path(destination, suffix=FILE_ENDING) as temporary:
        sitk.WriteImage(_sitk_read(source), str(temporary), useCompression=True)
        check_written_image(temporary)


def _dimension(path: Path) -> int:
    """The file's dimension from its header alone (SimpleITK, or nibabel for NIfTI it refuses)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader.GetDimension()
    except RuntimeError as error:
        if file_ending_of(path) in (".nii", ".nii.gz"):
            try:
                import nibabel

                return len(nibabel.load(str(path)).shape)
            except Exception:  # nibabel raises many types for corrupt files
                pass
        raise ImageReadError(f"{path}: cannot read image header ({_last_line(error)})") from error


def _sitk_read(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"{path}: cannot read image ({_last_line(error)})") from error


def _last_line(error: Exception) -> str:
    """SimpleITK errors are multi-line C++ traces; the last line says what went wrong."""
    lines = str(error).strip().splitlines() or [""]
    return lines[-1][:200]


def _clean_label_names(label_names: Sequence[str] | None) -> list[str] | None:
    if not label_names:
        return None
    names = list(label_names)
    if names[0].lower() == "background":
        names = names[1:]
    if len(set(names)) != len(names) or "background" in (n.lower() for n in names):
        raise DatasetError(f"--labels {' '.join(label_names)}: names must be distinct, background only first")
    return names


def _channel_names(layout: VolumeLayout, results: list[ImportedVolume], channel_name: str) -> dict[str, str]:
    if layout.msd_json:
        return {str(k): str(v) for k, v in layout.msd_json["modality"].items()}
    counts = sorted({r.num_channels for r in results})
    if len(counts) > 1:
        by_count = {c: [r.case_id for r in results if r.num_channels == c] for c in counts}
        raise DatasetError(f"{layout.images_dir}: cases differ in channel count: {by_count}")
    if counts[0] == 1:
        return {"0": channel_name}
    return {str(c): f"{channel_name}_{c}" for c in range(counts[0])}


def _msd_labels(msd_json: dict, names: list[str] | None) -> dict[str, int]:
    declared = {int(value): str(label) for value, label in msd_json["labels"].items()}
    if names is not None:
        foreground = sorted(v for v in declared if v != 0)
        if len(names) != len(foreground):
            raise DatasetError(f"--labels gives {len(names)} name(s) but dataset.json declares labels {foreground}")
        declared.update(zip(foreground, names))
    return {label: value for value, label in sorted(declared.items())}


def _inferred_labels(
    results: list[ImportedVolume], names: list[str] | None, pairs: dict[str, tuple[Path, Path]]
) -> dict[str, int]:
    """Labels 0..K from the values seen in the label files; named by ``names`` or ``label_k``."""
    def files_with(condition) -> str:
        return list_some([str(pairs[r.case_id][1]) for r in results if condition(r.label_values)])

    seen = sorted({v for r in results for v in r.label_values} | {0})
    if seen[0] < 0:
        raise DatasetError(f"negative label values {[v for v in seen if v < 0]} in {files_with(lambda v: min(v) < 0)}")
    largest = max(seen)
    if largest == 0:
        raise DatasetError(f"every label file is empty (all background), e.g. {files_with(lambda v: True)}")
    if names is not None:
        if largest > len(names):
            raise DatasetError(
                f"label value(s) up to {largest} found (e.g. {files_with(lambda v: max(v) > len(names))}) "
                f"but --labels names only {len(names)}"
            )
        largest = len(names)
    missing = sorted(set(range(largest + 1)) - set(seen))
    if missing:
        logger.warning("label value(s) %s never occur in any label file", missing)
    label_names = names or [f"label_{value}" for value in range(1, largest + 1)]
    return {"background": 0, **{label: value for value, label in enumerate(label_names, start=1)}}
