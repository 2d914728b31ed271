"""``medseg-auto predict``: segment new images with a trained model or fold ensemble."""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.cli.model_source import add_model_argument, resolve_models
from medseg_auto.inference.fda import DEFAULT_BETA, DEFAULT_DONORS
from medseg_auto.inference.ood import DEFAULT_PERCENTILE
from medseg_auto.utils.atomic import atomic_path, read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.predict")
OOD_TABLE = "ood_scores.csv"

EXAMPLES = """\
examples:
  medseg-auto predict -i new_scans/ -o predictions/ -d Hippocampus -c 3d_fullres
  medseg-auto predict -i new_scans/ -o out/ -d Hippocampus -c 3d_fullres -f 0 1 --checkpoint best
  medseg-auto predict -i scan_0000.nii.gz -o out/ -d Hippocampus -c 3d_fullres --no-mirroring
  medseg-auto predict -i images/ -o out/ -d BreastUS -c 2d -tr Base --save-probabilities
  medseg-auto predict -i stu_images/ -o out_fda/ -d BreastUS -c 2d --fda-source BreastUS --fda-site busi
  medseg-auto predict -i new_scans/ -o out/ -d Hippocampus -c 3d_fullres --no-ood
  medseg-auto predict -i imagesTs/ -o out/ -m $nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres
  medseg-auto predict -i scans/ -o out/ -d Hippocampus -c 3d_fullres -num_parts 4 -part_id 0   # 1 of 4 jobs
  torchrun --nproc_per_node 4 -m medseg_auto predict -i scans/ -o out/ -d Hippocampus -c 3d_fullres

Input: a folder in raw-dataset naming (CASE_0000.ext, one file per channel) or plain files
(one single-channel case each); output: one label file per case with the input's format,
shape, spacing, origin and direction, plus summary.json. Existing outputs are kept unless
--overwrite, so an interrupted run resumes. Post-processing chosen by find_best_configuration
is applied when its postprocessing.json exists next to the folds (turn off with --no-postprocessing).

Out-of-distribution score (after ODEx, DART 2022): every case gets the Mahalanobis distance of its
early-layer feature statistics (encoder.0/encoder.1, recorded by hooks during the prediction
itself) to those of the fold's cross-validation cases, in summary.json ("ood") and
ood_scores.csv; cases above the threshold (the 99th percentile of the validation cases' own
leave-one-out distances, --ood-percentile) are logged as warnings and marked "flagged". The
reference is fold_F/ood_reference.json, written by the final validation of training, or made
here once from the training cache when missing, from validation cases of the sites the fold
trained on only (TrainOnSites). It says whether an image looks unlike the training data, not
whether its segmentation failed.

Which cases will fail: every case also gets uncertainty signals read from its own prediction at
almost no cost (inference/uncertainty.py): softmax entropy over the image and over the predicted
foreground, the soft-Dice deficit (1 - the Dice the model expects of its own segmentation), the
disagreement between the mirrored views and, with several folds, between the folds. The failure
score ("failure" in summary.json; failure_score and failure_flagged in ood_scores.csv) follows the
rule the model learned from its own validation cases at the end of training
(fold_F/failure_rule.json): the signal that predicted Dice < 0.5 best there, flagged above the
value that best separated failures from successes. Without that file (a model trained before it
existed, or a validation with fewer than 5 failures or 5 successes) it is the mirrored views'
disagreement above 0.3. Every signal beats the OOD distance at predicting failure (README,
"Which cases will fail"). --no-ood skips all of it.

Fourier domain adaptation (--fda-source, Feather-Light FDA, DART 2022): each case is predicted
once per style donor (--fda-donors, the source cases most similar to it), with the low-frequency
Fourier amplitudes (disc of radius --fda-beta x the smaller image edge) replaced by the donor's
and its phase kept; the softmax is averaged. The donors and their sites are listed in
summary.json. Takes about --fda-donors times as long (each view is a full prediction).
It did NOT help where we measured it: a BUSI-trained model on the STU site lost Dice with it
(README, "Prediction-time FDA"). Our inputs are z-scored per image, which already removes the
brightness and contrast that FDA transfers; what is left in the low band of a small ultrasound
image is the lesion itself. Use it only after checking it on labelled cases of the new site.

Many cases, many processes: -num_parts N -part_id K predicts every N-th case of the sorted list
from the K-th (nnU-Net's meaning; start N jobs with K = 0..N-1 on the same input and output).
Under torchrun each rank takes its share (one GPU per rank when there are GPUs, gloo on CPU).
Each part writes summary_parts/part_K_of_N.json; summary.json is merged once every part is done.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", formatter_class=HelpFormatter, help="segment new images",
                                   description=__doc__ + "\n\n" + EXAMPLES)
    parser.add_argument("-i", "--input", required=True, type=Path, help="input folder or file")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("-d", "--dataset", help="dataset the model was trained on (name or id)")
    parser.add_argument("-c", "--configuration", help="2d, 3d_fullres or 3d_lowres")
    add_model_argument(parser)
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
    parser.add_argument("--fda-source", metavar="NAME",
                        help="Fourier domain adaptation with donors from dataset NAME's preprocessed cases")
    parser.add_argument("--fda-beta", type=float, default=DEFAULT_BETA,
                        help="radius of the swapped low-frequency disc, as a fraction of the smaller image edge")
    parser.add_argument("--fda-donors", type=int, default=DEFAULT_DONORS, help="style donors per case")
    parser.add_argument("--fda-site", metavar="SITE", help="take donors only from this site of the FDA source")
    parser.add_argument("-num_parts", "--num-parts", dest="num_parts", type=int, default=1,
                        help="split the sorted cases into this many parts (one job each)")
    parser.add_argument("-part_id", "--part-id", dest="part_id", type=int, default=0,
                        help="the part this job predicts, 0 .. num_parts-1")
    parser.add_argument("--engine", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                        help="what runs the network on the CPU (the sliding window, weighting and mirroring stay ours); "
                             "auto: torch (measured as fast as OpenVINO on a CPU with bf16, and the OOD score needs "
                             "torch's hooks); openvino/onnxruntime need 'medseg_auto[deploy]'")
    parser.add_argument("--no-ood", action="store_true", help="no out-of-distribution score")
    parser.add_argument("--ood-percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="OOD threshold: this percentile of the validation cases' leave-one-out scores")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.inference.postprocessing import PostprocessingPlan
    from medseg_auto.inference.failure_rule import rule_for_folds
    from medseg_auto.inference.prediction_job import start_job
    from medseg_auto.inference.predict import PredictionOptions, default_autocast, predict_folder

    from medseg_auto.cli.option_checks import check_prediction_options
    from medseg_auto.inference.output_guard import check_prediction_folders
    from medseg_auto.utils.devices import check_device_available

    check_prediction_options(args)
    check_device_available(args.device)  # before the log: a refused run leaves no logs/ behind
    check_prediction_folders(args.input, args.output)
    home = resolve_home(args)
    job = start_job(args.num_parts, args.part_id, args.device)
    source = resolve_models(args, home)  # before the log: a missing or refused model leaves no logs/ behind
    log_file = start_log(args.output, job.log_name, args)
    if job.shard.enabled:
        log.info("%s", job.describe())
    folder, models = source.folder, source.models
    engine = _engine(args, job.device)
    if engine != "torch":
        from medseg_auto.inference.engines import engine_model

        models = [engine_model(model, engine, fp32=args.fp32) for model in models]
    postprocess = None
    postprocessing_file = folder / "postprocessing.json"
    if postprocessing_file.is_file() and not args.no_postprocessing:
        postprocess = PostprocessingPlan.from_json(read_json(postprocessing_file))
        log.info("post-processing from %s: %s", postprocessing_file, postprocess.to_json())
    options = PredictionOptions(
        step_size=args.step, use_mirroring=not args.no_mirroring, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite, device=str(job.device), export_workers=args.num_processes,
        show_progress=not args.no_progress and job.is_main, use_autocast=False if args.fp32 else None,
        uncertainty=not args.no_ood, num_parts=job.shard.num_parts, part_id=job.shard.part_id,
    )
    fda = _fda_adapter(args, home, models) if args.fda_source else None
    started = time.perf_counter()
    ood = None
    if source.is_nnunet and not args.no_ood:
        log.info("OOD scores need a reference from medseg_auto's training; none for an nnU-Net model (as --no-ood)")
        args.no_ood = True
    if not args.no_ood and engine == "torch":
        from medseg_auto.inference.ood_references import make_scorer

        autocast = False if args.fp32 else default_autocast(job.device)
        ood = make_scorer(models, folder, home.preprocessed / folder.parent.name, job.device, autocast,
                          args.ood_percentile)
    rule = rule_for_folds(folder, [m.name for m in models])  # the folds' own failure rule, or the default
    log.info("predicting %s with %s (%s)", args.input, folder.name, ", ".join(m.name for m in models))
    report = predict_folder(args.input, args.output, models, None, options, postprocess, fda=fda, ood=ood)
    elapsed = time.perf_counter() - started
    summary = {
        "model": str(folder), "folds": [m.name for m in models], "checkpoint": args.checkpoint,
        "mirroring": not args.no_mirroring, "step": args.step, "engine": engine, "seconds": round(elapsed, 2),
        "predicted": report.predicted, "skipped_existing": report.skipped_existing, "failed": report.failed,
        "seconds_per_case": {k: round(v, 3) for k, v in report.seconds_per_case.items()}, "log": str(log_file),
        "fda": _fda_summary(args, fda, report) if fda is not None else None,
        "ood": _ood_summary(args, ood, report, fda is not None, rule),
    }

    def write_summary(final: dict) -> None:  # once per job: the merged summary when split (see .sharding)
        cases = (final.get("ood") or {}).get("cases") or {}
        if cases:
            scores = {case: {k: v for k, v in entry.items() if k not in ("signals", "failure")}
                      for case, entry in cases.items() if "score" in entry}
            signals = {case: entry["signals"] for case, entry in cases.items() if "signals" in entry}
            _write_ood_table(args.output / OOD_TABLE, scores, [m.name for m in models], signals, rule)
            if isinstance(final["ood"].get("failure"), dict):  # parts merged: recount over every case
                final["ood"]["failure"]["likely_failed"] = sorted(
                    case for case, entry in cases.items() if entry.get("failure", {}).get("flagged"))
        write_json_atomic(args.output / "summary.json", final)

    job.finish(args.output, summary, write_summary)
    log.info("%d predicted, %d kept, %d failed in %.1f s -> %s", len(report.predicted), len(report.skipped_existing),
             len(report.failed), elapsed, args.output)
    return 2 if report.failed else 0


def _engine(args: argparse.Namespace, device) -> str:
    from medseg_auto.inference.engines import resolve_engine

    if args.engine == "auto" and not args.no_ood:
        return "torch"
    if args.engine not in ("auto", "torch") and not args.no_ood:
        log.warning("--engine %s: no OOD score (it reads torch's feature hooks); pass --no-ood to silence this",
                    args.engine)
    return resolve_engine(args.engine, device)


def _fda_adapter(args: argparse.Namespace, home, models):
    from medseg_auto.inference.fda_donors import DonorBank, FdaAdapter, open_source_cache

    model = models[0]
    cache = open_source_cache(home.preprocessed_dataset(args.fda_source), model.plans, model.config)
    bank = DonorBank.load(cache, args.fda_site)
    log.info("FDA: %d donor case(s) in %s%s, beta %g, %d donor(s) per case", len(bank.case_ids), cache.folder,
             f" (site {args.fda_site})" if args.fda_site else "", args.fda_beta, args.fda_donors)
    log.info("FDA lowered Dice on the one external site it was measured on (README, 'Prediction-time FDA'); "
             "check it on labelled cases of your site before relying on it")
    return FdaAdapter(bank, args.fda_beta, args.fda_donors, spatial_axes=2 if model.config.is_2d else 3)


def _fda_summary(args: argparse.Namespace, fda, report) -> dict:
    from medseg_auto.inference.fda_donors import DESCRIPTOR_VERSION

    return {
        "source": args.fda_source, "cache": str(fda.bank.cache.folder), "site": args.fda_site, "beta": fda.beta,
        "donors_per_case": fda.donors, "window": "disc of radius beta x min(edge) in the centred spectrum",
        "similarity": DESCRIPTOR_VERSION, "donors": report.fda_donors,
    }


def _ood_summary(args: argparse.Namespace, ood, report, with_fda: bool, rule) -> dict:
    from medseg_auto.inference.uncertainty import case_entries

    if args.no_ood:
        return {"skipped": "--no-ood"}
    if args.engine not in ("auto", "torch"):
        return {"skipped": f"--engine {args.engine} (the OOD score needs torch's feature hooks)"}
    cases = case_entries(report.ood, report.uncertainty, rule.signal, rule.threshold)
    failure = {**rule.to_json(),
               "likely_failed": sorted(case for case, entry in cases.items() if entry.get("failure", {}).get("flagged"))}
    if failure["likely_failed"]:
        log.warning("%d case(s) likely failed (%s > %.4g, %s rule): %s; check their segmentations",
                    len(failure["likely_failed"]), rule.signal, rule.threshold, rule.source,
                    ", ".join(failure["likely_failed"][:20]))
    if ood is None:
        return {"skipped": "no OOD reference could be made (see the log)", "failure": failure, "cases": cases,
                "table": OOD_TABLE}
    return {
        "percentile": ood.percentile, "taps": ood.recorder.taps,
        "thresholds": {name: round(t, 4) for name, t in zip(ood.names, ood.thresholds) if t is not None},
        "scored_images": "the input images" + (
            "; score_fda_adapted: the FDA-adapted images (statistics over all donors)" if with_fda else ""),
        "flagged": sorted(case for case, entry in report.ood.items() if entry["flagged"]),
        "failure": failure, "cases": cases, "table": OOD_TABLE,
    }


def _write_ood_table(path: Path, scores: dict, fold_names: list[str], signals: dict | None = None,
                     rule=None) -> None:
    from medseg_auto.inference.failure_rule import DEFAULT_RULE
    from medseg_auto.inference.uncertainty import UNCERTAINTY_SIGNALS

    rule = rule or DEFAULT_RULE

    signals = signals or {}
    with atomic_path(path, suffix=".csv") as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "ood_score", "threshold", "flagged", "ood_score_fda_adapted", *fold_names,
                         *UNCERTAINTY_SIGNALS, "failure_score", "failure_flagged"])
        for case_id in sorted(set(scores) | set(signals)):
            entry = scores.get(case_id, {})
            case_signals = signals.get(case_id, {})
            writer.writerow([case_id, entry.get("score", ""), entry.get("threshold", ""),
                             int(entry["flagged"]) if "flagged" in entry else "", entry.get("score_fda_adapted", ""),
                             *[entry.get("per_fold", {}).get(name, "") for name in fold_names],
                             *[case_signals.get(name, "") for name in UNCERTAINTY_SIGNALS],
                             case_signals.get(rule.signal, ""),
                             int(case_signals[rule.signal] > rule.threshold) if rule.signal in case_signals else ""])
