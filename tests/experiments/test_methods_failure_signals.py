"""Failure prediction in ``experiment methods``: every cell writes per-case failure signals for
every test set (in-domain and external), and the leaderboard gains a table of their AUROC for
failure; cells finished before the signals existed show ``-``, not an error."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from medseg_auto.cli.main import main
from medseg_auto.experiments.cells import DONE_MARKER, Cell
from medseg_auto.experiments.methods_failure import failure_prediction_table, signal_frame
from medseg_auto.experiments.methods_tables import write_methods_results
from medseg_auto.inference.uncertainty import SIGNALS_FILE
from tests.experiments.test_methods_benchmark import ARGS, benchmark_home  # noqa: F401 (fixture)


def _fake_cell(folder, arm: str, seed: int, dice: list[float], signal: list[float] | None) -> tuple[Cell, object]:
    """A finished cell with one in-domain test set of ``len(dice)`` cases (one class each) and,
    unless ``signal`` is None, a signal table whose ``mirror_disagreement`` is ``signal``."""
    cell = Cell(key=f"{arm}/seed{seed}", trainer=arm, tag=f"t{seed}", train_ids=[], val_ids=[],
                test_sets={"in_domain": [f"c{i}" for i in range(len(dice))]}, seed=seed, info={"arm": arm})
    path = folder / arm / f"seed{seed}"
    test = path / "test_in_domain"
    test.mkdir(parents=True)
    pd.DataFrame({"case": [f"c{i}" for i in range(len(dice))], "label": 1, "site": "s",
                  "dice": dice}).to_csv(test / "metrics.csv", index=False)
    if signal is not None:
        pd.DataFrame({"case_id": [f"c{i}" for i in range(len(dice))], "ood_score": "",
                      "mirror_disagreement": signal}).to_csv(test / SIGNALS_FILE, index=False)
    (path / DONE_MARKER).write_text(json.dumps({"row": {"arm": arm, "seed": seed, "dice_in_domain": float(np.mean(dice))}}))
    return cell, path


def test_failure_table_gives_auroc_per_seed_and_dashes_for_cells_without_signals(tmp_path):
    dice = [0.9, 0.8, 0.2, 0.1]
    cells = [_fake_cell(tmp_path, "Base", 0, dice, [0.1, 0.2, 0.6, 0.7]),   # ranks failures perfectly
             _fake_cell(tmp_path, "Base", 1, dice, [0.1, 0.6, 0.2, 0.7]),   # half right: AUROC 0.75
             _fake_cell(tmp_path, "Other", 0, dice, None)]                  # finished before the signals
    table = failure_prediction_table(signal_frame(cells), ["Base", "Other"]).set_index("arm")
    assert table.loc["Base", "auroc_mirror_disagreement_mean"] == 0.875
    assert table.loc["Base", "auroc_mirror_disagreement_n"] == 2 and table.loc["Base", "n_seeds_with_signals"] == 2
    assert table.loc["Base", "failure_rate_mean"] == 0.5
    assert table.loc["Other", "n_seeds_with_signals"] == 0 and table.loc["Other", "auroc_mirror_disagreement_n"] == 0
    assert table.loc["Other", "failure_rate_mean"] == 0.5  # the failure rate needs no signals

    paths = write_methods_results(tmp_path / "out", cells, ["Base", "Other"], {"dataset": "toy"})
    markdown = paths["leaderboard.md"].read_text()
    assert "## Which cases fail: failure prediction" in markdown
    base_line = next(line for line in markdown.splitlines() if line.startswith("| Base | in-domain"))
    other_line = next(line for line in markdown.splitlines() if line.startswith("| Other | in-domain"))
    assert "0.88 ± 0.18 (2)" in base_line and "| 2 of 2 |" in base_line
    assert "| 0 of 1 |" in other_line and other_line.rstrip(" |").endswith("-")
    assert "finished before the signals were recorded" in markdown
    rows = json.loads(paths["leaderboard.json"].read_text())["failure_prediction"]
    assert {row["arm"] for row in rows} == {"Base", "Other"}
    assert pd.read_csv(paths["failure_prediction.csv"])["arm"].tolist() == ["Base", "Other"]
    assert "Which cases fail" in paths["leaderboard.html"].read_text()


def test_every_cell_writes_failure_signals_for_in_domain_and_external_sets(benchmark_home):  # noqa: F811
    out = benchmark_home.root / "signals"
    argv = ["experiment", "methods", "Syn2d", "--test-datasets", "ExtRGB", "--trainers", "Base", "--seeds", "0",
            "--out", str(out), "--home", str(benchmark_home.root), *ARGS]
    assert main(argv) == 0
    cell = out / "cells" / "Base" / "seed0"
    for test_set, n_cases in (("in_domain", None), ("ExtRGB", 4)):
        signals = pd.read_csv(cell / f"test_{test_set}" / SIGNALS_FILE, dtype={"case_id": str})
        cases = pd.read_csv(cell / f"test_{test_set}" / "metrics.csv", dtype={"case": str})["case"].unique()
        assert sorted(signals["case_id"]) == sorted(cases) and (n_cases is None or len(cases) == n_cases)
        for column in ("entropy_image", "entropy_foreground", "soft_dice_deficit", "mirror_disagreement"):
            assert signals[column].between(0, 1).all(), (test_set, column)
        assert "ood_score" in signals  # empty here: 3 validation cases are too few for an OOD reference
    table = pd.read_csv(out / "failure_prediction.csv")
    assert set(table["test_set"]) == {"in_domain", "ExtRGB"} and table["n_seeds_with_signals"].eq(1).all()
    assert "Which cases fail" in (out / "leaderboard.md").read_text()

    # a cell finished before cells recorded signals: --add-signals predicts its sets again and
    # gives the same signals, leaving its scored predictions and metrics as they were
    originals = {name: (cell / f"test_{name}" / SIGNALS_FILE).read_text() for name in ("in_domain", "ExtRGB")}
    metrics_times = {name: (cell / f"test_{name}" / "metrics.csv").stat().st_mtime_ns for name in originals}
    for name in originals:
        (cell / f"test_{name}" / SIGNALS_FILE).unlink()
    assert main(argv + ["--report-only"]) == 0
    assert "0 of 1" in (out / "leaderboard.md").read_text()  # shown as missing, not an error
    assert main(argv + ["--report-only", "--add-signals"]) == 0
    for name, text in originals.items():
        again = pd.read_csv(cell / f"test_{name}" / SIGNALS_FILE, dtype={"case_id": str})
        pd.testing.assert_frame_equal(again, pd.read_csv(io.StringIO(text), dtype={"case_id": str}))
        assert (cell / f"test_{name}" / "metrics.csv").stat().st_mtime_ns == metrics_times[name]
    assert not list(cell.glob(".signals-*"))  # the scratch predictions are gone
    assert pd.read_csv(out / "failure_prediction.csv")["n_seeds_with_signals"].eq(1).all()
