"""Shared fixture of the benchmark-script tests: the scripts import each other by bare name, so
they are imported with ``benchmarks/`` on the path, as when run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str):
    """Import ``benchmarks/NAME.py`` (its sibling imports resolved) and return the module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def parity():
    """``learning_parity`` imported as the scripts import each other; ``benchmarks/`` stays on
    the path while the module's tests run (some functions import siblings when called)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("learning_parity")
    finally:
        sys.path.remove(str(BENCHMARKS))
