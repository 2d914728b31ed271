"""Import a folder of 2D natural images (PNG, JPEG, BMP, TIFF) and their masks.

The result is a raw dataset with ``file_ending`` ``.png``: ``imagesTr/CASE_0000.png`` and
``labelsTr/CASE.png``. Images are written greyscale (one channel) unless some image is truly
colour (RGB with differing channels); then every image is written RGB in one file and
``channel_names`` are R, G, B, as nnU-Net does for natural images. Masks become label maps as
described in :mod:`medseg_auto.dataset.importers.masks`; the layouts and the
``--mask-pattern`` syntax are in :mod:`medseg_auto.dataset.importers.pairing`.

Everything that can be checked cheaply (pairing, case ids, mask sizes) is checked before
anything is written; a later failure removes this run's files, and ``dataset.json`` is
written last, so an existing dataset is never left half-extended.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg_auto.dataset.dataset_json import DatasetSpec, write_dataset_json
from medseg_auto.dataset.image_io import ImageGeometry, read_image_file, write_image, write_segmentation
from medseg_auto.dataset.importers.masks import THRESHOLD, mask_to_label_map, resize_nearest
from medseg_auto.dataset.importers.naming import case_id_from_stem, file_stem, list_some
from medseg_auto.dataset.importers.output import existing_case_ids, prepare_dataset_folder, remove_files
from medseg_auto.dataset.importers.pairing import (
    DEFAULT_MASK_PATTERNS, ImagePair, check_mask_patterns, describe_missing_masks, find_image_groups,
    pair_images_with_masks,
)
from medseg_auto.errors import DatasetError, ImageReadError, MedsegError
from medseg_auto.paths import DataHome, check_safe_name
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.parallel import default_num_processes, parallel_map

logger = logging.getLogger("medseg_auto.import")
FILE_ENDING = ".png"
RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}


@dataclass
class ConvertedCase:
    """What one worker reports back: enough to decide channels and labels for the dataset."""

    case_id: str
    colour: bool = False
    label_values: list[int] = field(default_factory=list)
    mask_kind: str = ""
    resized: bool = False
    error: str | None = None


def import_folder(
    home: DataHome,
    images_dir: str | Path,
    masks_dir: str | Path | None,
    name: str,
    site: str | None = None,
    mask_pattern: str | Sequence[str] | None = None,
    resize_masks: bool = False,
    append: bool = False,
    num_processes: int = default_num_processes(),
    dataset_id: int | None = None,
    channel_name: str = "image",
    show_progress: bool = True,
    grey: bool = False,
) -> DatasetSpec:
    """Import 2D images and masks into ``home/raw/DatasetNNN_<name>`` and return its spec.

    ``mask_pattern``: one template or several tried in order (see ``pairing``); ``site``
    prefixes case ids and fills dataset.json's ``sites``; ``resize_masks`` resizes masks of
    another size than their image (nearest) before thresholding at 127; ``append`` adds the
    cases to an existing dataset of that name. ``channel_name`` names a greyscale channel.
    ``grey`` stores every image greyscale (colour images as luminance, 0.299 R + 0.587 G + 0.114 B).
    """
    if isinstance(mask_pattern, str):
        mask_pattern = [mask_pattern]
    patterns = check_mask_patterns(list(mask_pattern or DEFAULT_MASK_PATTERNS))
    if site is not None:
        check_safe_name(site, what="site name")
    pairs = _find_pairs(Path(images_dir), Path(masks_dir) if masks_dir else None, patterns)
    cases = _assign_case_ids(pairs, site)
    folder, existing = prepare_dataset_folder(home, name, dataset_id, append)
    if existing is not None:
        _check_can_append(existing, cases)
    resized = _check_mask_sizes(cases, resize_masks)
    force_rgb = existing is not None and existing.num_channels == 3
    if grey and force_rgb:
        raise DatasetError(f"{existing.folder}: holds RGB images; --grey cannot append greyscale ones to it")
    targets = [path for case_id in cases for path in _case_files(folder, case_id)]
    logger.info("importing %d case(s) from %s into %s%s", len(cases), images_dir, folder,
                f" ({resized} mask(s) to resize)" if resized else "")
    try:
        arguments = [(case_id, pair.image, pair.mask, folder, resize_masks, force_rgb, grey)
                     for case_id, pair in cases.items()]
        results = parallel_map(_convert_case, arguments, num_processes, "import", show_progress)
        _raise_case_errors(results)
        rgb = force_rgb or _make_all_rgb_if_any_colour(results, cases, folder, existing, num_processes, show_progress)
        spec = _write_dataset_json(folder, existing, results, site, rgb, channel_name)
    except BaseException:
        remove_files(targets)
        raise
    _log_summary(results, spec)
    return spec


def _find_pairs(images_dir: Path, masks_dir: Path | None, patterns: list[str]) -> list[ImagePair]:
    groups = find_image_groups(images_dir, masks_dir)
    pairs, missing, unused = [], [], []
    for group in groups:
        group_pairs, group_missing, group_unused = pair_images_with_masks(group, patterns)
        pairs += group_pairs
        missing += group_missing
        unused += group_unused
        if group.name:
            logger.info("%s: %d image(s) with masks", group.images_dir.parent, len(group_pairs))
    if missing:
        raise DatasetError(describe_missing_masks(missing, patterns, [g.masks_dir for g in groups]))
    if unused:
        logger.warning("%d mask file(s) match no image and are ignored: %s", len(unused), list_some([str(p) for p in unused]))
    if not pairs:
        raise DatasetError(f"{images_dir}: no images found")
    return pairs


def _assign_case_ids(pairs: list[ImagePair], site: str | None) -> dict[str, ImagePair]:
    cases: dict[str, ImagePair] = {}
    for pair in pairs:
        case_id = case_id_from_stem(file_stem(pair.image), pair.image, site)
        if case_id in cases:
            raise DatasetError(
                f"{pair.image} and {cases[case_id].image} both become case '{case_id}'; rename one, or import "
                "the folders separately with different --site names"
            )
        cases[case_id] = pair
    return cases


def _check_can_append(existing: DatasetSpec, cases: dict[str, ImagePair]) -> None:
    if existing.file_ending != FILE_ENDING:
        raise DatasetError(
            f"{existing.folder}: holds '{existing.file_ending}' files; import-folder can only append to a "
            f"'{FILE_ENDING}' dataset"
        )
    if existing.num_channels not in (1, 3):
        raise DatasetError(f"{existing.folder}: has {existing.num_channels} channels; 2D images need 1 or 3")
    clashes = sorted(set(cases) & existing_case_ids(existing))
    if clashes:
        raise DatasetError(
            f"{existing.folder}: {len(clashes)} case id(s) already exist: {list_some(clashes)}. Use a different "
            "--site so ids get another prefix (if an earlier --append was interrupted, delete those cases' files)."
        )


def _check_mask_sizes(cases: dict[str, ImagePair], resize_masks: bool) -> int:
    """Compare image and mask sizes from the file headers, before anything is written."""
    mismatched, unreadable = [], []
    for pair in cases.values():
        try:
            image_size, mask_size = _header_size(pair.image), _header_size(pair.mask)
        except ImageReadError as error:
            unreadable.append(str(error))
            continue
        if image_size != mask_size:
            mismatched.append(f"{pair.mask} ({mask_size[0]}x{mask_size[1]}) vs {pair.image} ({image_size[0]}x{image_size[1]})")
    if unreadable:
        raise ImageReadError(f"{len(unreadable)} file(s) cannot be read: {list_some(unreadable)}")
    if mismatched and not resize_masks:
        raise DatasetError(
            f"{len(mismatched)} mask(s) differ in size from their image: {list_some(mismatched)}. Pass "
            f"--resize-masks to resize them (nearest) to the image size and threshold at {THRESHOLD}."
        )
    return len(mismatched)


def _header_size(path: Path) -> tuple[int, int]:
    """Width and height from the header alone (cheap: no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            return opened.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error


def _convert_case(
    case_id: str, image_path: Path, mask_path: Path, folder: Path, resize_masks: bool, force_rgb: bool,
    grey: bool = False,
) -> ConvertedCase:
    """Worker: read, convert and write one case; errors are returned so all can be listed."""
    try:
        image, geometry = read_image_file(image_path)
        if grey and image.shape[0] > 1:
            image = _grey(image)
        colour = image.shape[0] > 1 and not all(np.array_equal(image[0], image[c]) for c in range(1, image.shape[0]))
        image_file, label_file = _case_files(folder, case_id)
        _write_png_image(_as_rgb(image) if (colour or force_rgb) else image[:1], geometry, image_file)
        mask, _ = read_image_file(mask_path, palette_indices=True)
        resized = mask.shape[-2:] != image.shape[-2:]
        if resized:
            if not resize_masks:
                raise DatasetError(f"{mask_path}: size {mask.shape[-2:]} differs from {image_path} {image.shape[-2:]}")
            mask = resize_nearest(mask, image.shape[-2:])
        label_map, kind = mask_to_label_map(mask, mask_path)
        with atomic_path(label_file, suffix=FILE_ENDING) as temporary:
            write_segmentation(label_map, geometry, temporary)
        values = [int(v) for v in np.unique(label_map)]
        return ConvertedCase(case_id, colour, values, kind, resized)
    except MedsegError as error:
        return ConvertedCase(case_id, error=str(error))


def _write_png_image(image: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    """Write a ``(C, 1, Y, X)`` image, C = 1 (grey) or 3 (RGB)."""
    from PIL import Image

    if image.shape[0] == 1:
        with atomic_path(path, suffix=FILE_ENDING) as temporary:
            write_image(image[0], geometry, temporary)
        return
    if image.dtype != np.uint8:
        raise ImageReadError(f"{path}: RGB images must be 8-bit, found {image.dtype}")
    with atomic_path(path, suffix=FILE_ENDING) as temporary:
        Image.fromarray(np.ascontiguousarray(np.moveaxis(image[:, 0], 0, -1))).save(temporary, format="PNG")


def _rewrite_as_rgb(image_path: Path, image_file: Path) -> None:
    image, geometry = read_image_file(image_path)
    _write_png_image(_as_rgb(image), geometry, image_file)


def _grey(image: np.ndarray) -> np.ndarray:
    """``(1, 1, Y, X)`` luminance of a colour image, in the input's integer type when it has one."""
    from medseg_auto.dataset.channels import luminance

    grey = luminance(image)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(grey), info.min, info.max).astype(image.dtype)
    return grey


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A ``(C, 1, Y, X)`` image with C = 3: grey (C = 1) is replicated, RGB kept."""
    return np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]


def _make_all_rgb_if_any_colour(
    results: list[ConvertedCase], cases: dict[str, ImagePair], folder: Path,
    existing: DatasetSpec | None, num_processes: int, show_progress: bool,
) -> bool:
    """If any image is truly colour, write the greyscale ones as RGB too: one channel count per dataset."""
    colour = [r.case_id for r in results if r.colour]
    if not colour:
        return False
    if existing is not None:
        raise DatasetError(
            f"{existing.folder}: is greyscale but {len(colour)} image(s) to append are colour: "
            f"{list_some([str(cases[c].image) for c in colour])}. Convert them to greyscale first."
        )
    grey = [(cases[r.case_id].image, _case_files(folder, r.case_id)[0]) for r in results if not r.colour]
    logger.info("%d colour image(s) (e.g. %s): writing all images as RGB", len(colour), cases[colour[0]].image)
    parallel_map(_rewrite_as_rgb, grey, num_processes, "rgb", show_progress)
    return True


def _raise_case_errors(results: list[ConvertedCase]) -> None:
    errors = [r.error for r in results if r.error]
    if errors:
        raise DatasetError(f"{len(errors)} case(s) failed, nothing was imported: {list_some(errors)}")
    kinds = Counter(r.mask_kind for r in results)
    if kinds["greyscale"] and kinds["labels"]:
        labels = [r.case_id for r in results if r.mask_kind == "labels"]
        raise DatasetError(
            f"masks mix anti-aliased 0..255 masks with label maps holding values 2..63 ({list_some(labels)}); "
            "one of the two is misread. Import them separately."
        )


def _write_dataset_json(
    folder: Path, existing: DatasetSpec | None, results: list[ConvertedCase],
    site: str | None, rgb: bool, channel_name: str,
) -> DatasetSpec:
    values = sorted({v for r in results for v in r.label_values} | {0, 1})
    new_sites = {r.case_id: site for r in results} if site else {}
    if existing is not None:
        unknown = sorted(set(values) - set(existing.label_values))
        if unknown:
            cases = [r.case_id for r in results if set(r.label_values) & set(unknown)]
            raise DatasetError(
                f"{existing.folder}: label value(s) {unknown} of {list_some(cases)} are not in its dataset.json "
                f"labels {existing.labels}; nothing was appended"
            )
        existing.num_training += len(results)
        existing.sites.update(new_sites)
        existing.save()
        return DatasetSpec.load(folder)
    largest = max(values)
    labels = {"background": 0, "foreground": 1} if largest == 1 else {
        "background": 0, **{f"label_{v}": v for v in range(1, largest + 1)}}
    channels = RGB_CHANNELS if rgb else {"0": channel_name}
    return write_dataset_json(folder, channels, labels, len(results), FILE_ENDING, sites=new_sites)


def _case_files(folder: Path, case_id: str) -> tuple[Path, Path]:
    return folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}", folder / "labelsTr" / f"{case_id}{FILE_ENDING}"


def _log_summary(results: list[ConvertedCase], spec: DatasetSpec) -> None:
    kinds = Counter(r.mask_kind for r in results)
    empty = sum(1 for r in results if r.label_values == [0])
    logger.info(
        "imported %d case(s) into %s (now %d case(s)); masks: %s; %d resized; %d with no foreground",
        len(results), spec.folder, spec.num_training, ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())),
        sum(r.resized for r in results), empty,
    )
    logger.info("check it with: medseg-auto verify %s", spec.name.split("_", 1)[-1])
