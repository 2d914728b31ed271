"""Numbers on the command line that cannot work, refused before any work starts.

Why: a ``--step 0`` or ``-np -1`` used to reach deep code (MONAI's sliding window, the process
pool) and fail there once per case, or with a traceback; checked here it is one line naming the
option.
"""

from __future__ import annotations

import argparse

from medseg_auto.errors import MedsegError


def check_prediction_options(args: argparse.Namespace) -> None:
    """Raise :class:`MedsegError` for ``predict`` options outside their meaningful range."""
    _require(0.0 < args.step <= 1.0, f"--step {args.step:g}: must be in (0, 1] (a fraction of the patch)")
    _require(args.num_processes >= 1, f"-np {args.num_processes}: at least 1 export process is needed")
    _require(0.0 <= args.ood_percentile <= 100.0, f"--ood-percentile {args.ood_percentile:g}: must be in [0, 100]")
    _require(args.fda_beta >= 0.0, f"--fda-beta {args.fda_beta:g}: must not be negative")
    _require(args.fda_donors >= 1, f"--fda-donors {args.fda_donors}: at least 1 donor is needed")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MedsegError(message)
