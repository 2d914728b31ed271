#!/usr/bin/env python3
"""Benchmark training throughput: our base trainer against nnU-Net v2's ``nnUNetTrainer``.

Both tools train the same plans (nnU-Net's and ours agree field by field for Hippocampus, see
``plan_preprocess.py``) with the same batch and patch, the same number of data-augmentation
processes and all cores for torch, a few epochs of a few iterations each. Every training
iteration is timed from inside the training process by ``_train_driver.py`` (which wraps the
trainers' ``train_step`` and batch iterator without changing either package): the time the
loop waits for its batch plus the time of the step. The first epoch is warm-up and is dropped,
as are start-up, validation and checkpoints. Peak memory is that of the whole process tree
over the whole run (``common.measure_command``).

Rows per configuration: nnU-Net v2 (float32: it never autocasts on CPU), ours with its default
bfloat16 autocast on CPU, and ours in float32 (``--no-bf16``), so the comparison is honest
about what the speed-up comes from. The ratio column is ours / nnU-Net in iterations per second
(target: at least 1.5).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

import common
import plan_preprocess
from common import BenchmarkError, Measurement
from plan_preprocess import DATASET_FOLDER, DATASET_NAME, NNUNET_PLANS_FILE, WorkLayout

DRIVER = Path(__file__).resolve().with_name("_train_driver.py")
NNUNET_TOOL, OURS_TOOL, OURS_FP32_TOOL = "nnU-Net v2", "ours", "ours --no-bf16"
DEFAULT_BATCH_SIZES = ("2d=32",)
TABLE_COLUMNS = ("configuration", "tool", "precision", "batch", "patch", "timed_its", "s_per_it", "step_s", "wait_s",
                 "it_per_s", "it_per_s_vs_nnunet", "peak_rss_mib", "peak_pss_mib", "wall_s", "load_before",
                 "returncode")

EXAMPLES = """\
examples:
  # 3d_fullres and 2d (batch 32 for both tools), 2 epochs x 5 iterations, the first epoch is warm-up
  .venv/bin/python benchmarks/train_throughput.py

  # longer and steadier: 3 epochs x 20 iterations, 3d_fullres only
  .venv/bin/python benchmarks/train_throughput.py -c 3d_fullres --epochs 3 --iterations 20

  # the plans' own 2D batch (366: slow on a CPU), 2 data-augmentation processes per tool
  .venv/bin/python benchmarks/train_throughput.py -c 2d --batch-size 2d=plan --num-workers 2

  # smoke run while developing
  .venv/bin/python benchmarks/train_throughput.py -c 3d_fullres --iterations 2 --skip-fp32

The raw dataset is built and preprocessed by both tools on the first run (not timed, as in
plan_preprocess.py) and reused afterwards. Results: WORK/train_throughput.{json,csv,md},
the drivers' per-iteration records in WORK/driver/, logs in WORK/logs/.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_throughput.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=plan_preprocess.HelpFormatter)
    add_data_arguments(parser, "train_throughput")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres", "2d"],
                        choices=plan_preprocess.CONFIGURATIONS, help="configurations to train")
    add_training_arguments(parser)
    parser.add_argument("--batch-size", nargs="*", default=list(DEFAULT_BATCH_SIZES), metavar="[CONFIG=]N",
                        help="batch size for both tools: N for every configuration, CONFIG=N for one, CONFIG=plan "
                             "for the plans' own")
    parser.add_argument("--skip-ours", action="store_true", help="do not train with medseg_auto")
    parser.add_argument("--skip-nnunet", action="store_true", help="do not train with nnU-Net v2")
    parser.add_argument("--skip-fp32", action="store_true", help="leave out the 'ours --no-bf16' row")
    args = parser.parse_args(argv)
    if args.skip_ours and args.skip_nnunet:
        parser.error("--skip-ours and --skip-nnunet together leave nothing to measure")
    args.batch_sizes = parse_batch_sizes(parser, args.batch_size, args.configurations)
    return args


# --- pieces shared with profile_training.py and predict_speed.py -------------------------

