#!/usr/bin/env python3
"""Benchmark prediction: ``medseg-auto predict`` against ``nnUNetv2_predict``, seconds per case.

Both tools predict the same raw images (validation cases of fold 0) with a network of the same
plans (Hippocampus 3d_fullres by default: the two tools' plans agree field by field), the same
sliding-window step, the same mirroring (all axes, or none with ``--no-mirroring``), on the
CPU, with the same number of worker processes (ours: ``-np`` export workers; nnU-Net: ``-npp``
preprocessing and ``-nps`` export workers). The weights differ and do not matter for speed: each
tool trains its own fold 0 for one epoch of a few iterations first (not timed; reused on later
runs), through ``_train_driver.py``.

Each tool runs twice: on one case, then on ``--cases`` cases. Whole commands are measured
(``common.measure_command``), so ``s_per_case`` (wall time / cases) includes start-up: loading
torch, the model and the worker processes. ``s_per_case_after_startup`` is the difference of
the two runs divided by the extra cases: the cost of one more case once running. The ratio row
is ours / nnU-Net (target: at most 0.5 per case).

Ours runs several times (``--engines``): torch (bf16 autocast where the CPU has native bf16),
torch in float32 (the reference), and the network call through ONNX Runtime and OpenVINO
(``predict --engine``); all with ``--no-ood``. Each of ours gets its per-case Dice against the
float32 torch labels (``dice_vs_fp32_*``), and every tool the achieved GFLOP/s of the network
(``engine_speed.network_gflop_per_case`` / s per case after start-up) as a fraction of this
CPU's bf16 and float32 matrix-product peak (``engine_speed.matmul_peak_gflops``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import common
import engine_speed
import plan_preprocess
import train_throughput
from common import BenchmarkError, Measurement
from plan_preprocess import (
    DATASET_FOLDER, DATASET_ID, DATASET_NAME, FILE_ENDING, NNUNET_PLANS_FILE, ToolRun, WorkLayout,
)
from train_throughput import NNUNET_TOOL, OURS_TOOL

OURS_CHECKPOINT = "checkpoint_final.pt"
NNUNET_CHECKPOINT = "checkpoint_final.pth"
OURS_FP32_TOOL = "ours fp32"
ENGINE_TOOLS = {"onnxruntime": "ours onnxruntime", "openvino": "ours openvino"}
TABLE_COLUMNS = ("tool", "mirroring", "step", "cases", "wall_s", "s_per_case", "s_per_case_after_startup",
                 "startup_s", "peak_rss_mib", "peak_pss_mib", "cpu_s", "outputs", "dice_vs_fp32_min",
                 "dice_vs_fp32_mean", "achieved_gflops", "frac_bf16_peak", "frac_fp32_peak", "load_before", "returncode")
RATIO_KEYS = ("wall_s", "s_per_case", "s_per_case_after_startup", "peak_rss_mib", "peak_pss_mib", "cpu_s")

EXAMPLES = """\
examples:
  # 10 validation cases, 3d_fullres, mirroring on, step 0.5, one worker process per tool
  .venv/bin/python benchmarks/predict_speed.py

  # without mirroring, 20 cases, 2 worker processes per tool
  .venv/bin/python benchmarks/predict_speed.py --no-mirroring --cases 20 -np 2

  # smoke run while developing (the one-case start-up runs are skipped)
  .venv/bin/python benchmarks/predict_speed.py --cases 2 --no-startup-run

The models are trained once (1 epoch x --train-iterations per tool, not timed) and reused;
--retrain trains them again. Results: WORK/predict_speed.{json,csv,md}, predictions in
WORK/predictions/, logs in WORK/logs/.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict_speed.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=plan_preprocess.HelpFormatter)
    train_throughput.add_data_arguments(parser, "predict_speed", cases_flag="--dataset-cases")
    parser.add_argument("--cases", type=int, default=10, help="validation cases (fold 0) to predict")
    parser.add_argument("-c", "--configuration", default="3d_fullres", choices=plan_preprocess.CONFIGURATIONS)
    parser.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring (both tools)")
    parser.add_argument("--step", type=float, default=0.5, help="sliding-window step, a fraction of the patch")
    parser.add_argument("-np", "--num-processes", type=int, default=1,
                        help="worker processes: ours -np, nnU-Net -npp and -nps")
    parser.add_argument("--train-iterations", type=int, default=2, help="iterations of the one training epoch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both tools train and predict")
    parser.add_argument("--retrain", action="store_true", help="train the models again even if they exist")
    parser.add_argument("--no-startup-run", action="store_true",
                        help="skip the one-case runs (no s_per_case_after_startup, no startup_s)")
    parser.add_argument("--skip-ours", action="store_true", help="do not run medseg-auto")
    parser.add_argument("--skip-nnunet", action="store_true", help="do not run nnU-Net v2")
    parser.add_argument("--engines", nargs="*", default=list(ENGINE_TOOLS), choices=list(ENGINE_TOOLS),
                        help="our inference engines to run besides torch (bf16) and torch fp32")
    args = parser.parse_args(argv)
    if args.skip_ours and args.skip_nnunet:
        parser.error("--skip-ours and --skip-nnunet together leave nothing to measure")
    if args.cases < 1 or (args.cases < 2 and not args.no_startup_run):
        parser.error("--cases must be at least 2 (or 1 with --no-startup-run)")
    return args


