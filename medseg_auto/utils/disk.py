"""Telling a full disk (or quota, or read-only file system) apart from other write failures.

Why: on a full disk every later write fails the same way, so the commands stop at the first
one with a single line (``medseg-auto CMD: error: PATH: No space left on device``) instead of
failing case after case or ending in a traceback.
"""

from __future__ import annotations

import errno

from medseg_auto.errors import ImageWriteError

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC/EDQUOT/EROFS and for a written image that came out empty or unreadable."""
    if isinstance(error, ImageWriteError):
        return True
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def describe_os_error(error: OSError) -> str:
    """``PATH: reason`` in one line (the file first, as every error message of the tool)."""
    reason = error.strerror or str(error) or type(error).__name__
    names = [str(name) for name in (error.filename, error.filename2) if name is not None]
    hint = {errno.ENOSPC: "; free some space and rerun (finished work is kept)",
            errno.EDQUOT: "; free some space and rerun (finished work is kept)",
            errno.EROFS: "; choose a writable folder",
            errno.EACCES: "; check the permissions or choose another folder"}.get(error.errno or -1, "")
    return f"{' -> '.join(names) + ': ' if names else ''}{reason}{hint}"
