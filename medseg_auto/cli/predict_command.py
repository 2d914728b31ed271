"""``medseg-auto predict``: segment new images with a trained model or fold ensemble."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.predict")

EXAMPLES = """\
examples:
  medseg-auto predict -i new_scans/ -o predictions/ -d Hippocampus -c 3d_fullres
  medseg-auto predict -i new_scans/ -o out/ -d Hippocampus -c 3d_fullres -f 0 1 --checkpoint best
  medseg-auto predict -i scan_0000.nii.gz -o out/ -d Hippocampus -c 3d_fullres --no-mirroring
  medseg-auto predict -i images/ -o out/ -d BreastUS -c 2d -tr Base --save-probabilities

Input: a folder in raw-dataset naming (CASE_0000.ext, one file per channel) or plain files
(one single-channel case each); output: one label file per case with the input's format,
shape, spacing, origin and direction, plus summary.json. Existing outputs are kept unless
--overwrite, so an interrupted run resumes. Post-processing chosen by find_best_configuration
is applied when its postprocessing.json exists next to the folds (turn off with --no-postprocessing).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", formatter_class=HelpFormatter, help="segment new images",
                                   description=__doc__ + "\n\n" + EXAMPLES)
    parser.add_argument("-i", "--input", required=True, type=Path, help="input folder or file")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("-d", "--dataset", required=True, help="dataset the model was trained on (name or id)")
    parser.add_argument("-c", "--configuration", required=True, help="2d, 3d_fullres or 3d_lowres")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all trained)")
    parser.add_argument("-tr", "--trainer", default="Base", help="trainer name")
    parser.add_argument("-p", "--plans", default="plans", help="plans name")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument("--no-mirroring", action="store_true", help="no mirroring test-time augmentation (~8x faster in 3D)")
    parser.add_argument("--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    parser.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz class probabilities")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--no-postprocessing", action="store_true", help="ignore postprocessing.json")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--fp32", action="store_true",
                        help="float32 throughout (default: fp16 autocast on CUDA, bf16 on a CPU with native bf16)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="export worker processes")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.inference.model_loading import experiment_folder, load_folds
    from medseg_auto.inference.postprocessing import PostprocessingPlan
    from medseg_auto.inference.predict import PredictionOptions, predict_folder

    home = resolve_home(args)
    log_file = start_log(args.output, "predict", args)
    folder = experiment_folder(home.results_dataset(args.dataset), args.trainer, args.plans, args.configuration)
    models = load_folds(folder, args.folds, args.checkpoint)
    postprocess = None
    postprocessing_file = folder / "postprocessing.json"
    if postprocessing_file.is_file() and not args.no_postprocessing:
        postprocess = PostprocessingPlan.from_json(read_json(postprocessing_file))
        log.info("post-processing from %s: %s", postprocessing_file, postprocess.to_json())
    options = PredictionOptions(
        step_size=args.step, use_mirroring=not args.no_mirroring, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite, device=args.device, export_workers=args.num_processes,
        show_progress=not args.no_progress, use_autocast=False if args.fp32 else None,
    )
    log.info("predicting %s with %s (%s)", args.input, folder.name, ", ".join(m.name for m in models))
    started = time.perf_counter()
    report = predict_folder(args.input, args.output, models, None, options, postprocess)
    elapsed = time.perf_counter() - started
    summary = {
        "model": str(folder), "folds": [m.name for m in models], "checkpoint": args.checkpoint,
        "mirroring": not args.no_mirroring, "step": args.step, "seconds": round(elapsed, 2),
        "predicted": report.predicted, "skipped_existing": report.skipped_existing, "failed": report.failed,
        "seconds_per_case": {k: round(v, 3) for k, v in report.seconds_per_case.items()}, "log": str(log_file),
    }
    write_json_atomic(args.output / "summary.json", summary)
    log.info("%d predicted, %d kept, %d failed in %.1f s -> %s", len(report.predicted), len(report.skipped_existing),
             len(report.failed), elapsed, args.output)
    return 2 if report.failed else 0
