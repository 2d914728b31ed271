#!/usr/bin/env python3
"""Which per-case score predicts segmentation failure (Dice < 0.5): AUROC per score and flag rates per set.

Input: pairs of ``NAME=PRED_DIR:EVAL_DIR`` (a ``predict`` output folder, whose ``ood_scores.csv``
holds the feature-distance OOD score and the uncertainty signals, and an ``evaluate`` output
folder of the same cases, whose ``metrics.csv`` gives Dice); ``NAME`` becomes the cases' site.
Prints and writes (``--out``: ``.csv``, ``.json`` and ``.md``) one row per set and for all sets
together, with the failure rate, the share flagged by the OOD threshold (``flagged``) and by the
failure score (``failure_flagged``), and the AUROC of every score.

    PYTHONPATH=. python benchmarks/failure_prediction.py busi_val=pred_busi:eval_busi stu=pred_stu:eval_stu \\
        --out failure_prediction
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from medseg_auto.evaluation.failure_prediction import failure_table, load_cases, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", metavar="NAME=PRED_DIR:EVAL_DIR")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = parser.parse_args()
    frames = []
    for item in args.sets:
        name, folders = item.split("=", 1)
        prediction, evaluation = folders.split(":", 1)
        frames.append(load_cases(Path(prediction), Path(evaluation), site=name))
    cases = pd.concat(frames, ignore_index=True)
    table = failure_table(cases.rename(columns={"ood_score": "feature_distance"}).drop(
        columns=[c for c in cases.columns if c.startswith("fold_") and c != "fold_disagreement"]
        + ["ood_score_fda_adapted", "failure_score"], errors="ignore"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    cases.to_csv(args.out.with_name(args.out.name + "_cases.csv"), index=False)
    args.out.with_suffix(".json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    markdown = markdown_table(table)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
