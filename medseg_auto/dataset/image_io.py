"""Reading and writing images and label maps, keeping their geometry.

Arrays are always channel-first with three spatial axes in SimpleITK's array order,
``(C, Z, Y, X)``; 2D images get a dummy first axis of length 1, so one code path serves 2D
and 3D everywhere downstream. Spacing is stored in the same (z, y, x) order; origin and
direction are kept in SimpleITK's own (x, y, z) convention so they can be written back
unchanged. The dummy axis of a 2D image gets spacing 999 (as nnU-Net does) so that the
planner never resamples or pools along it.

Medical formats go through SimpleITK (NIfTI, NRRD, MHA, ...), with nibabel as the fallback
for NIfTI files SimpleITK refuses (for example non-orthonormal direction cosines); natural
images (PNG, JPEG, BMP, TIFF) go through Pillow with spacing 1.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg_auto.dataset.image_integrity import check_image_integrity, check_written_image
from medseg_auto.errors import GeometryMismatchError, ImageReadError

NATURAL_IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_ENDINGS = SITK_ENDINGS + NATURAL_IMAGE_ENDINGS
DUMMY_2D_SPACING = 999.0
GEOMETRY_TOLERANCE = 1e-4


@dataclass
class ImageGeometry:
    """Where an array lies in the world, enough to write a result back in the same place.

    ``spacing`` is in array order (z, y, x); ``origin``/``direction`` are SimpleITK's (x, y, z)
    values of the file as read; ``dimension`` is the file's own dimension (2 or 3).
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()
    dimension: int = 3
    file_ending: str = ".nii.gz"
    extra: dict = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return self.dimension == 2

    def to_json(self) -> dict:
        payload = asdict(self)
        payload["spacing"] = [float(v) for v in self.spacing]
        payload["origin"] = [float(v) for v in self.origin]
        payload["direction"] = [float(v) for v in self.direction]
        return payload

    @classmethod
    def from_json(cls, payload: dict) -> "ImageGeometry":
        return cls(
            spacing=tuple(float(v) for v in payload["spacing"]),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in payload.get("origin", ())),
            direction=tuple(float(v) for v in payload.get("direction", ())),
            dimension=int(payload.get("dimension", 3)),
            file_ending=str(payload.get("file_ending", ".nii.gz")),
            extra=dict(payload.get("extra", {})),
        )


def file_ending_of(path: str | os.PathLike) -> str:
    """The format-defining ending of a file name (``.nii.gz`` counts as one ending)."""
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(path).suffix.lower()


def is_supported(path: str | os.PathLike) -> bool:
    return file_ending_of(path) in SUPPORTED_ENDINGS


def read_image_file(path: str | os.PathLike, palette_indices: bool = False) -> tuple[np.ndarray, ImageGeometry]:
    """Read one file as ``(C, Z, Y, X)`` (C > 1 for RGB or vector images) and its geometry.

    Raises :class:`ImageReadError` naming the file when it is missing, unreadable, truncated or
    corrupt (:mod:`.image_integrity`; SimpleITK would zero-fill a cut NIfTI), or of an
    unsupported format. A palette PNG gives its colours (grey when every palette entry is grey),
    or with ``palette_indices`` (label masks) its indices.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    ending = file_ending_of(path)
    if ending in NATURAL_IMAGE_ENDINGS:
        return _read_natural(path, ending, palette_indices)
    if ending in SITK_ENDINGS:
        try:
            check_image_integrity(path)
        except OSError as error:
            raise ImageReadError(f"{path}: cannot read file ({error.strerror or error})") from error
        return _read_sitk(path, ending)
    raise ImageReadError(
        f"{path}: unsupported file type '{ending}'. Supported: {', '.join(SUPPORTED_ENDINGS)}"
    )


def read_case_images(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, ImageGeometry]:
    """Read all channel files of a case and stack them as ``(C, Z, Y, X)`` float32.

    Every channel must share shape and geometry; a mismatch names both files.
    """
    if not paths:
        raise ImageReadError("no image files given for this case")
    arrays: list[np.ndarray] = []
    reference_geometry: ImageGeometry | None = None
    for channel_path in paths:
        array, geometry = read_image_file(channel_path)
        if reference_geometry is None:
            reference_geometry = geometry
        else:
            if array.shape[1:] != arrays[0].shape[1:]:
                raise GeometryMismatchError(
                    f"{channel_path}: shape {array.shape[1:]} differs from {paths[0]} {arrays[0].shape[1:]}"
                )
            check_same_geometry(reference_geometry, geometry, str(paths[0]), str(channel_path))
        arrays.append(array)
    assert reference_geometry is not None
    return np.concatenate(arrays, axis=0).astype(np.float32, copy=False), reference_geometry


def read_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map as ``(Z, Y, X)`` int16 (after checking the values are whole numbers)."""
    array, geometry = read_image_file(path, palette_indices=True)
    if array.shape[0] != 1:
        raise ImageReadError(
            f"{path}: a label map must have one channel, found {array.shape[0]} "
            "(an RGB mask? save it as greyscale, or import it with 'medseg-auto import-folder')"
        )
    labels = array[0]
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)):
            raise ImageReadError(f"{path}: label map contains NaN or infinite values")
        rounded = np.round(labels)
        if np.any(np.abs(rounded - labels) > 1e-3):
            raise ImageReadError(f"{path}: label map holds non-integer values (a probability map?)")
        labels = rounded
    if labels.size and (labels.min() < -32768 or labels.max() > 32767):
        raise ImageReadError(f"{path}: label values outside the int16 range")
    return labels.astype(np.int16, copy=False), geometry


