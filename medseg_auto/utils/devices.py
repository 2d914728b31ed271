"""Checking a requested device before any work (or any file) is started for it."""

from __future__ import annotations

from medseg_auto.errors import MedsegError


def check_device_available(requested: str) -> None:
    """Raise :class:`MedsegError` (one line, exit code 2) when ``--device cuda`` cannot work here.

    Why: torch fails later and deeper (``AssertionError: Torch not compiled with CUDA enabled``
    or a ``RuntimeError``), after logs and output folders were made.
    """
    if requested != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        reason = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise MedsegError(f"--device cuda: {reason} (torch {torch.__version__}); use --device cpu or --device auto")
