"""A static HTML report of training results: one ``index.html`` plus PNG figures next to it.

Why static: results are often inspected on a cluster or copied to a laptop; a folder that any
browser opens from disk (no server, no JavaScript) survives both. Contents, per experiment
(``TRAINER__PLANS__CONFIG``): training curves of each fold re-plotted from ``progress.csv``;
per-fold validation Dice; the cross-validation table (per class Dice, IoU, HD95, ASD) and a
per-site table when the dataset names sites; overlays of the worst and best cross-validation
cases (image slice, reference contours solid, prediction contours dashed) on the slice with
the most reference foreground. For a whole dataset folder, ``find_best_configuration``'s
decision is shown first when it exists.

The cross-validation comes from ``crossval_results/summary.json``; when it is missing and the
raw dataset is present it is computed (and written there) with :func:`.crossval.cross_validate`.
Every piece of text read from a file is passed through :func:`html.escape`.
"""

from __future__ import annotations

import csv
import html
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import file_ending_of, is_supported, read_image_file, read_segmentation
from medseg_auto.errors import MedsegError
from medseg_auto.evaluation.crossval import CROSSVAL_FOLDER, cross_validate
from medseg_auto.evaluation.evaluate import EvaluationError
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import atomic_path, read_json, write_text_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("evaluation.report")