def add_data_arguments(parser: argparse.ArgumentParser, name: str, cases_flag: str = "--cases") -> None:
    """``--data``, ``--work``, ``--nnunet-venv``, ``--cases`` (named ``cases_flag``; its value is
    ``args.dataset_cases``), ``--repreprocess``."""
    parser.add_argument("--data", type=Path, default=common.shared_dir() / "data" / "hippocampus",
                        help="MSD hippocampus folder with images/ and labels/")
    parser.add_argument("--work", type=Path, default=common.repo_root() / "benchmarks" / "_work" / name,
                        help="work and output folder (raw and preprocessed data, models, logs, results)")
    parser.add_argument("--nnunet-venv", type=Path, default=Path(common.NNUNET_VENV_NAME),
                        help="virtual environment with nnunetv2 installed (relative to the repository)")
    parser.add_argument(cases_flag, dest="dataset_cases", type=int, default=None,
                        help="use only the first N paired cases of the dataset (the plans' batch size may then differ)")
    parser.add_argument("--repreprocess", action="store_true",
                        help="rebuild the raw dataset and preprocess again even if WORK holds a complete one")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """How long the drivers train, and with how many data-augmentation processes."""
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the first --warmup-epochs are not timed")
    parser.add_argument("--iterations", type=int, default=5, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=1, help="validation batches per epoch (not timed)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs left out of the timing")
    parser.add_argument("--num-workers", type=int, default=default_workers(),
                        help="data-augmentation processes, the same for both tools (ours: --num-workers, "
                             "nnU-Net: nnUNet_n_proc_DA); the default is ours: cores - 1")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the training process, the same for both tools (all cores is what "
                             "both do on CPU; 1 avoids OpenMP threads spinning on a shared machine)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both tools train (cuda: both use AMP; pass --skip-fp32 there)")


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def parse_batch_sizes(parser: argparse.ArgumentParser, values: Sequence[str],
                      configurations: Sequence[str]) -> dict[str, int | None]:
    """``["32"]`` or ``["2d=32", "3d_fullres=plan"]`` -> ``{configuration: size or None}``."""
    sizes: dict[str, int | None] = {configuration: None for configuration in configurations}
    for value in values:
        name, _, size = value.rpartition("=")
        targets = [name] if name else list(configurations)
        if name and name not in plan_preprocess.CONFIGURATIONS:
            parser.error(f"--batch-size {value}: unknown configuration {name!r}")
        if size != "plan" and (not size.isdigit() or int(size) < 1):
            parser.error(f"--batch-size {value}: the size must be a positive number or 'plan'")
        for target in targets:
            if target in sizes:
                sizes[target] = None if size == "plan" else int(size)
    return sizes


def prepare_data(args: argparse.Namespace, layout: WorkLayout, need_ours: bool, need_nnunet: bool) -> list[str]:
    """The raw dataset and each needed tool's preprocessed data (2d and 3d_fullres), built only
    when missing, incomplete or ``--repreprocess``; untimed. Returns the case ids."""
    cases = plan_preprocess.paired_cases(args.data.resolve(), args.dataset_cases)
    rebuild = args.repreprocess or not raw_dataset_matches(layout, cases)
    if rebuild:
        print(f"preparing {DATASET_FOLDER} with {len(cases)} cases in {layout.raw_dataset}", flush=True)
        plan_preprocess.build_raw_dataset(args.data.resolve(), cases, layout)
    plan_preprocess.link_ours_home(layout)
    runs = []
    if need_ours:
        runs.append(plan_preprocess.ours_run(layout, os.cpu_count() or 1))
    if need_nnunet:
        venv = common.nnunet_venv(args.nnunet_venv)
        runs.append(plan_preprocess.nnunet_run(layout, venv, os.cpu_count() or 1))
    complete = ", ".join(f"{configuration} {len(cases)}" for configuration in plan_preprocess.CONFIGURATIONS)
    for run in runs:
        if not rebuild and plan_preprocess.cases_written(run.output, cases) == complete:
            continue
        plan_preprocess.warm_file_cache(layout.raw_dataset)
        plan_preprocess.check_runs(run)
        print(f"preprocessing with {run.tool} (not timed)", flush=True)
        plan_preprocess.remove_output(run.output)
        log_path = layout.logs / f"preprocess_{run.tool.split()[0].lower()}.log"
        measurement = common.measure_command(run.cmd, env=run.env, cwd=layout.root, log_path=log_path)
        if measurement.returncode != 0:
            raise BenchmarkError(f"preprocessing with {run.tool} failed (log: {log_path}):\n"
                                 f"{common.log_tail(log_path)}")
    return cases


def raw_dataset_matches(layout: WorkLayout, cases: Sequence[str]) -> bool:
    """Whether WORK's raw dataset holds exactly ``cases`` (so its preprocessing can be reused)."""
    dataset_json = common.read_json_or_none(layout.raw_dataset / "dataset.json")
    images = layout.raw_dataset / "imagesTr"
    if dataset_json is None or not images.is_dir():
        return False
    present = {path.name[: -len("_0000" + plan_preprocess.FILE_ENDING)] for path in images.iterdir()}
    return present == set(cases) and dataset_json.get("numTraining") == len(cases)


