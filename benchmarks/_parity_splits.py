"""The same split for both tools in ``learning_parity.py``: each tool's folds computed by its own
code (in its own venv), compared, and ours given to both (``splits.json`` and nnU-Net's
``splits_final.json``). Without sites the two agree; with sites ours are stratified by site
(every fold validates on every site) and may differ from nnU-Net's, which is recorded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Sequence

import common
from _parity_prepare import write_json
from common import BenchmarkError
from plan_preprocess import WorkLayout

NNUNET_SPLIT_CODE = ("import json,sys; from nnunetv2.utilities.crossval_split import generate_crossval_split as g; "
                     "print(json.dumps(g(json.load(sys.stdin)['cases'], seed=12345, n_splits=5)))")
OURS_SPLIT_CODE = ("import json,sys; from medseg_auto.training.data.splits import make_splits; "
                   "d = json.load(sys.stdin); "
                   "print(json.dumps(make_splits(d['cases'], d['sites'] or None)))")


def tool_splits(python: Path, code: str, cases: Sequence[str],
                sites: dict[str, str] | None = None) -> list[dict[str, list[str]]]:
    """The five folds a tool makes for ``cases`` (computed by the tool's own code, in its venv;
    ours stratifies by ``sites`` when given, nnU-Net has no sites)."""
    payload = {"cases": sorted(cases), "sites": sites or {}}
    result = subprocess.run([str(python), "-c", code], input=json.dumps(payload), capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise BenchmarkError(f"computing splits with {python} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def same_folds(first: Sequence[dict[str, list[str]]], second: Sequence[dict[str, list[str]]]) -> bool:
    """Whether two split lists hold the same folds, in order (case order inside a list ignored)."""
    return len(first) == len(second) and all(
        set(a["train"]) == set(b["train"]) and set(a["val"]) == set(b["val"]) for a, b in zip(first, second))


def align_splits(layout: WorkLayout, nnunet_venv: Path | None, cases: Sequence[str],
                 sites: dict[str, str] | None = None) -> dict[str, Any]:
    """Compare the tools' splits, then give both ours (``splits.json`` and ``splits_final.json``).
    With ``sites`` ours are stratified by site, so they may differ from nnU-Net's (recorded)."""
    ours = tool_splits(common.ours_python(), OURS_SPLIT_CODE, cases, sites)
    check: dict[str, Any] = {"fold0_val_cases": len(ours[0]["val"])}
    if sites:
        check["fold0_val_sites"] = {site: sum(sites.get(case) == site for case in ours[0]["val"])
                                    for site in sorted(set(sites.values()))}
    if nnunet_venv is not None:
        nnunet = tool_splits(nnunet_venv / "bin" / "python", NNUNET_SPLIT_CODE, cases)
        check["nnunet_equals_ours"] = same_folds(ours, nnunet)
    for path in (layout.ours_output / "splits.json", layout.nnunet_output / "splits_final.json"):
        if path.parent.is_dir():
            write_json(path, ours)
    return check
