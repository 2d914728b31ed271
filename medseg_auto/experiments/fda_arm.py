"""The prediction-time FDA arm of the method benchmark: Base's model, external sets predicted
with Fourier domain adaptation (``predict --fda-source``) towards the training dataset.

Why an arm and not a trainer: FDA changes only prediction, so the fair comparison is the *same*
Base model of the same seed with and without it, case by case. The arm ``Base+FDA`` therefore
has one cell per seed that trains nothing: it loads that seed's Base cell model, builds the
donor bank from the training dataset's preprocessed cache (images only; donors never carry
labels, and the external cases are never in it), predicts every external test set with the
default donors and beta of :mod:`medseg_auto.inference.fda`, scores it like the other arms
(``test_<name>/``) and writes ``done.json``. It has no in-domain row (FDA towards the source
domain is meant for other sites).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medseg_auto.errors import MedsegError
from medseg_auto.experiments.cells import DONE_MARKER, Cell, ExperimentData, TrainingOptions, read_done
from medseg_auto.utils.atomic import write_json_atomic

FDA_ARM = "Base+FDA"


def fda_cell(base_cell: Cell, base_folder: Path, folder: Path) -> Cell:
    """The FDA cell of ``base_cell``'s seed (same splits and tag, external sets only)."""
    return Cell(key=f"{FDA_ARM}/seed{base_cell.seed}", trainer=base_cell.trainer, tag=base_cell.tag,
                train_ids=base_cell.train_ids, val_ids=base_cell.val_ids, test_sets={}, seed=base_cell.seed,
                info={"arm": FDA_ARM, "network": base_cell.info.get("network"), "fda_of": str(base_folder)},
                external_sets=dict(base_cell.external_sets))


def run_fda_cell(data: ExperimentData, cell: Cell, options: TrainingOptions, folder: Path) -> dict[str, Any]:
    """Score the external sets of ``cell`` with FDA using its Base cell's model; return the row."""
    from medseg_auto.experiments.cells import _load_model, ood_scorer
    from medseg_auto.experiments.external import score_external
    from medseg_auto.inference.fda import DEFAULT_BETA, DEFAULT_DONORS
    from medseg_auto.inference.fda_donors import DonorBank, FdaAdapter

    done = read_done(folder)
    if done is not None:
        return done
    base_row = read_done(Path(cell.info["fda_of"]))
    if base_row is None:
        raise MedsegError(f"{cell.info['fda_of']}: the Base cell of seed {cell.seed} is not finished; "
                          "its FDA arm runs after it")
    started = time.perf_counter()
    model, checkpoint = _load_model(Path(base_row["fold_folder"]), options.checkpoint)
    ood = ood_scorer(data, model, Path(base_row["fold_folder"]), options.device)
    bank = DonorBank.load(data.cache)
    adapter = FdaAdapter(bank, DEFAULT_BETA, DEFAULT_DONORS, spatial_axes=2 if model.config.is_2d else 3)
    row: dict[str, Any] = {"trainer": cell.trainer, **cell.info, "seed": cell.seed, "fda_beta": DEFAULT_BETA,
                           "fda_donors": DEFAULT_DONORS}
    for name, raw_folder in cell.external_sets.items():
        summary = score_external(model, Path(raw_folder), folder / f"test_{name}", options.device, fda=adapter,
                                 ood=ood)
        mean = summary.get("foreground_mean", {})
        row.update({f"dice_{name}": mean.get("dice"), f"iou_{name}": mean.get("iou"),
                    f"n_{name}": summary.get("num_cases")})
    row.update(checkpoint=checkpoint, fold_folder=base_row["fold_folder"],
               seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(folder / DONE_MARKER, {"cell": cell.key, "tag": cell.tag, "row": row})
    return row
