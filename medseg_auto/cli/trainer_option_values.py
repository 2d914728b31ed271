"""``--trainer-option KEY=VALUE`` of the experiment commands."""

from __future__ import annotations

import json
from typing import Any

from medseg_auto.errors import MedsegError


def parse_trainer_options(values: list[str]) -> dict[str, Any]:
    """``["fd_weight=0.1", "mode=cos"]`` -> ``{"fd_weight": 0.1, "mode": "cos"}``."""
    options: dict[str, Any] = {}
    for value in values:
        key, separator, raw = value.partition("=")
        if not separator or not key.strip():
            raise MedsegError(f"--trainer-option {value!r}: expected KEY=VALUE, e.g. --trainer-option fd_weight=0.1")
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    return options
