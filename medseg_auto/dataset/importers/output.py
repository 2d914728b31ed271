"""The output side shared by importers: choosing the dataset folder and writing files safely.

Why a folder without ``dataset.json`` may be reused: importers write ``dataset.json`` last,
so such a folder is the remains of an interrupted import (or holds only ``logs/``); its
``imagesTr``/``labelsTr`` are cleared and the import starts over. A folder *with*
``dataset.json`` is a finished dataset and is only ever extended with ``append``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterable

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import file_ending_of
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import atomic_path, remove_stale_temporaries

logger = logging.getLogger("medseg_auto.import")


def prepare_dataset_folder(
    home: DataHome, name: str, dataset_id: int | None = None, append: bool = False
) -> tuple[Path, DatasetSpec | None]:
    """Return the folder to import into and, when appending, the existing dataset's spec."""
    folder = home.new_dataset_folder(name, dataset_id)
    finished = (folder / "dataset.json").is_file()
    if append:
        if not finished:
            raise DatasetError(
                f"{folder}: no dataset '{name}' to append to (dataset.json not found). "
                "Import the first part without --append."
            )
        spec = DatasetSpec.load(folder)
        for sub_folder in ("imagesTr", "labelsTr"):
            remove_stale_temporaries(folder / sub_folder)
        return folder, spec
    if finished:
        raise DatasetError(
            f"{folder}: dataset '{name}' already exists. Use --append to add cases to it, choose "
            "another --name, or delete the folder to import it again."
        )
    if any((folder / sub_folder).is_dir() for sub_folder in ("imagesTr", "labelsTr")):
        logger.warning("%s: left over from an interrupted import (no dataset.json); clearing its cases", folder)
        clear_case_folders(folder)
    return folder, None


def clear_case_folders(folder: Path) -> None:
    """Delete ``imagesTr``/``labelsTr`` of a dataset folder that has no dataset.json (never a finished one)."""
    if (folder / "dataset.json").is_file():
        raise DatasetError(f"{folder}: refusing to clear the cases of a finished dataset")
    for sub_folder in ("imagesTr", "labelsTr"):
        shutil.rmtree(folder / sub_folder, ignore_errors=True)


def copy_file_atomic(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` so that a reader never sees half a file."""
    with atomic_path(destination, suffix=file_ending_of(destination)) as temporary:
        shutil.copyfile(source, temporary)


def remove_files(paths: Iterable[Path]) -> None:
    """Undo the files one failed import run wrote, so a rerun (or --append) starts clean."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def existing_case_ids(spec: DatasetSpec) -> set[str]:
    """Case ids already in a dataset (from its files, which is what training will see)."""
    return {case.case_id for case in spec.training_cases(require_labels=False)}


def discard_unfinished_folder(folder: Path) -> bool:
    """After a failed import, remove a dataset folder that holds nothing but logs and empty folders.

    Why: the CLI opens its log inside the dataset folder before importing; if the import then
    fails, that folder would otherwise linger in ``raw/`` as a dataset without dataset.json
    (listed by ``find_dataset``, using up an id). The error was shown on the console already.
    Returns whether the folder was removed; a folder with ``dataset.json`` or files is kept.
    """
    if not folder.is_dir() or (folder / "dataset.json").exists():
        return False
    for entry in folder.rglob("*"):
        if entry.is_file() and entry.parent != folder / "logs":
            return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