def driver_run(tool: str, layout: WorkLayout, configuration: str, nnunet_venv: Path, result: Path, *, epochs: int,
               iterations: int, val_iterations: int, num_workers: int, batch_size: int | None = None,
               threads: int | None = None, extra: Sequence[str] = (), device: str = "cpu",
               dataset_name: str = DATASET_NAME, dataset_folder: str = DATASET_FOLDER) -> tuple[list[str], dict[str, str]]:
    """Command and environment that train fold 0 of ``configuration`` with ``tool`` under the driver
    (``dataset_name``/``dataset_folder``: ours / nnU-Net's name of the dataset, Hippocampus by default)."""
    options = ["--configuration", configuration, "--fold", "0", "--epochs", str(epochs), "--iterations",
               str(iterations), "--val-iterations", str(val_iterations), "--result", str(result), "--device", device,
               *extra]
    if batch_size:
        options += ["--batch-size", str(batch_size)]
    if threads:
        options += ["--threads", str(threads)]
    if tool == NNUNET_TOOL:
        python = common.nnunet_venv(nnunet_venv) / "bin" / "python"
        env = {**layout.nnunet_env(), "nnUNet_n_proc_DA": str(num_workers)}
        return [str(python), str(DRIVER), "nnunet", "--dataset", dataset_folder, *options], env
    ours = ["--home", str(layout.ours_home), "--num-workers", str(num_workers)]
    if tool == OURS_FP32_TOOL:
        ours.append("--no-bf16")
    return [str(common.ours_python()), str(DRIVER), "ours", "--dataset", dataset_name, *options, *ours], {}


def measure_driver(label: str, cmd: list[str], env: dict[str, str], layout: WorkLayout,
                   result: Path) -> tuple[Measurement, dict[str, Any] | None, float]:
    """Run one driver command, measured; returns the measurement, its JSON result (``None`` if
    it failed) and the 1-minute load average before it started."""
    warning = common.busy_machine_warning()
    if warning:
        print(warning, file=sys.stderr)
    load_before = os.getloadavg()[0]
    result.unlink(missing_ok=True)
    log_path = layout.logs / f"{result.stem}.log"
    print(f"[{label}] {' '.join(cmd)}", flush=True)
    measurement = common.measure_command(cmd, env=env, cwd=layout.root, log_path=log_path)
    print(f"[{label}] exit {measurement.returncode} after {measurement.wall_s:.1f} s, "
          f"peak {measurement.peak_rss_mib:.0f} MiB (log: {log_path})", flush=True)
    if measurement.returncode != 0:
        print(common.log_tail(log_path), file=sys.stderr)
        return measurement, None, load_before
    return measurement, common.read_json_or_none(result), load_before


def timed_records(result: dict[str, Any] | None, warmup_epochs: int) -> list[dict[str, Any]]:
    """The driver's iteration records after the warm-up epochs."""
    return [record for record in (result or {}).get("records", []) if record["epoch"] >= warmup_epochs]


def iteration_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean seconds per iteration (wait + step), per step and per wait; iterations per second."""
    if not records:
        return {"timed_its": 0}
    per_iteration = [record["wait_s"] + record["step_s"] for record in records]
    s_per_it = statistics.fmean(per_iteration)
    return {"timed_its": len(records), "s_per_it": s_per_it, "it_per_s": 1.0 / s_per_it,
            "step_s": statistics.fmean(record["step_s"] for record in records),
            "wait_s": statistics.fmean(record["wait_s"] for record in records)}


def plans_value(layout: WorkLayout, configuration: str, key: str) -> Any:
    """A value of nnU-Net's plans for ``configuration`` (ours agree; see plan_preprocess.py)."""
    plans = common.read_json_or_none(layout.nnunet_output / NNUNET_PLANS_FILE)
    if plans is None:
        plans = common.read_json_or_none(plan_preprocess.ours_plans_file(layout.ours_output))
    return common.find_key(plan_preprocess.configuration_of(plans, configuration), key)


