"""Where data lives: the data home and the dataset folders inside it.

One documented environment variable, ``MEDSEG_AUTO_HOME`` (default ``./medseg_auto_data``),
holds ``raw/``, ``preprocessed/`` and ``results/``; every command also takes ``--home``.
Raw datasets are folders ``raw/DatasetNNN_Name`` (nnU-Net's naming, so existing nnU-Net
datasets can be copied in unchanged) and are addressed by name (``Hippocampus``), by id
(``4``), or by the full folder name.

nnU-Net users keep raw datasets under ``$nnUNet_raw``. When that variable is set (or
``--raw DIR`` is given), datasets there are found by name or id too and read in place, never
written to: their preprocessed data, results and reports (verify's) go under our data home,
in folders of the same ``DatasetNNN_Name``. A dataset in our own ``raw/`` wins a name clash.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medseg_auto.errors import DatasetError, UnsafePathError

HOME_ENV = "MEDSEG_AUTO_HOME"
NNUNET_RAW_ENV = "nnUNet_raw"
DEFAULT_HOME = "medseg_auto_data"
_FOLDER_PATTERN = re.compile(r"^Dataset(\d{3})_(.+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ()+]*$")


@dataclass(frozen=True)
class DataHome:
    """The three top-level folders of a data home, and an optional read-only raw folder of
    someone else's (nnU-Net's ``nnUNet_raw``)."""

    root: Path
    external_raw: Path | None = None

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None, raw: str | os.PathLike | None = None) -> "DataHome":
        """``home`` if given, else ``$MEDSEG_AUTO_HOME``, else ``./medseg_auto_data``; the
        external raw folder is ``raw`` if given, else ``$nnUNet_raw`` if set."""
        chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
        external_path = None
        if raw:
            external_path = Path(raw).expanduser().resolve()
            if not external_path.is_dir():
                raise DatasetError(f"{external_path}: raw dataset folder not found (--raw)")
        elif os.environ.get(NNUNET_RAW_ENV):
            external_path = Path(os.environ[NNUNET_RAW_ENV]).expanduser().resolve()
            if not external_path.is_dir():  # a stale variable must not stop work on our own datasets
                logging.getLogger("medseg_auto").warning("$%s=%s is not a folder; ignored", NNUNET_RAW_ENV, external_path)
                external_path = None
        return cls(Path(chosen).expanduser().resolve(), external_path)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def list_datasets(self) -> list[str]:
        """Folder names of the raw datasets (ours and the external raw folder's), sorted."""
        names = set(_dataset_folders(self.raw))
        if self.external_raw is not None:
            names |= set(_dataset_folders(self.external_raw))
        return sorted(names)

    def is_external(self, name_or_id: str) -> bool:
        """True when the dataset is read in place from the external raw folder."""
        folder = self.find_dataset(name_or_id)
        return self.external_raw is not None and not (self.raw / folder).is_dir()

    def find_dataset(self, name_or_id: str) -> str:
        """Return the folder name (``DatasetNNN_Name``) for a name, an id or a folder name."""
        candidates = self.list_datasets()
        key = str(name_or_id).strip()
        for folder in candidates:
            match = _FOLDER_PATTERN.match(folder)
            assert match is not None
            if key == folder or key == match.group(2) or (key.isdigit() and int(key) == int(match.group(1))):
                return folder
        known = ", ".join(candidates) or "none"
        guess = closest_dataset_name(key, candidates)
        hint = f"Did you mean '{guess}'? " if guess else ""
        searched = f"{self.raw}" + (f" or {self.external_raw}" if self.external_raw is not None else "")
        raise DatasetError(
            f"no dataset '{name_or_id}' in {searched} (known: {known}). {hint}Import one with "
            "'medseg-auto import-msd' or 'medseg-auto import-folder', or pass --home."
        )

    def raw_dataset(self, name_or_id: str) -> Path:
        folder = self.find_dataset(name_or_id)
        if self.external_raw is not None and not (self.raw / folder).is_dir():
            return self.external_raw / folder
        return self.raw / folder

    def preprocessed_dataset(self, name_or_id: str) -> Path:
        return self.preprocessed / self.find_dataset(name_or_id)

    def results_dataset(self, name_or_id: str) -> Path:
        return self.results / self.find_dataset(name_or_id)

    def next_free_id(self) -> int:
        """The lowest id above 500 not in use (ids 1-10 are MSD's, 11-499 nnU-Net's examples)."""
        used = {int(_FOLDER_PATTERN.match(f).group(1)) for f in self.list_datasets()}  # type: ignore[union-attr]
        candidate = 501
        while candidate in used:
            candidate += 1
        return candidate

    def new_dataset_folder(self, name: str, dataset_id: int | None = None) -> Path:
        """The raw folder for dataset ``name``: the existing ``DatasetNNN_name`` when the name is
        already used (an import run again writes into it), else a new one numbered
        ``dataset_id`` or the next free id. Unsafe names are refused."""
        check_safe_name(name, what="dataset name")
        for folder in _dataset_folders(self.raw):
            if _FOLDER_PATTERN.match(folder).group(2) == name:  # type: ignore[union-attr]
                return self.raw / folder
        chosen_id = dataset_id if dataset_id is not None else self.next_free_id()
        return self.raw / f"Dataset{chosen_id:03d}_{name}"


def _dataset_folders(raw: Path) -> list[str]:
    if not raw.is_dir():
        return []
    return [p.name for p in raw.iterdir() if p.is_dir() and _FOLDER_PATTERN.match(p.name)]


def closest_dataset_name(key: str, folders: list[str]) -> str | None:
    """The known dataset name closest to a mistyped one (``Hipocampus`` -> ``Hippocampus``)."""
    names = {}
    for folder in folders:
        match = _FOLDER_PATTERN.match(folder)
        if match:
            names[match.group(2).lower()] = match.group(2)
            names[folder.lower()] = folder
    close = difflib.get_close_matches(key.lower(), list(names), n=1, cutoff=0.6)
    return names[close[0]] if close else None


def check_safe_name(name: str, what: str = "case name") -> str:
    """Refuse names that could escape an output folder (``..``, slashes, absolute paths)."""
    if not name or "/" in name or "\\" in name or name in {".", ".."} or ".." in name or not _SAFE_NAME.match(name):
        raise UnsafePathError(
            f"refusing {what} {name!r}: use letters, digits, '.', '_', '-', spaces or brackets, "
            "with no path separators or '..'."
        )
    return name


def safe_child(folder: Path, file_name: str) -> Path:
    """``folder / file_name``, refused when the result would lie outside ``folder``."""
    candidate = (folder / file_name).resolve()
    if folder.resolve() not in candidate.parents:
        raise UnsafePathError(f"refusing to write {file_name!r}: it resolves outside {folder}")
    return candidate
