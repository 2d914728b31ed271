"""Finding 2D images and their masks: folder layouts and the ``--mask-pattern`` syntax.

Layouts (first match wins):

1. ``images_dir`` holds images; masks are in ``masks_dir``, or, when that is not given and
   ``images_dir`` is called ``images``, in its sibling ``masks/``.
2. ``images_dir`` holds ``images/`` (and ``masks/``): that pair is used.
3. ``images_dir`` holds sub-folders that each hold ``images/`` and ``masks/`` (BUSI's
   ``benign/``, ``malignant/``, ``normal/``): all of them are imported. With ``masks_dir``
   the masks of sub-folder ``S`` are looked up in ``masks_dir/S/masks`` or ``masks_dir/S``.

Mask pattern syntax: a mask file name template with two placeholders,

- ``{stem}``: the image file name without its ending (``Test_Image_7.png`` -> ``Test_Image_7``);
- ``{n}``: the number the stem ends with, as written (``Test_Image_7`` -> ``7``,
  ``scan_007`` -> ``007``); a pattern using ``{n}`` does not apply to a stem without one.

A template without a file ending matches the image's own ending first, then any other image
ending (``mask_{n}`` finds ``mask_7.png``); one with an ending (``{stem}_seg.png``) matches
exactly. Several patterns are tried in order. The default is ``{stem}`` then ``{stem}_mask``.
Examples: ``mask_{n}`` pairs ``Test_Image_7.png`` with ``mask_7.png`` (STU);
``{stem}_mask`` pairs ``benign (1).png`` with ``benign (1)_mask.png`` (original BUSI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medseg_auto.dataset.image_io import NATURAL_IMAGE_ENDINGS, file_ending_of
from medseg_auto.dataset.importers.naming import file_stem, list_some
from medseg_auto.errors import DatasetError

DEFAULT_MASK_PATTERNS = ("{stem}", "{stem}_mask")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass
class ImageGroup:
    """One folder of images and the folder of their masks (``name`` is ``""`` when alone)."""

    name: str
    images_dir: Path
    masks_dir: Path


@dataclass
class ImagePair:
    """An image, its mask, and the group it came from."""

    image: Path
    mask: Path
    group: str


def list_natural_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files such as macOS ``._x`` skipped), sorted."""
    return sorted(
        entry for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and file_ending_of(entry) in NATURAL_IMAGE_ENDINGS
    )


def find_image_groups(images_dir: Path, masks_dir: Path | None) -> list[ImageGroup]:
    """Resolve the layouts described in the module docstring into image/mask folder pairs."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found")
    if list_natural_images(images_dir):
        if masks_dir is None:
            sibling = images_dir.parent / "masks"
            if images_dir.name != "images" or not sibling.is_dir():
                raise DatasetError(f"{images_dir}: where are the masks? Pass --masks DIR.")
            masks_dir = sibling
        return [ImageGroup("", images_dir, _existing_masks_dir(Path(masks_dir)))]
    if (images_dir / "images").is_dir():
        return [ImageGroup("", images_dir / "images", _existing_masks_dir(Path(masks_dir or images_dir / "masks")))]
    groups = []
    for sub_folder in sorted(p for p in images_dir.iterdir() if (p / "images").is_dir()):
        if masks_dir is None:
            group_masks = sub_folder / "masks"
        else:
            nested = Path(masks_dir) / sub_folder.name / "masks"
            group_masks = nested if nested.is_dir() else Path(masks_dir) / sub_folder.name
        groups.append(ImageGroup(sub_folder.name, sub_folder / "images", _existing_masks_dir(group_masks)))
    if not groups:
        raise DatasetError(
            f"{images_dir}: no images ({', '.join(NATURAL_IMAGE_ENDINGS)}) found, and no sub-folders "
            "with images/ and masks/. Point --images at the folder that holds the image files."
        )
    return groups


def check_mask_patterns(patterns: Sequence[str]) -> list[str]:
    """Refuse templates with unknown placeholders or path separators, naming the fix."""
    for pattern in patterns:
        unknown = [name for name in _PLACEHOLDER.findall(pattern) if name not in ("stem", "n")]
        if unknown:
            raise DatasetError(
                f"--mask-pattern {pattern!r}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                "use {stem} (image name without ending) and {n} (its trailing number), e.g. 'mask_{n}'"
            )
        if "/" in pattern or "\\" in pattern or ".." in pattern or not pattern.strip():
            raise DatasetError(f"--mask-pattern {pattern!r}: must be a file name in the masks folder, not a path")
    return list(patterns)


def mask_candidates(image: Path, pattern: str) -> list[str]:
    """File names that ``pattern`` allows for the mask of ``image``, most likely first."""
    stem = file_stem(image)
    number = _TRAILING_NUMBER.search(stem)
    if "{n}" in pattern and number is None:
        return []
    name = pattern.replace("{stem}", stem).replace("{n}", number.group(1) if number else "")
    if file_ending_of(name) in NATURAL_IMAGE_ENDINGS:
        return [name]
    own = file_ending_of(image)
    endings = [own] + [e for e in NATURAL_IMAGE_ENDINGS if e != own]
    return [name + ending for ending in endings] + [name + ending.upper() for ending in endings]


def pair_images_with_masks(group: ImageGroup, patterns: Sequence[str]) -> tuple[list[ImagePair], list[Path], list[Path]]:
    """Pair every image of ``group`` with its mask.

    Returns ``(pairs, images_without_mask, unused_masks)``. When images and masks share one
    folder, a file that is another image's mask is not an image itself.
    """
    mask_files = {p.name: p for p in list_natural_images(group.masks_dir)}
    same_folder = group.masks_dir.resolve() == group.images_dir.resolve()
    images = list_natural_images(group.images_dir)
    found: dict[Path, Path | None] = {image: _find_mask(image, patterns, mask_files, same_folder) for image in images}
    if same_folder:
        used = {mask for mask in found.values() if mask is not None}
        found = {image: mask for image, mask in found.items() if image not in used}
    pairs = [ImagePair(image, mask, group.name) for image, mask in found.items() if mask is not None]
    missing = [image for image, mask in found.items() if mask is None]
    used_masks = {pair.mask for pair in pairs} | (set(found) if same_folder else set())
    unused = [mask for mask in mask_files.values() if mask not in used_masks]
    return pairs, missing, unused


def describe_missing_masks(missing: Sequence[Path], patterns: Sequence[str], masks_dirs: Sequence[Path]) -> str:
    """The error text for images without a mask: which, where we looked, and how to fix it."""
    return (
        f"{len(missing)} image(s) have no mask: {list_some([str(p) for p in missing])}. Looked in "
        f"{list_some([str(d) for d in masks_dirs])} for {' or '.join(repr(p) for p in patterns)}. "
        "Pass --mask-pattern (placeholders {stem} and {n}, e.g. 'mask_{n}') or remove those images."
    )


def _find_mask(image: Path, patterns: Sequence[str], mask_files: dict[str, Path], same_folder: bool) -> Path | None:
    for pattern in patterns:
        for name in mask_candidates(image, pattern):
            mask = mask_files.get(name)
            if mask is not None and not (same_folder and mask.name == image.name):
                return mask
    return None


def _existing_masks_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: masks folder not found. Pass --masks DIR.")
    return folder
