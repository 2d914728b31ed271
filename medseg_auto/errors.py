"""Error types. Each message names the file at fault and, where there is one, the fix.

The CLI turns any :class:`MedsegError` into a one-paragraph message and exit code 2 instead of a
traceback, because these are problems with the user's data or arguments, not bugs.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class for every error a user can cause and fix."""


class DatasetError(MedsegError):
    """The raw dataset (dataset.json, file layout, case contents) is invalid."""


class ImageReadError(DatasetError):
    """An image or label file cannot be read."""


class GeometryMismatchError(DatasetError):
    """Image channels or image and label disagree in shape, spacing, origin or direction."""


class LabelValueError(DatasetError):
    """A label map holds values that dataset.json does not declare."""


class PlansError(MedsegError):
    """A plans or preset file is missing, malformed, or does not fit the dataset."""


class UnsafePathError(MedsegError):
    """A case name would write outside the output folder."""


class ImageWriteError(MedsegError):
    """A written file came out empty or unreadable (a full disk: SimpleITK does not report it)."""


class OutputFolderError(MedsegError):
    """An output folder is unusable: it is the input folder, read-only, or in use by another run."""