def slug(tool: str) -> str:
    """A file-name form of a tool's name (``ours onnxruntime`` -> ``ours_onnxruntime``)."""
    return "".join(c if c.isalnum() else "_" for c in tool.replace("-", "")).lower()


# --- models (not timed) --------------------------------------------------------------------

def checkpoint_path(tool: str, layout: WorkLayout, configuration: str) -> Path:
    if tool == NNUNET_TOOL:
        return (layout.nnunet_results / DATASET_FOLDER / f"nnUNetTrainer__nnUNetPlans__{configuration}" / "fold_0"
                / NNUNET_CHECKPOINT)
    return layout.ours_home / "results" / DATASET_FOLDER / f"Base__plans__{configuration}" / "fold_0" / OURS_CHECKPOINT


def plans_path(tool: str, layout: WorkLayout) -> Path | None:
    if tool == NNUNET_TOOL:
        return layout.nnunet_output / NNUNET_PLANS_FILE
    return plan_preprocess.ours_plans_file(layout.ours_output)


def ensure_model(tool: str, layout: WorkLayout, args: argparse.Namespace) -> None:
    """Train fold 0 for one short epoch unless a checkpoint newer than the plans exists."""
    checkpoint, plans = checkpoint_path(tool, layout, args.configuration), plans_path(tool, layout)
    fresh = checkpoint.is_file() and plans is not None and checkpoint.stat().st_mtime > plans.stat().st_mtime
    if fresh and not args.retrain:
        return
    result = layout.root / "driver" / f"train_{tool.split()[0].replace('-', '')}.json"
    cmd, env = train_throughput.driver_run(tool, layout, args.configuration, args.nnunet_venv, result, epochs=1,
                                           iterations=args.train_iterations, val_iterations=1,
                                           num_workers=train_throughput.default_workers(), device=args.device)
    log_path = layout.logs / f"train_{tool.split()[0].replace('-', '')}.log"
    print(f"training a model with {tool} (not timed): {' '.join(cmd)}", flush=True)
    measurement = common.measure_command(cmd, env=env, cwd=layout.root, log_path=log_path)
    if measurement.returncode != 0 or not checkpoint.is_file():
        raise BenchmarkError(f"training with {tool} did not write {checkpoint} (log: {log_path}):\n"
                             f"{common.log_tail(log_path)}")


# --- inputs ----------------------------------------------------------------------------------

def validation_cases(layout: WorkLayout, cases: Sequence[str], count: int) -> list[str]:
    """The first ``count`` validation cases of fold 0 (ours ``splits.json`` or nnU-Net's
    ``splits_final.json``: the same folds), else the last ``count`` cases."""
    for splits_file in (layout.ours_output / "splits.json", layout.nnunet_output / "splits_final.json"):
        splits = common.read_json_or_none(splits_file)
        if splits:
            chosen = sorted(splits[0]["val"])[:count]
            break
    else:
        chosen = list(cases)[-count:]
    if len(chosen) < count:
        raise BenchmarkError(f"--cases {count}: fold 0 has only {len(chosen)} validation cases")
    return chosen


def input_folder(layout: WorkLayout, cases: Sequence[str]) -> Path:
    """``WORK/inputs/N_cases/`` with copies of the cases' raw images (raw-dataset naming)."""
    folder = layout.root / "inputs" / f"{len(cases)}_cases"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for case in cases:
        name = f"{case}_0000{FILE_ENDING}"
        shutil.copyfile(layout.raw_dataset / "imagesTr" / name, folder / name)
    return folder


# --- the measured runs -----------------------------------------------------------------------

