"""Score a trained cell on an external, never-trained-on dataset, from its raw files.

Why raw files and not a preprocessed cache: an external site is exactly what a user's new
hospital sends, so it goes through ``predict``'s own path (read, fit the channel count to the
model's with a warning, resample to the plans' spacing, sliding window, export in the input's
geometry) and is scored like ``medseg-auto evaluate`` against its ``labelsTr``. The dataset is
imported like any other (``import-folder``/``import-msd``) and needs no plans of its own.

Output folder: one prediction per case, ``metrics.csv``, ``summary.json`` and ``summary.md``
(per site, from the external dataset's own ``sites``), and ``failure_signals.csv``: every
case's failure signals (:mod:`medseg_auto.inference.uncertainty`, read from the same forward
passes; the OOD score with ``ood``). Predictions already there are kept (``predict`` skips
them), so an interrupted scoring resumes, except that the cases are predicted again when the
signal table is missing (an interrupted run writes none), so that every case has its signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("experiments.external")


def score_external(model, raw_folder: Path, output: Path, device: str, fda=None, ood=None) -> dict[str, Any]:
    """Predict every ``imagesTr`` case of the raw dataset ``raw_folder`` with ``model`` (a
    :class:`~medseg_auto.inference.predict.LoadedModel`; ``fda``: an optional
    :class:`~medseg_auto.inference.fda_donors.FdaAdapter`; ``ood``: an optional OOD scorer,
    :class:`~medseg_auto.inference.ood_references.OodScorer`) and score it; return the summary dict."""
    from medseg_auto.inference.uncertainty import SIGNALS_FILE, write_signal_table
    from medseg_auto.evaluation.evaluate import evaluate_folders
    from medseg_auto.evaluation.writing import write_evaluation
    from medseg_auto.inference.predict import PredictionOptions, predict_folder

    spec = DatasetSpec.load(raw_folder)
    output.mkdir(parents=True, exist_ok=True)
    had_signals = (output / SIGNALS_FILE).is_file()  # written once every case was predicted
    options = PredictionOptions(device=device, show_progress=False, export_workers=1, uncertainty=True,
                                overwrite=not had_signals)
    report = predict_folder(raw_folder / "imagesTr", output, [model], None, options, fda=fda, ood=ood)
    if report.failed:
        shown = "; ".join(f"{case}: {error}" for case, error in list(report.failed.items())[:3])
        raise MedsegError(f"{raw_folder}: {len(report.failed)} external case(s) failed to predict ({shown})")
    if not had_signals:
        write_signal_table(output / SIGNALS_FILE, report.ood, report.uncertainty)
    result = evaluate_folders(output, raw_folder / "labelsTr", spec=spec, sites=spec.sites or None,
                              num_processes=1, show_progress=False)
    write_evaluation(result, output)
    log.info("%s: %d external case(s), mean foreground Dice %s", raw_folder.name, result.summary.get("num_cases"),
             result.summary.get("foreground_mean", {}).get("dice"))
    return result.summary
