#!/usr/bin/env python3
"""Does prediction-time FDA help a trained model on an external site, and which setting hurts least?

Predicts every case of an external labelled set (``--images``/``--labels`` in raw-dataset naming)
with one trained fold, once per variant, and scores Dice in the preprocessed grid (the network's
own grid: the same for every variant, so the comparison is paired). Variants are
``NAME:beta:donors:match`` (``match`` 1: re-standardise each adapted image to the target's own
mean and standard deviation, :mod:`medseg_auto.inference.fda`); ``none`` is the model alone.
Reports mean Dice, the paired per-case difference to ``none`` with the Wilcoxon signed-rank
p-value (scipy), and seconds per case (the FDA views included, donors cached as predict does).

    PYTHONPATH=. python benchmarks/fda_variants.py --home H --dataset BUSI --plans plans_cpu_coarse \\
        --images H/raw/Dataset502_STU/imagesTr --labels H/raw/Dataset502_STU/labelsTr --source BUSI \\
        --variants none old:0.03:7:0 match:0.03:7:1 --out fda_variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from medseg_auto.dataset.case_loader import load_case_images  # noqa: E402
from medseg_auto.dataset.image_io import read_segmentation  # noqa: E402
from medseg_auto.inference.fda_donors import DonorBank, FdaAdapter, open_source_cache  # noqa: E402
from medseg_auto.dataset.inputs import find_input_cases  # noqa: E402
from medseg_auto.inference.model_loading import experiment_folder, load_fold  # noqa: E402
from medseg_auto.inference.predict import PredictionOptions, predict_images  # noqa: E402
from medseg_auto.paths import DataHome  # noqa: E402
from medseg_auto.preprocessing.case_pipeline import preprocess_case  # noqa: E402


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Foreground (any label > 0) Dice; 1 when both are empty."""
    predicted, wanted = prediction > 0, reference > 0
    total = predicted.sum() + wanted.sum()
    return 1.0 if total == 0 else float(2 * (predicted & wanted).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--plans", default="plans")
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--trainer", default="Base")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--source", required=True, help="FDA donor dataset")
    parser.add_argument("--site", default=None)
    parser.add_argument("--variants", nargs="+", default=["none", "old:0.03:7:0", "match:0.03:7:1"])
    parser.add_argument("--no-mirroring", action="store_true")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    home = DataHome.resolve(args.home)
    dataset = home.find_dataset(args.dataset)
    folder = experiment_folder(home.results_dataset(dataset), args.trainer, args.plans, args.configuration)
    model = load_fold(folder, args.fold)
    plans, config = model.plans, model.config
    cache = open_source_cache(home.preprocessed_dataset(args.source), plans, config)
    bank = DonorBank.load(cache, args.site)
    options = PredictionOptions(use_mirroring=not args.no_mirroring, device="cpu", show_progress=False)
    device = torch.device("cpu")
    adapters = {}
    for variant in args.variants:
        if variant != "none":
            name, beta, donors, match = variant.split(":")
            adapters[name] = FdaAdapter(bank, float(beta), int(donors), spatial_axes=2 if config.is_2d else 3,
                                        match_moments=bool(int(match)))
    cases = find_input_cases(args.images, plans.num_input_channels)
    chosen = sorted(cases)[: args.limit] if args.limit else sorted(cases)
    rows, seconds = [], {name: 0.0 for name in ["none", *adapters]}
    for case_id in chosen:
        data, geometry = load_case_images(cases[case_id], plans.num_input_channels, case_id)
        label, _ = read_segmentation(next(args.labels.glob(f"{case_id}.*")))
        data, seg, _ = preprocess_case(data, label[None].astype(np.int16), geometry, plans, config, case_id,
                                       sample_locations=False)
        row = {"case": case_id}
        for name in ["none", *adapters]:
            started = time.perf_counter()
            images = [data] if name == "none" else adapters[name].adapt(data)[0]
            probabilities = predict_images([model], images, options, device)
            seconds[name] += time.perf_counter() - started
            row[name] = dice(probabilities.argmax(axis=0), seg[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"cases": len(rows), "variants": {}}
    base = np.array([row["none"] for row in rows])
    for name in ["none", *adapters]:
        values = np.array([row[name] for row in rows])
        entry = {"mean_dice": round(float(values.mean()), 4), "seconds_per_case": round(seconds[name] / len(rows), 3)}
        if name != "none":
            difference = values - base
            entry["mean_difference"] = round(float(difference.mean()), 4)
            entry["wilcoxon_p"] = (round(float(wilcoxon(values, base).pvalue), 4)
                                   if np.any(difference != 0) else None)
            entry["better_worse_equal"] = [int((difference > 0).sum()), int((difference < 0).sum()),
                                           int((difference == 0).sum())]
        summary["variants"][name] = entry
    summary["settings"] = vars(args) | {"home": str(args.home), "images": str(args.images),
                                        "labels": str(args.labels), "out": str(args.out)}
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary["variants"], indent=1))


if __name__ == "__main__":
    main()