def predict_run(tool: str, layout: WorkLayout, args: argparse.Namespace, source: Path, target: Path) -> ToolRun:
    workers = str(args.num_processes)
    if tool == NNUNET_TOOL:
        program = [str(common.nnunet_command(common.nnunet_venv(args.nnunet_venv), "nnUNetv2_predict"))]
        cmd = [*program, "-i", str(source), "-o", str(target), "-d", str(DATASET_ID), "-c", args.configuration,
               "-f", "0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-step_size", str(args.step), "-device", args.device,
               "-npp", workers, "-nps", workers, "--disable_progress_bar"]
        cmd += ["--disable_tta"] if args.no_mirroring else []
        return ToolRun(tool, cmd, [*program, "-h"], layout.nnunet_env(), target)
    program = [*common.ours_command(), "predict"]
    cmd = [*program, "-i", str(source), "-o", str(target), "-d", DATASET_NAME, "-c", args.configuration, "-f", "0",
           "--step", str(args.step), "-np", workers, "--device", args.device, "--home", str(layout.ours_home),
           "--no-progress"]
    cmd += ["--no-mirroring"] if args.no_mirroring else []
    engine = next((name for name, label in ENGINE_TOOLS.items() if label == tool), "torch")
    cmd += ["--no-ood", "--engine", engine] + (["--fp32"] if tool == OURS_FP32_TOOL else [])
    return ToolRun(tool, cmd, [*program, "--help"], {}, target)


def measure_prediction(run: ToolRun, layout: WorkLayout, cases: int) -> tuple[Measurement, int, float]:
    """Measure one prediction run into an emptied output folder; returns the measurement, the
    number of segmentations written and the load average before it."""
    if run.output.exists():
        shutil.rmtree(run.output)
    warning = common.busy_machine_warning()
    if warning:
        print(warning, file=sys.stderr)
    load_before = os.getloadavg()[0]
    log_path = layout.logs / f"predict_{slug(run.tool)}_{cases}.log"
    print(f"[{run.tool}, {cases} case(s)] {' '.join(run.cmd)}", flush=True)
    measurement = common.measure_command(run.cmd, env=run.env, cwd=layout.root, log_path=log_path)
    outputs = len(list(run.output.glob(f"*{FILE_ENDING}"))) if run.output.is_dir() else 0
    print(f"[{run.tool}, {cases} case(s)] exit {measurement.returncode} after {measurement.wall_s:.1f} s, "
          f"{outputs} segmentations, peak {measurement.peak_rss_mib:.0f} MiB (log: {log_path})", flush=True)
    if measurement.returncode != 0:
        print(common.log_tail(log_path), file=sys.stderr)
    return measurement, outputs, load_before


def tool_row(tool: str, args: argparse.Namespace, full: tuple[Measurement, int, float],
             one: tuple[Measurement, int, float] | None) -> dict[str, Any]:
    measurement, outputs, load_before = full
    row: dict[str, Any] = {"tool": tool, "mirroring": "off" if args.no_mirroring else "on", "step": args.step,
                           "cases": args.cases, **measurement.as_dict(), "s_per_case": measurement.wall_s / args.cases,
                           "outputs": outputs, "load_before": load_before}
    if one is not None and one[0].returncode == 0:
        per_case = (measurement.wall_s - one[0].wall_s) / (args.cases - 1)
        row.update(s_per_case_after_startup=per_case, startup_s=one[0].wall_s - per_case,
                   one_case=one[0].as_dict())
    return row


