"""The preprocessed cache of one configuration: ``preprocessed/DATASET/<data_identifier>/``.

Per case three files: ``CASE.npy`` (float32 ``(C, Z, Y, X)``), ``CASE_seg.npy`` (int16
``(1, Z, Y, X)``, -1 outside the non-zero region) and ``CASE.json`` (the properties needed to
undo preprocessing, and foreground locations for oversampling). ``.npy`` so that training can
memory-map patches instead of decompressing whole volumes; JSON so nothing is unpickled.

The JSON is written last and atomically, and is the completeness marker: a case whose JSON
exists is complete; anything else (a kill mid-case) is absent and redone on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg_auto.dataset.image_io import ImageGeometry
from medseg_auto.errors import DatasetError
from medseg_auto.paths import check_safe_name
from medseg_auto.preprocessing.cache_integrity import RECORD_KEY, damaged_files, file_record
from medseg_auto.utils.atomic import read_json, remove_stale_temporaries, save_npy_atomic, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("preprocessing.cache")


@dataclass
class CaseProperties:
    """What preprocessing did to one case, so prediction can undo it exactly.

    Shapes are spatial ``(Z, Y, X)`` in the *transposed* axis order except
    ``original_shape``, which is the file's own array shape.
    """

    case_id: str
    geometry: dict[str, Any]
    original_shape: list[int]
    original_spacing: list[float]
    shape_before_cropping: list[int]
    bbox_used_for_cropping: list[list[int]]
    shape_after_cropping_before_resampling: list[int]
    spacing_after_resampling: list[float]
    site: str | None = None
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def image_geometry(self) -> ImageGeometry:
        return ImageGeometry.from_json(self.geometry)

    def to_json(self) -> dict[str, Any]:
        # A shallow dict, not dataclasses.asdict: asdict deep-copies the (large) location lists.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "CaseProperties":
        return cls(**{key: payload[key] for key in cls.__dataclass_fields__ if key in payload})


class PreprocessedCache:
    """Reads and writes the cases of one configuration's cache folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def data_path(self, case_id: str) -> Path:
        return self.folder / f"{check_safe_name(case_id)}.npy"

    def seg_path(self, case_id: str) -> Path:
        return self.folder / f"{check_safe_name(case_id)}_seg.npy"

    def properties_path(self, case_id: str) -> Path:
        return self.folder / f"{check_safe_name(case_id)}.json"

    def is_complete(self, case_id: str) -> bool:
        return (
            self.properties_path(case_id).is_file()
            and self.data_path(case_id).is_file()
            and self.seg_path(case_id).is_file()
        )

    def case_ids(self) -> list[str]:
        """Complete cases, sorted."""
        if not self.folder.is_dir():
            return []
        candidates = (p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))
        return sorted(case for case in candidates if self.is_complete(case))

    def write_case(self, case_id: str, data: np.ndarray, seg: np.ndarray, properties: CaseProperties) -> None:
        """Write one case; the properties JSON goes last so a kill never leaves it half-written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.properties_path(case_id).unlink(missing_ok=True)
        save_npy_atomic(self.data_path(case_id), data.astype(np.float32, copy=False))
        save_npy_atomic(self.seg_path(case_id), seg.astype(np.int16, copy=False))
        payload = properties.to_json()
        payload[RECORD_KEY] = {path.name: file_record(path) for path in (self.data_path(case_id), self.seg_path(case_id))}
        write_json_atomic(self.properties_path(case_id), payload, compact=True)

    def is_intact(self, case_id: str) -> bool:
        """Complete, and its arrays still match the sizes and checksums recorded when it was
        written (:mod:`.cache_integrity`); a damaged case is logged and counts as missing."""
        if not self.is_complete(case_id):
            return False
        try:
            records = read_json(self.properties_path(case_id)).get(RECORD_KEY)
        except (OSError, ValueError, AttributeError):
            records, damaged = None, [self.properties_path(case_id).name]
        else:
            damaged = damaged_files(self.folder, records, [self.data_path(case_id), self.seg_path(case_id)])
        if damaged:
            log.warning("%s: cached case '%s' is damaged (%s); preprocessing it again", self.folder, case_id,
                        ", ".join(damaged))
            self.properties_path(case_id).unlink(missing_ok=True)
            return False
        return True

    def load_case(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
        """Return ``(data (C,Z,Y,X) float32, seg (1,Z,Y,X) int16, properties)``.

        With ``mmap`` the arrays are memory-mapped read-only, so a patch read touches only its
        own pages.
        """
        if not self.is_complete(case_id):
            raise DatasetError(f"{self.folder}: case '{case_id}' is not in the preprocessed cache")
        mode = "r" if mmap else None
        data = np.load(self.data_path(case_id), mmap_mode=mode, allow_pickle=False)
        seg = np.load(self.seg_path(case_id), mmap_mode=mode, allow_pickle=False)
        properties = CaseProperties.from_json(read_json(self.properties_path(case_id)))
        return data, seg, properties

    def load_properties(self, case_id: str) -> CaseProperties:
        return CaseProperties.from_json(read_json(self.properties_path(case_id)))

    def clean_incomplete(self) -> int:
        """Remove temporaries and array files of cases without properties; return the count."""
        removed = remove_stale_temporaries(self.folder)
        if not self.folder.is_dir():
            return removed
        for array_file in self.folder.glob("*.npy"):
            case_id = array_file.name[: -len("_seg.npy")] if array_file.name.endswith("_seg.npy") else array_file.stem
            if not self.properties_path(case_id).is_file():
                array_file.unlink(missing_ok=True)
                removed += 1
        return removed
