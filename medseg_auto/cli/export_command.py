"""``medseg-auto export``: a trained model's networks as ONNX files, for deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_logging_arguments, start_log
from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.export")

DESCRIPTION = """\
Export the networks of a trained model folder (results/DATASET/TRAINER__PLANS__CONFIG) to ONNX:
one fold_F.onnx per fold, plus plans.json and export.json (opset, input and output names,
dynamic axes, patch size, mirroring axes, and the largest logit difference between ONNX Runtime
and torch in float32 on a random patch, which must stay below --tolerance).

The graph is the network only: image (B, C, *spatial) float32 -> logits (B, K, *spatial)
float32, batch and spatial axes dynamic (spatial sizes divisible by the network's total stride),
deep-supervision heads dropped. Preprocessing, the sliding window with Gaussian weighting,
mirroring and writing labels stay in medseg_auto: 'predict --engine onnxruntime|openvino' uses
the same export in memory.

examples:
  medseg-auto export medseg_auto_data/results/Dataset004_Hippocampus/Base__plans__3d_fullres --format onnx
  medseg-auto export MODEL_FOLDER --format onnx -f 0 --checkpoint best --opset 17 -o deploy/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export trained networks to ONNX", description=DESCRIPTION,
                                   formatter_class=HelpFormatter)
    parser.add_argument("model_folder", type=Path, metavar="MODEL_FOLDER",
                        help="results/DATASET/TRAINER__PLANS__CONFIG of a trained model")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: all trained)")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest allowed |logit difference| between ONNX Runtime and torch (float32)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: MODEL_FOLDER/onnx)")
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.inference.model_export import export_model_folder

    if not args.model_folder.is_dir():
        raise MedsegError(f"{args.model_folder}: not a folder (expected results/DATASET/TRAINER__PLANS__CONFIG)")
    output = args.output or args.model_folder / "onnx"
    log_file = start_log(output, "export", args)
    report = export_model_folder(args.model_folder, output, args.folds, args.checkpoint, args.opset, args.tolerance)
    for fold in report["folds"]:
        log.info("%s -> %s (max |difference| to torch %.2g)", fold["fold"], fold["file"], fold["max_abs_difference"])
    log.info("export.json, plans.json and the log (%s) in %s", log_file, output)
    return 0
