"""Agreement of ``medseg-auto predict -m`` with nnU-Net v2's own prediction, same model, same cases.

A model trained by nnU-Net (its results folder) predicts a folder of images twice: by nnU-Net
(``nnUNetv2_predict_from_modelfolder``, run here with ``--run-nnunet``, or given as a folder of
its predictions) and by us (``predict -m``: nnU-Net's plans and weights, our preprocessing,
sliding window and export). ``medseg-auto evaluate`` then scores ours against nnU-Net's as the
reference; the target is Dice >= 0.99 per class.

    python benchmarks/nnunet_model_agreement.py --model $nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres \\
        --images imagesTs/ --run-nnunet -f 0

Results: ``benchmarks/_work/nnunet_model_agreement/agreement.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import busy_machine_warning, nnunet_command, nnunet_venv, ours_command, repo_root, write_results  # noqa: E402

TARGET_DICE = 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--model", type=Path, required=True, help="nnU-Net results folder TRAINER__PLANS__CONFIG")
    parser.add_argument("--images", type=Path, required=True, help="images to predict (CASE_0000.nii.gz, ...)")
    parser.add_argument("--nnunet-predictions", type=Path, default=None, help="nnU-Net's predictions, if made already")
    parser.add_argument("--run-nnunet", action="store_true", help="run nnUNetv2_predict_from_modelfolder first")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"])
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--work", type=Path, default=repo_root() / "benchmarks" / "_work" / "nnunet_model_agreement")
    args = parser.parse_args(argv)
    work = args.work
    nnunet_predictions = args.nnunet_predictions or work / "nnunet"
    if args.run_nnunet:
        program = nnunet_command(nnunet_venv(), "nnUNetv2_predict_from_modelfolder")
        subprocess.run([str(program), "-i", str(args.images), "-o", str(nnunet_predictions), "-m", str(args.model),
                        "-f", *args.folds, "-chk", args.checkpoint, "-device", "cpu", "-npp", "1", "-nps", "1"],
                       check=True)
    ours = work / "ours"
    subprocess.run([*ours_command(), "predict", "-i", str(args.images), "-o", str(ours), "-m", str(args.model),
                    "-f", *args.folds, "-chk", args.checkpoint, "-device", "cpu", "--overwrite", "--no-progress"],
                   check=True)
    evaluation = work / "evaluation"
    subprocess.run([*ours_command(), "evaluate", "-pred", str(ours), "-ref", str(nnunet_predictions),
                    "-o", str(evaluation), "-np", "1", "--no-progress"], check=True)
    summary = json.loads((evaluation / "summary.json").read_text())
    rows = [{"class": label, "name": summary["labels"][label], "mean_dice": values["dice"],
             "cases": values["num_cases"]} for label, values in summary["per_class"].items()]
    worst = min((case["foreground_dice"] for case in summary["worst_cases"]), default=float("nan"))
    metadata = {"model": str(args.model), "images": str(args.images), "folds": args.folds,
                "worst_case_foreground_dice": worst, "target": TARGET_DICE, "load": busy_machine_warning()}
    paths = write_results(work, "agreement", rows, ["class", "name", "mean_dice", "cases"], metadata)
    for row in rows:
        print(f"class {row['class']} ({row['name']}): mean Dice ours vs nnU-Net {row['mean_dice']:.4f} "
              f"over {row['cases']} case(s)")
    print(f"worst case foreground Dice {worst:.4f}; results: {paths['md']}")
    return 0 if all(row["mean_dice"] >= TARGET_DICE for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