REPORT_FOLDER = "report"
INDEX_FILE = "index.html"
CASES_SHOWN = 3
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 8px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eee}tr.best td{background:#dfd}
img{max-width:100%;border:1px solid #ddd}.overlays{display:flex;flex-wrap:wrap;gap:8px}
.overlays figure{margin:0}.overlays img{width:330px}figcaption{text-align:center;font-size:90%}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f6f6;padding:4px}
h2{border-bottom:2px solid #888;margin-top:2em}.note{color:#666;font-size:90%}"""


class ReportError(MedsegError):
    """The folder given to ``report`` holds no training results."""


def build_report(results_dir: str | Path, output_dir: str | Path | None = None, home: DataHome | None = None) -> Path:
    """Write ``index.html`` and its PNGs for ``results_dir`` (a ``results/DatasetNNN_Name``
    folder or one experiment inside it) into ``output_dir`` (default ``results_dir/report``).

    ``home`` locates the raw dataset (images for overlays); by default the data home that
    holds ``results_dir``. Returns the path of ``index.html``.
    """
    results_dir = Path(results_dir).resolve()
    experiments, dataset_folder = _find_experiments(results_dir)
    output = Path(output_dir) if output_dir else results_dir / REPORT_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    home = home or DataHome.resolve(dataset_folder.parent.parent)
    raw = home.raw_dataset(dataset_folder.name) if dataset_folder.name in home.list_datasets() else home.raw / dataset_folder.name
    spec = DatasetSpec.load(raw) if (raw / "dataset.json").is_file() else None
    if spec is None:
        log.warning("raw dataset %s not found: no overlays, and no cross-validation unless already computed", raw)
    parts = [f"<h1>Results: {_e(dataset_folder.name)}</h1>",
             f"<p class='note'>{_e(str(results_dir))}</p>"]
    information = dataset_folder / "inference_information.json"
    if results_dir == dataset_folder and information.is_file():
        parts.append(_decision_section(read_json(information)))
    parts.append("<ul>" + "".join(f"<li><a href='#{_slug(e.name)}'>{_e(e.name)}</a></li>" for e in experiments)
                 + "</ul>")
    for experiment in experiments:
        parts.append(_experiment_section(experiment, spec, output))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{_e(dataset_folder.name)} results</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    index = output / INDEX_FILE
    write_text_atomic(index, page)
    _readable(index)
    log.info("report: %s", index)
    return index


def _find_experiments(results_dir: Path) -> tuple[list[Path], Path]:
    """(experiment folders, the dataset's results folder)."""
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: folder not found")
    if any(results_dir.glob("fold_*")):
        return [results_dir], results_dir.parent
    experiments = sorted(p for p in results_dir.glob("*__*__*") if p.is_dir() and any(p.glob("fold_*")))
    if not experiments:
        raise ReportError(f"{results_dir}: no fold_* folders, and no TRAINER__PLANS__CONFIG folders holding them; "
                          "pass results/DatasetNNN_Name or one of its TRAINER__PLANS__CONFIG folders")
    return experiments, results_dir


def _decision_section(information: dict) -> str:
    best = information.get("best", {}).get("name")
    rows = [[c.get("name"), c.get("kind"), _number(c.get("foreground_mean_dice"))]
            for c in information.get("candidates", [])]
    rows += [[s.get("name"), "skipped", s.get("reason")] for s in information.get("skipped", [])]
    post = information.get("postprocessing", {})
    commands = "".join(f"<pre>{_e(line)}</pre>" for line in information.get("commands", []))
    per_label = ", ".join(str(label) for label in post.get("per_label", [])) or "none"
    return ("<h2>Best configuration (find_best_configuration)</h2>"
            + _table(["candidate", "kind", "cross-validation Dice"], rows, highlight=best)
            + f"<p>Chosen: <b>{_e(best)}</b>. Post-processing: largest component of the foreground union "
              f"{'yes' if post.get('foreground_union') else 'no'}; largest component per label: {_e(per_label)}; "
              f"Dice {_number(post.get('dice_before', {}).get('foreground_mean'))} "
              f"&rarr; {_number(post.get('dice_after', {}).get('foreground_mean'))}</p>"
            + "<p>Commands for new images:</p>" + commands)


def _experiment_section(experiment: Path, spec: DatasetSpec | None, output: Path) -> str:
    """Cross-validation tables and overlays first (what a reader looks for), then the folds."""
    folds = sorted((p for p in experiment.glob("fold_*") if p.is_dir()), key=lambda p: p.name)
    parts = [f"<h2 id='{_slug(experiment.name)}'>{_e(experiment.name)}</h2>"]
    summary = _crossval_summary(experiment, folds, spec)
    if summary is None:
        parts.append("<p class='note'>No cross-validation: no finished fold validation, or the raw dataset "
                     "is missing (run find_best_configuration where it is).</p>")
    else:
        parts.append(f"<h3>Cross-validation (folds {_e(' '.join(summary.get('folds', [])))}, "
                     f"{_e(summary.get('num_cases'))} cases)</h3>")
        if summary.get("folds_missing"):
            parts.append(f"<p class='note'>Missing folds: {_e(' '.join(summary['folds_missing']))}</p>")
        parts.append(_class_table(summary))
        if summary.get("per_site"):
            parts.append("<h3>Per site (Dice)</h3>" + _site_table(summary))
        parts.append(_overlay_section(experiment, summary, spec, output))
    curves_per_fold, fold_rows = {}, []
    for fold in folds:
        curves = _read_progress(fold / "progress.csv")
        if curves:
            curves_per_fold[fold.name] = curves
        summary_path = fold / "validation" / "summary.json"
        fold_summary = read_json(summary_path) if summary_path.is_file() else {}
        dice = fold_summary.get("foreground_mean", {}).get("dice")
        fold_rows.append([fold.name, len(curves.get("epoch", [])), fold_summary.get("num_cases", ""), _number(dice)])
    parts.append("<h3>Folds</h3>" + _table(["fold", "epochs", "validation cases", "validation Dice"], fold_rows))
    if curves_per_fold:
        name = f"{_slug(experiment.name)}_curves.png"
        _plot_curves(curves_per_fold, experiment.name, output / name)
        parts.append(f"<h3>Training curves</h3><img src='{_e(name)}' alt='training curves'>"
                     "<p class='note'>One colour per fold. Pseudo Dice: dotted per epoch, solid its moving "
                     "average (EMA), which picks checkpoint_best.</p>")
    return "\n".join(parts)


def _crossval_summary(experiment: Path, folds: list[Path], spec: DatasetSpec | None) -> dict | None:
    existing = experiment / CROSSVAL_FOLDER / "summary.json"
    if existing.is_file():
        return read_json(existing)
    numbered = [fold.name[len("fold_"):] for fold in folds if fold.name[len("fold_"):].isdigit()]
    if spec is None or not numbered:
        return None
    try:
        return cross_validate(experiment, spec.folder, numbered).evaluation.summary
    except EvaluationError as error:
        log.warning("%s: no cross-validation for the report: %s", experiment.name, error)
        return None


def _class_table(summary: dict) -> str:
    names = summary.get("labels", {})
    rows = [[label, names.get(label, ""), _number(v.get("dice")), _number(v.get("iou")), _number(v.get("hd95"), 2),
             _number(v.get("asd"), 2), v.get("num_cases", ""), v.get("num_empty_reference", "")]
            for label, v in summary.get("per_class", {}).items()]
    mean = summary.get("foreground_mean", {})
    rows.append(["", "foreground mean", _number(mean.get("dice")), _number(mean.get("iou")),
                 _number(mean.get("hd95"), 2), _number(mean.get("asd"), 2), "", ""])
    return _table(["class", "name", "Dice", "IoU", "HD95 (mm)", "ASD (mm)", "cases", "empty reference"], rows)


def _site_table(summary: dict) -> str:
    labels = list(summary.get("labels", {}))
    rows = [[site, block.get("num_cases", "")]
            + [_number(block.get("per_class", {}).get(label, {}).get("dice")) for label in labels]
            + [_number(block.get("foreground_mean", {}).get("dice"))]
            for site, block in summary["per_site"].items()]
    names = [summary["labels"][label] for label in labels]
    return _table(["site", "cases", *names, "foreground mean"], rows)


def _overlay_section(experiment: Path, summary: dict, spec: DatasetSpec | None, output: Path) -> str:
    if spec is None:
        return "<p class='note'>No overlays: raw dataset not found.</p>"
    figures = []
    for key, title in (("worst_cases", "worst"), ("best_cases", "best")):
        for rank, entry in enumerate(summary.get(key, [])[:CASES_SHOWN], start=1):
            case = str(entry.get("case"))
            name = f"{_slug(experiment.name)}_{key}_{_slug(case)}.png"
            try:
                drawn = _plot_overlay(experiment / CROSSVAL_FOLDER, spec, case, entry, output / name)
            except (MedsegError, OSError, ValueError) as error:
                log.warning("%s: no overlay for case %s: %s", experiment.name, case, error)
                drawn = False
            content = f"<img src='{_e(name)}' alt='{_e(case)}'>" if drawn else "<p class='note'>files missing</p>"
            figures.append(f"<figure>{content}<figcaption>{title} {rank}: {_e(case)}</figcaption></figure>")
    return ("<h3>Worst and best cases (foreground-mean Dice)</h3><div class='overlays'>" + "".join(figures)
            + "</div><p class='note'>Slice with the most reference foreground. Solid: reference; dashed: "
              "prediction; one colour per class.</p>")


def _read_progress(path: Path) -> dict[str, list[float]]:
    """Columns of ``progress.csv`` as float lists (empty when the file is missing)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(math.nan)
    return columns


def _plot_curves(curves_per_fold: dict[str, dict[str, list[float]]], title: str, path: Path) -> None:
    """Four panels, every fold in its own colour: train (solid) and validation (dashed) loss,
    pseudo Dice (dotted) and its EMA (solid), learning rate, epoch time."""
    pyplot = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = pyplot.subplots(1, 4, figsize=(16, 3.4))
    panels = [("loss", (("train_loss", "-"), ("val_loss", "--"))),
              ("pseudo Dice", (("pseudo_dice", ":"), ("ema_pseudo_dice", "-"))),
              ("learning rate", (("lr", "-"),)), ("epoch time (s)", (("epoch_time", "-"),))]
    for index, (fold, curves) in enumerate(sorted(curves_per_fold.items())):
        colour = CLASS_COLOURS[index % len(CLASS_COLOURS)]
        epochs = curves.get("epoch") or list(range(len(next(iter(curves.values())))))
        marker = "o" if len(epochs) < 20 else None
        for axis, (_, keys) in zip(axes, panels):
            for key, style in keys:
                if key in curves:
                    axis.plot(epochs, curves[key], style, color=colour, marker=marker, markersize=3,
                              label=fold if style == "-" or len(keys) == 1 else None)
    for axis, (ylabel, _) in zip(axes, panels):
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(_plain(title))
    figure.tight_layout()
    _save(figure, path)


def _plot_overlay(prediction_dir: Path, spec: DatasetSpec, case: str, entry: dict, path: Path) -> bool:
    """Image, reference and prediction contours on the slice with the most reference foreground."""
    prediction_file = next((p for p in sorted(prediction_dir.iterdir()) if p.is_file() and is_supported(p)
                            and p.name[: -len(file_ending_of(p))] == case), None)
    image_file = spec.folder / "imagesTr" / f"{case}_0000{spec.file_ending}"
    reference_file = spec.folder / "labelsTr" / f"{case}{spec.file_ending}"
    if prediction_file is None or not image_file.is_file() or not reference_file.is_file():
        return False
    image, _ = read_image_file(image_file)
    reference, geometry = read_segmentation(reference_file)
    prediction, _ = read_segmentation(prediction_file)
    counts = (reference > 0).sum(axis=(1, 2))
    if not counts.any():
        counts = (prediction > 0).sum(axis=(1, 2))
    z = int(np.argmax(counts)) if counts.any() else reference.shape[0] // 2
    picture = image[0, z].astype(np.float32)
    low, high = np.percentile(picture, (0.5, 99.5))
    pyplot = _pyplot()
    from matplotlib.lines import Line2D

    figure, axis = pyplot.subplots(figsize=(4.2, 4.8))
    aspect = float(geometry.spacing[1] / geometry.spacing[2])
    axis.imshow(picture, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect,
                interpolation="nearest")
    handles = []
    for index, label in enumerate(spec.foreground_labels):
        colour = CLASS_COLOURS[index % len(CLASS_COLOURS)]
        for mask, style in ((reference[z] == label, "solid"), (prediction[z] == label, "dashed")):
            if mask.any() and not mask.all():
                axis.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.2)
        handles.append(Line2D([], [], color=colour, label=_plain(_label_name(spec, label))))
    handles += [Line2D([], [], color="k", label="reference"), Line2D([], [], color="k", ls="--", label="prediction")]
    figure.legend(handles=handles, fontsize=8, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    axis.set_axis_off()
    site = f" ({entry['site']})" if entry.get("site") else ""
    dice = _number(entry.get("foreground_dice"))
    axis.set_title(_plain(f"{case}{site}") + f"\nDice {dice}, slice z={z}", fontsize=10)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    _save(figure, path, dpi=110)
    return True


def _label_name(spec: DatasetSpec, label: int) -> str:
    return next((name for name, value in spec.labels.items() if value == label), f"label_{label}")


def _plain(text: str) -> str:
    """``text`` for matplotlib, which would read ``$...$`` from a file name as math markup."""
    return text.replace("$", r"\$")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: Path, dpi: int = 80) -> None:
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=dpi)
    _pyplot().close(figure)
    _readable(path)


def _readable(path: Path) -> None:
    """Atomic writes create 0600 files; a report is meant to be read by others (web folders)."""
    os.chmod(path, 0o644)


def _table(header: list[str], rows: list[list[Any]], highlight: str | None = None) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        cells = "".join(f"<td class='n'>{_e(c)}</td>" if _is_number(c) else f"<td>{_e(c)}</td>" for c in row)
        marker = " class='best'" if highlight is not None and row and row[0] == highlight else ""
        body.append(f"<tr{marker}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or bool(re.fullmatch(r"-?\d+(\.\d+)?", str(value)))


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _slug(text: str) -> str:
    """A file-name and anchor-safe version of ``text`` (names from files must not build paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
