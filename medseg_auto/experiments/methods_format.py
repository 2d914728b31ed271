"""How the method benchmark shows a leaderboard row (Markdown and HTML share it)."""

from __future__ import annotations

import math
from typing import Any, Mapping

BASE = "Base"


def format_dice(row: Mapping[str, Any] | None) -> str:
    if row is None or is_missing(row.get("dice_mean")):
        return ""
    spread = "" if is_missing(row.get("dice_sd")) else f" ± {row['dice_sd']:.3f}"
    harm = " **harm**" if row.get("harm") else ""
    return f"{row['dice_mean']:.3f}{spread} ({row['n_seeds']}){harm}"


def format_delta(row: Mapping[str, Any] | None) -> str:
    if row is None or is_missing(row.get("diff_vs_base")):
        return "—" if row is not None and row.get("arm") == BASE else ""
    p = row.get("p_holm")
    shown_p = "n/a" if is_missing(p) else f"{p:.3g}"
    return f"{row['diff_vs_base']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] p={shown_p}"


def format_control_delta(row: Mapping[str, Any]) -> str:
    """The difference to the arm's control, as :func:`format_delta` shows the one to Base."""
    return format_delta({"arm": row.get("arm"), "diff_vs_base": row.get("diff_vs_control"),
                         "ci_low": row.get("control_ci_low"), "ci_high": row.get("control_ci_high"),
                         "p_holm": row.get("control_p_holm")})


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
