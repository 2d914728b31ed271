#!/usr/bin/env python
"""How much site information does a trained network's bottleneck hold, per feature summary?

The site-aware trainers (``SiteAdversarial``, ``IntraSiteVariabilityAlignment``) act on a
per-sample summary of a stage's features. A classifier on the global average after instance
norm has little to work with (``training/feature_statistics.py``: near chance on synthetic
data), which leaves nothing to unlearn or align; the trainers now default to summaries that keep
between-sample information. This script checks that claim on real images from several sites with
a trained model: it predicts each case once (the model's own preprocessing, then a centred crop
or pad to ``--crop`` voxels, so that image size is no cue), records the chosen stage and its
input to the last norm, and reports the 5-fold cross-validated balanced accuracy of a logistic
regression telling the sites apart (0.5 per two sites: chance) from

- ``gap``: the global average of the stage's output (after instance norm), ``(F,)``;
- ``prenorm_mean_std``: per-channel mean / std and log std *before* the last norm, ``(2F,)``;
- ``covariance``: the channel covariance of the output after a fixed random projection to 32
  channels (``CovariancePooling`` at its initialisation), ``(528,)``.

Prints a table; writes ``site_information.{json,csv,md}`` to ``--out``.

examples:
  # a BUSI model, BUSI against STU cases (the raw folders hold NAME_0000.png images)
  .venv/bin/python benchmarks/site_information.py \\
      --model ~/medseg_auto/results/Dataset501_BUSI/Base__plans_cpu_coarse__2d --fold 0 \\
      --site busi=~/medseg_auto/raw/Dataset501_BUSI/imagesTr --site stu=~/medseg_auto/raw/Dataset502_STU/imagesTr \\
      --cases 42 --crop 64 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medseg_auto.dataset.case_loader import load_case_images
from medseg_auto.inference.model_loading import load_fold
from medseg_auto.preprocessing.case_pipeline import preprocess_case
from medseg_auto.training.feature_statistics import CovariancePooling, prenorm_recorder, scale_free_mean_std
from medseg_auto.training.network import FeatureTaps, tap_modules

SUMMARIES = ("gap", "prenorm_mean_std", "covariance")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="site_information.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="trained experiment folder (TRAINER__PLANS__CONFIG)")
    parser.add_argument("--fold", required=True, help="fold name after fold_ (0, all, ...)")
    parser.add_argument("--checkpoint", default="final", help="final or best")
    parser.add_argument("--site", action="append", required=True, metavar="NAME=FOLDER",
                        help="a site and its folder of images (NAME_0000.ext); two or more")
    parser.add_argument("--cases", type=int, default=40, help="cases per site (a seeded random sample)")
    parser.add_argument("--crop", type=int, nargs="+", required=True, help="spatial size every case is cropped or "
                        "padded to, centred (in the model's voxels): image size must not tell the sites apart")
    parser.add_argument("--stage", default="bottleneck", help="feature tap (encoder.N, bottleneck, decoder.N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work/site_information"))
    args = parser.parse_args(argv)
    args.sites = {}
    for item in args.site:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).expanduser().is_dir():
            parser.error(f"--site {item!r}: expected NAME=FOLDER with an existing folder")
        args.sites[name] = Path(folder).expanduser()
    if len(args.sites) < 2:
        parser.error("give at least two --site")
    fold_folder = args.model.expanduser() / f"fold_{args.fold}"
    if not (args.model.expanduser() / "plans.json").is_file() or not fold_folder.is_dir():
        parser.error(f"--model {args.model} --fold {args.fold}: no trained fold there (plans.json and {fold_folder.name}/)")
    args.model = args.model.expanduser()
    return args


def centre_fit(data: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``data (C, *spatial)`` centre-cropped or zero-padded to ``(C, *size)``."""
    out = np.zeros((data.shape[0], *size), dtype=np.float32)
    source, target = [slice(None)], [slice(None)]
    for have, want in zip(data.shape[1:], size):
        start = max(0, (have - want) // 2)
        offset = max(0, (want - have) // 2)
        length = min(have, want)
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[tuple(target)] = data[tuple(source)]
    return out


def site_cases(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    files = sorted(path for path in folder.iterdir() if path.name.split(".")[0].endswith("_0000"))
    chosen = rng.choice(len(files), size=min(count, len(files)), replace=False)
    return [files[index] for index in sorted(chosen)]


def summaries(model, files: list[Path], crop: Sequence[int], stage: str, covariance: CovariancePooling) -> dict[str, np.ndarray]:
    """``{summary: (N, D)}`` of the cases in ``files``."""
    network = model.network.eval()
    block = tap_modules(network)[stage]
    taps = FeatureTaps(network, [stage])
    rows: dict[str, list[np.ndarray]] = {name: [] for name in SUMMARIES}
    try:
        with prenorm_recorder(block) as before_norm, torch.no_grad():
            for path in files:
                data, geometry = load_case_images([path], model.plans.num_input_channels, path.name,
                                                  convert_channels=True)
                data, _, _ = preprocess_case(data, None, geometry, model.plans, model.config, path.name,
                                             sample_locations=False)
                image = centre_fit(np.asarray(data, dtype=np.float32)[:, 0] if model.config.is_2d else
                                   np.asarray(data, dtype=np.float32), crop)
                network(torch.from_numpy(image)[None])
                output = taps.features[stage].float()
                rows["gap"].append(output.mean(dim=tuple(range(2, output.ndim)))[0].numpy())
                rows["prenorm_mean_std"].append(scale_free_mean_std(before_norm["features"].float())[0].numpy())
                rows["covariance"].append(covariance(output)[0].numpy())
                taps.clear()
    finally:
        taps.remove()
    return {name: np.stack(values) for name, values in rows.items()}


def cross_validated(features: np.ndarray, sites: np.ndarray, seed: int) -> tuple[float, float]:
    """Mean and sd over 5 stratified folds of a standardised logistic regression's balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    scores = cross_val_score(classifier, features, sites, scoring="balanced_accuracy",
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(scores.mean()), float(scores.std(ddof=1))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    model = load_fold(args.model, args.fold, args.checkpoint)
    if len(args.crop) != (2 if model.config.is_2d else 3):
        print("site_information.py: error: --crop needs one size per spatial axis of the model", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with torch.no_grad():
        covariance = CovariancePooling(_stage_width(model, args))  # fixed: seeded random projection
    per_site = {name: summaries(model, site_cases(folder, args.cases, rng), args.crop, args.stage, covariance)
                for name, folder in args.sites.items()}
    labels = np.concatenate([[name] * len(values["gap"]) for name, values in per_site.items()])
    rows = []
    for summary in SUMMARIES:
        features = np.concatenate([values[summary] for values in per_site.values()])
        mean, sd = cross_validated(features, labels, args.seed)
        rows.append({"summary": summary, "dimensions": int(features.shape[1]), "balanced_accuracy": round(mean, 3),
                     "sd_over_folds": round(sd, 3)})
    chance = round(1 / len(args.sites), 3)
    meta = {"model": str(args.model), "fold": args.fold, "checkpoint": args.checkpoint, "stage": args.stage,
            "crop": args.crop, "cases": {name: len(values["gap"]) for name, values in per_site.items()},
            "chance": chance, "seconds": round(time.perf_counter() - started, 1), "torch_threads": 1}
    lines = [f"site information at {args.stage} ({', '.join(f'{k}: {v}' for k, v in meta['cases'].items())} cases, "
             f"crop {'x'.join(map(str, args.crop))}, chance {chance}); 5-fold balanced accuracy of a logistic regression",
             "", "| summary | dimensions | balanced accuracy | sd over folds |", "|---|---:|---:|---:|"]
    lines += [f"| {r['summary']} | {r['dimensions']} | {r['balanced_accuracy']:.3f} | {r['sd_over_folds']:.3f} |"
              for r in rows]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "site_information.md").write_text("\n".join(lines) + "\n")
    (args.out / "site_information.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with open(args.out / "site_information.csv", "w") as handle:
        handle.write("summary,dimensions,balanced_accuracy,sd_over_folds\n")
        handle.writelines(f"{r['summary']},{r['dimensions']},{r['balanced_accuracy']},{r['sd_over_folds']}\n"
                          for r in rows)
    return 0


def _stage_width(model, args: argparse.Namespace) -> int:
    """Channels of the stage's output, from one forward pass of a zero image."""
    taps = FeatureTaps(model.network, [args.stage])
    try:
        model.network.eval()(torch.zeros(1, model.plans.num_input_channels, *args.crop))
        return int(taps.features[args.stage].shape[1])
    finally:
        taps.remove()


if __name__ == "__main__":
    raise SystemExit(main())