def check_same_geometry(first: ImageGeometry, second: ImageGeometry, first_name: str, second_name: str) -> None:
    """Raise :class:`GeometryMismatchError` if spacing, origin or direction differ."""
    for attribute in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(first, attribute), dtype=float)
        b = np.asarray(getattr(second, attribute), dtype=float)
        if a.shape != b.shape or (a.size and not np.allclose(a, b, atol=GEOMETRY_TOLERANCE, rtol=GEOMETRY_TOLERANCE)):
            raise GeometryMismatchError(
                f"{second_name}: {attribute} {tuple(np.round(b, 5))} differs from "
                f"{first_name} {tuple(np.round(a, 5))}"
            )


def write_segmentation(segmentation: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` label map with ``geometry`` to ``path`` (format from its ending).

    The caller handles atomicity (write to a temporary name with the same ending, then rename);
    the file is read back first (:func:`check_written_image`), so a full disk raises here instead
    of publishing an empty file.
    """
    path = Path(path)
    ending = file_ending_of(path)
    labels = np.asarray(segmentation)
    dtype = np.uint8 if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.int16
    labels = labels.astype(dtype, copy=False)
    if ending in NATURAL_IMAGE_ENDINGS:
        from PIL import Image

        if labels.shape[0] != 1:
            raise ImageReadError(f"{path}: cannot write a {labels.shape[0]}-slice volume as a 2D image")
        Image.fromarray(labels[0]).save(path, format=_pillow_format(ending))
        check_written_image(path)
        return
    _write_with_sitk(labels, geometry, path)


def write_image(image: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
    """Write a single-channel ``(Z, Y, X)`` intensity image (used by importers and the demo)."""
    path = Path(path)
    ending = file_ending_of(path)
    if ending in NATURAL_IMAGE_ENDINGS:
        from PIL import Image

        Image.fromarray(np.asarray(image[0])).save(path, format=_pillow_format(ending))
        check_written_image(path)
        return
    _write_with_sitk(image, geometry, path)


def _write_with_sitk(volume: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    """Write a ``(Z, Y, X)`` array (``Z == 1`` for 2D) with origin, direction and spacing, then read it back."""
    import SimpleITK as sitk

    sitk_image = sitk.GetImageFromArray(volume[0] if geometry.dimension == 2 else volume)
    if geometry.origin:
        sitk_image.SetOrigin(tuple(geometry.origin))
    if geometry.direction:
        sitk_image.SetDirection(tuple(geometry.direction))
    spacing_xyz = tuple(float(v) for v in reversed(geometry.spacing))
    sitk_image.SetSpacing(spacing_xyz[:2] if geometry.dimension == 2 else spacing_xyz)
    sitk.WriteImage(sitk_image, str(path), useCompression=True)
    check_written_image(path)


def _pillow_format(ending: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[ending]


def _read_natural(path: Path, ending: str, palette_indices: bool = False) -> tuple[np.ndarray, ImageGeometry]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                raise ImageReadError(f"{path}: multi-page images are not supported; save one page per file")
            # Alpha carries no image content. Palette ('P') masks keep their indices (the label
            # values); palette images become what they show: their indices are arbitrary numbers.
            conversions = {"RGBA": "RGB", "LA": "L", "CMYK": "RGB", "YCbCr": "RGB"}
            if opened.mode in ("P", "PA") and not palette_indices:
                opened = opened.convert(_palette_target_mode(opened))
            elif opened.mode in conversions:
                opened = opened.convert(conversions[opened.mode])
            array = np.asarray(opened)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)[:, None]
    else:
        raise ImageReadError(f"{path}: unexpected image array shape {array.shape}")
    geometry = ImageGeometry(
        spacing=(DUMMY_2D_SPACING, 1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0),
        dimension=2, file_ending=ending,
    )
    return array, geometry


def _palette_target_mode(opened) -> str:
    """``L`` when every palette colour used is grey (r == g == b), else ``RGB``."""
    palette = np.asarray(opened.convert("RGB"))
    grey = np.array_equal(palette[..., 0], palette[..., 1]) and np.array_equal(palette[..., 0], palette[..., 2])
    return "L" if grey else "RGB"


def _read_sitk(path: Path, ending: str) -> tuple[np.ndarray, ImageGeometry]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        if ending in (".nii", ".nii.gz"):
            return _read_nibabel(path, ending, error)
        raise ImageReadError(f"{path}: cannot read image ({_first_line(error)})") from error
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise ImageReadError(f"{path}: {dimension}D images are not supported (2D or 3D only)")
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if dimension == 2:
        array = array[:, None]
    spacing_zyx = tuple(float(v) for v in reversed(image.GetSpacing()))
    if dimension == 2:
        spacing_zyx = (DUMMY_2D_SPACING,) + spacing_zyx
    geometry = ImageGeometry(
        spacing=spacing_zyx,  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        dimension=dimension,
        file_ending=ending,
    )
    return array, geometry


def _read_nibabel(path: Path, ending: str, sitk_error: Exception) -> tuple[np.ndarray, ImageGeometry]:
    """NIfTI fallback. nibabel's affine is RAS; SimpleITK's convention is LPS, so flip x and y."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise ImageReadError(
            f"{path}: cannot read image (SimpleITK: {_first_line(sitk_error)}; nibabel: {error})"
        ) from error
    if data.ndim != 3:
        raise ImageReadError(f"{path}: nibabel fallback reads 3D volumes only, found {data.ndim}D")
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
    direction = (affine[:3, :3] / spacing_xyz).ravel()
    array = np.transpose(data, (2, 1, 0))[None]
    geometry = ImageGeometry(
        spacing=tuple(float(v) for v in spacing_xyz[::-1]),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in affine[:3, 3]),
        direction=tuple(float(v) for v in direction),
        dimension=3,
        file_ending=ending,
        extra={"reader": "nibabel"},
    )
    return array, geometry


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    meaningful = [line for line in text if line.strip() and "sitk::ERROR" in line] or text[-1:] or [""]
    return meaningful[0].strip()[:300]


def non_finite_in_nifti(path: str | os.PathLike) -> int:
    """Count NaN/inf voxels of a float NIfTI file as stored on disk (0 for other files).

    Why not trust the array we read: ITK before 6.0 (SimpleITK 2.5 included) silently turns
    NaN and +-inf in NIfTI files into 0 (ITK pull request #6683), so a check on the array
    SimpleITK returns would never fire. Integer files cannot hold NaN and are skipped unread
    (nibabel reads only the header to learn the type).
    """
    if not str(path).endswith((".nii", ".nii.gz")):
        return 0
    import nibabel

    try:
        image = nibabel.load(str(path))
        if image.get_data_dtype().kind not in "fc":
            return 0
        return int(np.count_nonzero(~np.isfinite(np.asarray(image.dataobj))))
    except Exception:  # unreadable for nibabel: the SimpleITK read already had its say
        return 0