def run_metadata(args: argparse.Namespace, cases: Sequence[str], benchmark: str) -> dict[str, Any]:
    """Machine, versions and options, for reading a result later."""
    metadata: dict[str, Any] = {
        "benchmark": benchmark, "dataset": DATASET_FOLDER, "cases": len(cases),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_total_mib": round(psutil.virtual_memory().total / common.MIB), "python": platform.python_version(),
        "load_average_1min_after": os.getloadavg()[0],
        "options": {key: str(value) for key, value in vars(args).items()},
        "ours_torch_version": common.python_package_version(common.repo_root() / ".venv", "torch"),
    }
    if not getattr(args, "skip_nnunet", True):
        venv = common.nnunet_venv(args.nnunet_venv)
        metadata["nnunetv2_version"] = common.python_package_version(venv, "nnunetv2")
        metadata["nnunet_torch_version"] = common.python_package_version(venv, "torch")
    return metadata


# --- this benchmark --------------------------------------------------------------------------

def tools_to_run(args: argparse.Namespace) -> list[str]:
    tools = [] if args.skip_nnunet else [NNUNET_TOOL]
    if not args.skip_ours:
        tools += [OURS_TOOL] if args.skip_fp32 else [OURS_TOOL, OURS_FP32_TOOL]
    return tools


def batch_label(batch_size: int | None, plans_batch: Any) -> str:
    return f"{plans_batch} (plans)" if batch_size is None else f"{batch_size} (override; plans {plans_batch})"


def measure_configuration(configuration: str, args: argparse.Namespace, layout: WorkLayout) -> list[dict[str, Any]]:
    """One row per tool for ``configuration``; ours get the ratio to nnU-Net's it/s."""
    batch_size = args.batch_sizes[configuration]
    plans_batch = plans_value(layout, configuration, "batch_size")
    rows = []
    for tool in tools_to_run(args):
        result_path = layout.root / "driver" / f"{configuration}_{tool.replace(' ', '_').replace('-', '')}.json"
        cmd, env = driver_run(tool, layout, configuration, args.nnunet_venv, result_path, epochs=args.epochs,
                              iterations=args.iterations, val_iterations=args.val_iterations,
                              num_workers=args.num_workers, batch_size=batch_size, threads=args.threads,
                              device=args.device)
        measurement, result, load_before = measure_driver(f"{configuration} {tool}", cmd, env, layout, result_path)
        shapes = (result or {}).get("batch_shapes", {}).get("data")
        rows.append({
            "configuration": configuration, "tool": tool, "precision": (result or {}).get("precision"),
            "batch": batch_label(batch_size, plans_batch), "patch": "x".join(map(str, shapes[2:])) if shapes else None,
            **iteration_summary(timed_records(result, args.warmup_epochs)), **measurement.as_dict(),
            "load_before": load_before, "command": " ".join(cmd), "environment": env,
            "threads": (result or {}).get("threads"), "workers": (result or {}).get("workers"),
            "startup_s": (result or {}).get("startup_s"), "batch_shapes": (result or {}).get("batch_shapes"),
        })
    nnunet = next((row for row in rows if row["tool"] == NNUNET_TOOL), None)
    for row in rows:
        if row["tool"] != NNUNET_TOOL and nnunet is not None:
            row["it_per_s_vs_nnunet"] = common.ratio(row.get("it_per_s"), nnunet.get("it_per_s"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.epochs <= args.warmup_epochs:
        raise BenchmarkError(f"--epochs {args.epochs} leaves nothing after {args.warmup_epochs} warm-up epoch(s)")
    layout = WorkLayout(args.work)
    cases = prepare_data(args, layout, need_ours=not args.skip_ours, need_nnunet=not args.skip_nnunet)
    rows = [row for configuration in args.configurations for row in measure_configuration(configuration, args, layout)]
    metadata = run_metadata(args, cases, "train_throughput")
    paths = common.write_results(layout.root, "train_throughput", rows, TABLE_COLUMNS, metadata)

    print(f"\ntraining throughput, {DATASET_FOLDER} ({len(cases)} cases), fold 0, {args.epochs} epochs x "
          f"{args.iterations} iterations, first {args.warmup_epochs} epoch(s) not timed; "
          f"{args.num_workers} data-augmentation process(es) per tool, {args.threads} torch thread(s) on "
          f"{os.cpu_count()} cores.\n"
          "s_per_it = wait_s (main loop waiting for its batch) + step_s (train_step); it_per_s_vs_nnunet: "
          "ours / nnU-Net (target >= 1.5); memory: peak summed RSS / PSS of the process tree over the whole run\n")
    print(common.markdown_table(rows, TABLE_COLUMNS))
    print(f"\n1-minute load average after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"results written to {paths['json'].parent}")
    return 0 if all(row["returncode"] == 0 and row.get("timed_its") for row in rows) else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as error:
        print(f"train_throughput.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
