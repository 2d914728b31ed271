#!/usr/bin/env python3
"""Cost of the OOD score and of prediction-time FDA on a synthetic 2D model (CPU, one thread).

Builds a two-site synthetic 2D dataset (``--cases-per-site`` cases of ``--size`` pixels), plans
and preprocesses it, trains fold ``all`` for two iterations (the weights do not matter for
speed), then predicts the same input folder in one process, alternating ``--repeats`` times:

- ``plain``: no OOD score (``--no-ood``), the baseline;
- ``ood``: OOD score against the fold's reference (hooks during the same pass);
- ``fda``: ``--fda-donors`` donors per case plus the OOD score (reported for scale).

It also times making the reference lazily from the training cache (``reference_s``), which
``predict`` does once per fold when the final validation did not write it, and the hooks alone:
one case's mirrored sliding window with and without :class:`FeatureStatistics`, interleaved
``--hook-repeats`` times (``hook_overhead_percent`` from the minima, which a busy shared
machine disturbs least). Prints a table and writes ``ood_fda_overhead.json`` into ``--work``.
Timed: ``predict_folder`` only (models loaded, torch imported), seconds per case, median and
minimum over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from medseg_auto.cli.main import main  # noqa: E402
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home  # noqa: E402
from medseg_auto.inference.fda_donors import DonorBank, FdaAdapter, open_source_cache  # noqa: E402
from medseg_auto.inference.feature_statistics import FeatureStatistics, views_per_window  # noqa: E402
from medseg_auto.inference.model_loading import experiment_folder, load_folds  # noqa: E402
from medseg_auto.inference.ood import OOD_REFERENCE_FILE  # noqa: E402
from medseg_auto.inference.ood_references import make_scorer  # noqa: E402
from medseg_auto.inference.predict import PredictionOptions, default_autocast, predict_folder, resolve_device  # noqa: E402
from medseg_auto.inference.sliding_window import predict_logits  # noqa: E402


def prepare(work: Path, cases_per_site: int, size: int):
    shutil.rmtree(work, ignore_errors=True)
    home = synthetic_home(work / "home")
    make_synthetic_dataset(home, "Bench2d", dimension=2, cases_per_site=cases_per_site, shape=(size, size - 16))
    root = str(home.root)
    assert main(["plan_and_preprocess", "Bench2d", "-np", "1", "--home", root, "--no-progress"]) == 0
    assert main(["train", "Bench2d", "2d", "all", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters-per-epoch",
                 "1", "--num-workers", "0", "--home", root, "--device", "cpu", "--seed", "0", "--no-progress"]) == 0
    return home


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def hook_timings(model, cache, autocast: bool, repeats: int) -> tuple[float, float]:
    """Minimum seconds of one case's mirrored sliding window without and with the OOD hooks."""
    data, _, _ = cache.load_case(cache.case_ids()[0], mmap=False)
    config, axes = model.config, model.mirror_axes

    def window():
        predict_logits(model.network, data, config.patch_size, config.is_2d, axes, 0.5, "cpu", autocast)

    def hooked():
        with FeatureStatistics(model.network, views=views_per_window(axes, True)) as statistics:
            window()
            statistics.vector()

    without, with_hooks = [], []
    for _ in range(repeats):
        without.append(timed(window))
        with_hooks.append(timed(hooked))
    return min(without), min(with_hooks)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    home = prepare(args.work, args.cases_per_site, args.size)
    folder = experiment_folder(home.results_dataset("Bench2d"), "Base", "plans", "2d")
    models = load_folds(folder, None)
    device = resolve_device("cpu")
    autocast = default_autocast(device)
    preprocessed = home.preprocessed_dataset("Bench2d")
    (folder / "fold_all" / OOD_REFERENCE_FILE).unlink()
    reference_s = timed(lambda: make_scorer(models, folder, preprocessed, device, autocast))
    scorer = make_scorer(models, folder, preprocessed, device, autocast)
    cache = open_source_cache(preprocessed, models[0].plans, models[0].config)
    fda = FdaAdapter(DonorBank.load(cache, "siteA"), donors=args.donors)
    inputs = home.raw_dataset("Bench2d") / "imagesTr"
    n_cases = len(list(inputs.glob("*_0000.png")))
    options = PredictionOptions(device="cpu", overwrite=True, show_progress=False)
    variants = {"plain": {}, "ood": {"ood": scorer}, "fda": {"fda": fda, "ood": scorer}}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, extra in variants.items():
            took = timed(lambda: predict_folder(inputs, args.work / f"out_{name}", models, None, options, **extra))
            if repeat > 0:
                seconds[name].append(took / n_cases)
    per_case = {name: statistics.median(values) for name, values in seconds.items()}
    fastest = {name: min(values) for name, values in seconds.items()}
    hook_plain, hook_ood = hook_timings(models[0], cache, autocast, args.hook_repeats)
    result = {
        "cases": n_cases, "size": [args.size, args.size - 16], "repeats": args.repeats, "donors": args.donors,
        "threads": torch.get_num_threads(), "autocast_bf16": autocast,
        "s_per_case": {k: round(v, 4) for k, v in per_case.items()},
        "min_s_per_case": {k: round(v, 4) for k, v in fastest.items()},
        "ood_overhead_percent": round(100 * (per_case["ood"] / per_case["plain"] - 1), 1),
        "ood_overhead_percent_min": round(100 * (fastest["ood"] / fastest["plain"] - 1), 1),
        "hook_s": {"without": round(hook_plain, 4), "with": round(hook_ood, 4)},
        "hook_overhead_percent": round(100 * (hook_ood / hook_plain - 1), 1),
        "fda_cost_x_plain": round(per_case["fda"] / per_case["plain"], 2),
        "reference_s": round(reference_s, 2), "reference_cases": n_cases,
        "all_runs_s_per_case": {k: [round(v, 4) for v in values] for k, values in seconds.items()},
    }
    (args.work / "ood_fda_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "_work" / "ood_fda")
    parser.add_argument("--cases-per-site", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="image height (width: height - 16)")
    parser.add_argument("--donors", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hook-repeats", type=int, default=20)
    args = parser.parse_args()
    result = run(args)
    print(f"{'variant':8} {'median s/case':>14} {'min s/case':>11}")
    for name, value in result["s_per_case"].items():
        print(f"{name:8} {value:14.4f} {result['min_s_per_case'][name]:11.4f}")
    print(f"hooks alone (min of {args.hook_repeats}): {result['hook_s']['without']} s -> {result['hook_s']['with']} s "
          f"({result['hook_overhead_percent']} %)")
    print(f"OOD overhead: {result['ood_overhead_percent']} % (median), {result['ood_overhead_percent_min']} % (min); "
          f"FDA ({result['donors']} donors): "
          f"{result['fda_cost_x_plain']} x plain; reference from {result['reference_cases']} cases: "
          f"{result['reference_s']} s")


if __name__ == "__main__":
    main_cli()
