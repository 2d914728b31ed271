"""What keeps ``predict`` from destroying inputs, trusting damaged outputs or doubling work.

- :func:`check_prediction_folders` (before anything is written, logs included): the output
  folder must not be the input folder (a plain ``case.nii.gz`` would be predicted onto itself,
  and outputs would be read as inputs next time) and must be writable (one line instead of an
  ``OSError`` traceback from the log setup).
- :func:`refuse_writing_over_inputs`: no output path may be an input file, whatever the folders.
- :class:`CaseLedger`: a completion record per written case (size and SHA-256 of the label
  file, in ``OUTPUT/.medseg_auto/done/CASE.json``); on resume a case is done only when its file
  still matches its record, so a damaged or emptied output is redone instead of kept.
- Per-case lock files (``flock``, released by the kernel when a process dies): two processes
  on the same output folder split the cases between them instead of both predicting all.
- Stale ``.tmp-*`` files that a killed writer left behind are removed when old enough that no
  live writer can still own them.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Iterable, Iterator

from medseg_auto.errors import OutputFolderError, UnsafePathError
from medseg_auto.utils.atomic import TEMP_PREFIX, read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the ledger still keeps resumes safe
    fcntl = None  # type: ignore[assignment]

log = get_logger("inference.output_guard")
STATE_FOLDER = ".medseg_auto"
STALE_TEMPORARY_SECONDS = 600.0


def check_prediction_folders(input_path: Path, output_folder: Path) -> None:
    """Refuse an output folder that is the input folder (or the folder of an input file), or
    that cannot be written; creates ``output_folder`` when missing."""
    source = Path(input_path).resolve()
    target = Path(output_folder).resolve()
    input_folder = source if source.is_dir() else source.parent
    if target == input_folder:
        raise OutputFolderError(
            f"{output_folder}: the output folder is the input folder {input_path}; predictions would be "
            "written over (or read back as) the input images. Choose another -o"
        )
    if source.is_file() and target == source:
        raise OutputFolderError(f"{output_folder}: the output folder is the input file; choose another -o")
    check_writable_folder(Path(output_folder))


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and write (then delete) a probe file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX + "probe-", dir=folder):
            pass
    except OSError as error:
        raise OutputFolderError(f"{folder}: cannot write to the output folder ({error.strerror or error})") from error


def refuse_writing_over_inputs(inputs: Iterable[Path], targets: Iterable[Path]) -> None:
    """Raise :class:`UnsafePathError` when an output path is one of the input files."""
    input_files = {Path(p).resolve() for p in inputs}
    for target in targets:
        if Path(target).resolve() in input_files:
            raise UnsafePathError(f"{target}: this output would overwrite an input file; choose another -o")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_TEMPORARY_SECONDS) -> int:
    """Delete ``.tmp-*`` files older than ``older_than_s`` (empty ones after a minute): a live
    writer fills its temporary within seconds, so these are left over from a killed run."""
    now, removed = time.time(), 0
    for stale in Path(folder).glob(TEMP_PREFIX + "*"):
        try:
            info = stale.stat()
            age = now - info.st_mtime
            if stale.is_file() and (age > older_than_s or (info.st_size == 0 and age > 60.0)):
                stale.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile (another process cleaned it)
    return removed


class CaseLedger:
    """Completion records and locks of the cases written into one output folder."""

    def __init__(self, output_folder: Path) -> None:
        self.output_folder = Path(output_folder)
        self.records = self.output_folder / STATE_FOLDER / "done"
        self.locks = self.output_folder / STATE_FOLDER / "locks"
        self._held: dict[str, IO[bytes]] = {}

    def record_path(self, case_id: str) -> Path:
        return self.records / f"{case_id}.json"

    def is_done(self, case_id: str, target: Path) -> bool:
        """``target`` exists and matches its completion record (size and checksum). Outputs of a
        run before records existed count as done when they are non-empty and read back."""
        if not target.is_file():
            return False
        record_file = self.record_path(case_id)
        if record_file.is_file():
            try:
                record = read_json(record_file)
                if record.get("size") == target.stat().st_size and record.get("sha256") == file_digest(target):
                    return True
            except (OSError, ValueError):
                pass
            log.warning("%s does not match its completion record (damaged?); predicting it again", target)
            return False
        from medseg_auto.dataset.image_integrity import check_written_image
        from medseg_auto.errors import MedsegError

        try:
            check_written_image(target)
            return True
        except MedsegError as error:
            log.warning("%s; predicting it again", error)
            return False

    def mark_done(self, case_id: str, target: Path) -> None:
        write_json_atomic(self.record_path(case_id), {
            "file": target.name, "size": target.stat().st_size, "sha256": file_digest(target),
        })

    def claim(self, case_id: str) -> bool:
        """Take the case's lock; False when another live process holds it."""
        if fcntl is None:
            return True
        self.locks.mkdir(parents=True, exist_ok=True)
        handle = open(self.locks / f"{case_id}.lock", "wb")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._held[case_id] = handle
        return True

    def release(self, case_id: str) -> None:
        handle = self._held.pop(case_id, None)
        if handle is not None:
            handle.close()  # closing drops the flock; the empty lock file stays (harmless)

    def release_all(self) -> None:
        for case_id in list(self._held):
            self.release(case_id)


@contextmanager
def ledger_released(ledger: CaseLedger) -> Iterator[CaseLedger]:
    """Release every lock still held when prediction ends, however it ends."""
    try:
        yield ledger
    finally:
        ledger.release_all()