def add_agreement_and_throughput(rows: list[dict[str, Any]], runs: dict, layout: WorkLayout,
                                  args: argparse.Namespace, chosen: Sequence[str]) -> dict[str, Any]:
    """Per-case Dice against ours in float32 (ours only: nnU-Net's weights differ) and the
    achieved fraction of the CPU's matrix-product peak (every tool: the same network and windows)."""
    reference = runs.get((OURS_FP32_TOOL, args.cases))
    for row in rows:
        if reference is not None and row["tool"] != NNUNET_TOOL:
            agreement = engine_speed.dice_agreement(reference.output, runs[(row["tool"], args.cases)].output, FILE_ENDING)
            row.update(dice_vs_fp32_min=agreement["min"], dice_vs_fp32_mean=agreement["mean"],
                       dice_vs_fp32_per_case=agreement["per_case"])
    plans = plans_path(OURS_TOOL, layout)
    if plans is None:
        return {}
    from medseg_auto.planning.plans import Plans

    identifier = Plans.load(plans).configuration(args.configuration).data_identifier
    work = engine_speed.network_gflop_per_case(plans, args.configuration,
                                               [layout.ours_output / identifier / f"{case}.npy" for case in chosen],
                                               args.step, not args.no_mirroring)
    peak = engine_speed.matmul_peak_gflops()
    for row in rows:
        seconds = row.get("s_per_case_after_startup") or row.get("s_per_case")
        if seconds:
            row["achieved_gflops"] = work["gflop_per_case"] / seconds
            row["frac_bf16_peak"] = row["achieved_gflops"] / peak["peak_bf16_gflops"]
            row["frac_fp32_peak"] = row["achieved_gflops"] / peak["peak_fp32_gflops"]
    return {**work, **peak}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layout = WorkLayout(args.work)
    cases = train_throughput.prepare_data(args, layout, need_ours=not args.skip_ours, need_nnunet=not args.skip_nnunet)
    base_tools = ([] if args.skip_nnunet else [NNUNET_TOOL]) + ([] if args.skip_ours else [OURS_TOOL])
    for tool in base_tools:
        ensure_model(tool, layout, args)
    ours_variants = [] if args.skip_ours else [OURS_FP32_TOOL, *[ENGINE_TOOLS[name] for name in args.engines]]
    tools = [*base_tools, *ours_variants]
    chosen = validation_cases(layout, cases, args.cases)
    sources = {args.cases: input_folder(layout, chosen)}
    if not args.no_startup_run:
        sources[1] = input_folder(layout, chosen[:1])
    runs = {(tool, count): predict_run(tool, layout, args, source,
                                       layout.root / "predictions" / f"{slug(tool)}_{count}")
            for tool in tools for count, source in sources.items()}
    for run in runs.values():
        plan_preprocess.check_runs(run)
    measured = {}
    for count in sorted(sources):  # one-case runs first, the tools alternating: a change of load hits both
        for tool in tools:
            measured[(tool, count)] = measure_prediction(runs[(tool, count)], layout, count)

    rows = [tool_row(tool, args, measured[(tool, args.cases)], measured.get((tool, 1))) for tool in tools]
    for row in rows:
        row["command"] = " ".join(runs[(row["tool"], args.cases)].cmd)
    throughput = add_agreement_and_throughput(rows, runs, layout, args, chosen)
    by_tool = {row["tool"]: row for row in rows}
    if NNUNET_TOOL in by_tool:
        for tool in (OURS_TOOL, *ours_variants):
            if tool in by_tool:
                ratios = {key: common.ratio(by_tool[tool].get(key), by_tool[NNUNET_TOOL].get(key)) for key in RATIO_KEYS}
                rows.append({"tool": f"ratio {tool}/nnU-Net", **ratios})
    metadata = {**train_throughput.run_metadata(args, cases, "predict_speed"), "predicted_cases": chosen,
                "throughput": throughput}
    paths = common.write_results(layout.root, "predict_speed", rows, TABLE_COLUMNS, metadata)

    after_startup = "" if args.no_startup_run else (
        f"; s_per_case_after_startup = (wall of {args.cases} cases - wall of 1 case) / {args.cases - 1}")
    print(f"\nprediction, {DATASET_FOLDER} {args.configuration}, {args.cases} validation cases of fold 0, "
          f"mirroring {'off' if args.no_mirroring else 'on'}, step {args.step}, {args.num_processes} worker "
          f"process(es) per tool, CPU; ours without the OOD score.\ns_per_case = wall / cases (start-up included){after_startup}; memory: peak "
          "summed RSS / PSS of the process tree; ratio: ours / nnU-Net (target <= 0.33 per case); dice_vs_fp32: per-case Dice against ours in float32 (target >= 0.99)\n")
    print(common.markdown_table(rows, TABLE_COLUMNS))
    if throughput:
        print(f"\nnetwork work: {throughput['gflop_per_case']:.1f} GFLOP per case ({throughput['windows_per_case']:.2f} "
              f"windows x {throughput['views']} views x {throughput['gflop_per_window_view']:.2f} GFLOP); CPU peak "
              f"(torch matmul, {throughput['threads']} threads): bf16 {throughput['peak_bf16_gflops']:.0f} GFLOP/s, "
              f"fp32 {throughput['peak_fp32_gflops']:.0f} GFLOP/s")
    print(f"\n1-minute load average after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"results written to {paths['json'].parent}")
    ok = all(measurement.returncode == 0 and outputs == count
             for (_, count), (measurement, outputs, _) in measured.items())
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as error:
        print(f"predict_speed.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
