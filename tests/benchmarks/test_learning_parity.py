"""Pieces of ``benchmarks/learning_parity.py`` on tiny synthetic inputs: the parity statistics,
the parity plans, the split comparison, resuming, and the one place that says how ours trains.
No training and no timings."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("scipy")

def _metrics_csv(path: Path, dice: dict[str, dict[str, float]]) -> Path:
    """Our evaluator's ``metrics.csv`` layout (only the columns the benchmark reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "site", "class", "dice"])
        writer.writeheader()
        for class_name, cases in dice.items():
            for case, value in cases.items():
                writer.writerow({"case": case, "site": "", "class": class_name,
                                 "dice": "" if math.isnan(value) else value})
    return path


def _run(tool: str, seed: int, dice: dict[str, dict[str, float]]) -> dict:
    return {"tool": tool, "seed": seed, "dice": dice, "train_s": 10.0 + seed, "peak_rss_mib": 100.0}


def test_read_case_dice_keeps_empty_cells_as_nan(parity, tmp_path):
    path = _metrics_csv(tmp_path / "metrics.csv", {"anterior": {"a": 0.5, "b": math.nan}})
    dice = parity.stats.read_case_dice(path)
    assert dice["anterior"]["a"] == 0.5 and math.isnan(dice["anterior"]["b"])


def test_parity_rows_mean_sd_difference_and_paired_test(parity):
    stats = parity.stats
    cases = [f"case_{index}" for index in range(12)]
    nnunet = [_run(stats.NNUNET, seed, {"fg": {case: 0.60 + 0.01 * seed for case in cases}}) for seed in range(3)]
    ours = [_run(stats.OURS, seed, {"fg": {case: 0.70 + 0.001 * index + 0.01 * seed
                                           for index, case in enumerate(cases)}}) for seed in range(3)]
    rows = {row["class"]: row for row in stats.parity_rows("2d", nnunet + ours)}
    assert set(rows) == {"fg", "mean"}
    row = rows["fg"]
    assert row["seeds"] == "3/3" and row["cases"] == 12
    assert row["nnunet_dice"] == "0.610 +- 0.010"
    assert row["difference"] == pytest.approx(0.1055, abs=1e-4)
    assert row["wilcoxon_p"] < 0.01  # ours higher on all 12 cases
    assert row["verdict"] == "parity"
    assert row["nnunet_per_seed"] == pytest.approx([0.60, 0.61, 0.62])


def test_verdict_flags_a_gap_beyond_one_point_or_a_significant_loss(parity):
    verdict = parity.stats.verdict
    assert verdict(-0.02, 0.5) == "gap"
    assert verdict(-0.005, 0.01) == "gap (p < 0.05)"
    assert verdict(-0.005, 0.2) == "parity"
    assert verdict(0.03, 0.001) == "parity"


def test_equal_time_pairs_nnunet_with_ours_largest_budget_that_fits_its_seconds(parity):
    stats = parity.stats
    cases = [f"case_{index}" for index in range(8)]

    def runs(tool, dice, seconds):
        return [{**_run(tool, seed, {"fg": {case: dice + 0.001 * i for i, case in enumerate(cases)}}),
                 "train_s": seconds} for seed in range(2)]

    budgets = [("10x25", runs(stats.NNUNET, 0.60, 900.0) + runs(stats.OURS, 0.62, 450.0)),
               ("20x25", runs(stats.OURS, 0.80, 890.0)),          # ours only: fits nnU-Net's 900 s
               ("40x25", runs(stats.OURS, 0.90, 1800.0))]         # too slow to count
    rows = stats.equal_time_rows("3d_fullres", budgets)
    assert {row["configuration"] for row in rows} == {"3d_fullres equal time: ours 20x25 vs nnU-Net 10x25"}
    fg = next(row for row in rows if row["class"] == "fg")
    assert fg["difference"] == pytest.approx(0.20) and fg["verdict"] == "ours >= nnU-Net"
    assert fg["nnunet_train_s"] == 900.0 and fg["ours_train_s"] == 890.0
    # ours' fitting budget is the same as nnU-Net's: the equal-iteration row says it already
    assert stats.equal_time_rows("2d", budgets[:1]) == []
    assert stats.time_verdict(-0.01, 0.01) == "behind (p < 0.05)" and stats.time_verdict(-0.01, 0.3) == "behind"


def test_paired_wilcoxon_drops_nan_pairs_and_needs_two(parity):
    p_value, cases = parity.stats.paired_wilcoxon({"a": 0.5, "b": math.nan}, {"a": 0.4, "b": 0.3})
    assert cases == 1 and math.isnan(p_value)


def test_plot_has_a_point_per_run(parity, tmp_path):
    stats = parity.stats
    runs = [{"tool": tool, "curve": [{"iterations": 100, "train_s": 5.0 + seed, "dice": 0.5 + 0.01 * seed}]}
            for tool in (stats.NNUNET, stats.OURS) for seed in range(2)]
    path = stats.plot_runs(runs, tmp_path / "plot.png", "test")
    assert path is not None and path.stat().st_size > 0


def _plans(batch: int, patch: list[int], name: str) -> dict:
    return {"plans_name": name, "configurations": {"2d": {"batch_size": batch, "patch_size": patch,
                                                          "spacing": [1.0, 1.0], "data_identifier": f"{name}_2d"}}}


def test_parity_plans_carry_the_batch_override_into_both_files(parity, tmp_path):
    nnunet, ours = tmp_path / "nn" / "nnUNetPlans.json", tmp_path / "ours" / "plans.json"
    for path, plans in ((nnunet, _plans(366, [56, 40], "nnUNetPlans")), (ours, _plans(300, [56, 40], "plans"))):
        path.parent.mkdir()
        path.write_text(json.dumps(plans))
    comparison = parity.write_parity_plans(nnunet, ours, "2d", 32)
    written = [json.loads((path.parent / f"{name}.json").read_text()) for path, name in
               ((nnunet, parity.NNUNET_PARITY_PLANS), (ours, parity.OURS_PARITY_PLANS))]
    assert [plans["configurations"]["2d"]["batch_size"] for plans in written] == [32, 32]
    assert [plans["plans_name"] for plans in written] == [parity.NNUNET_PARITY_PLANS, parity.OURS_PARITY_PLANS]
    assert written[0]["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"  # same preprocessed data
    same = {row["field"]: row["same"] for row in comparison}
    assert same["batch_size"] == same["patch_size"] == same["spacing"] == "yes"
    assert json.loads(nnunet.read_text())["configurations"]["2d"]["batch_size"] == 366  # input untouched
    parity.write_parity_plans(nnunet, ours, "2d", None)  # 'plan': each tool's own batch again
    assert json.loads((ours.parent / "plans_parity.json").read_text())["configurations"]["2d"]["batch_size"] == 300


def test_same_folds_ignores_order_inside_a_fold(parity):
    first = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["c", "a"], "val": ["b"]}]
    assert parity.same_folds(first, [{"train": ["b", "a"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}])
    assert not parity.same_folds(first, list(reversed(first)))


def test_ours_splits_are_computed_by_our_code(parity):
    cases = [f"case_{index:03d}" for index in range(10)]
    folds = parity.tool_splits(Path(sys.executable), parity.OURS_SPLIT_CODE, cases)
    assert len(folds) == 5 and sorted(case for fold in folds for case in fold["val"]) == cases


def test_finished_runs_are_not_redone(parity, tmp_path):
    layout = parity.WorkLayout(tmp_path)
    budget = parity.Budget(epochs=2, iterations=3, val_iterations=1, batch_size=8)
    folder = parity.run_folder(layout, "2d", budget, parity.OURS_TOOL, 1)
    assert folder.parts[-2:] == ("2d_e2x3_v1_b8", "ours_seed1")
    folder.mkdir(parents=True)
    parity.write_json(folder / "run.json", {"tool": "ours", "seed": 1})
    record = parity.run_once(parity.OURS_TOOL, layout, None, "2d", budget, 1, expected_cases=3)
    assert record == {"tool": "ours", "seed": 1}


def test_ours_trains_through_the_cli_with_the_parity_plans_and_budget(parity, tmp_path):
    budget = parity.Budget(epochs=4, iterations=5, val_iterations=2, batch_size=32)
    cmd = parity.ours_train_command(tmp_path, "2d", budget, seed=7, num_workers=1)
    assert cmd[cmd.index("train") + 1:cmd.index("train") + 4] == ["Hippocampus", "2d", "0"]
    for flag, value in (("-p", "plans_parity"), ("--epochs", "4"), ("--iters-per-epoch", "5"),
                        ("--val-iters-per-epoch", "2"), ("--seed", "7"), ("--home", str(tmp_path))):
        assert cmd[cmd.index(flag) + 1] == value


def test_quick_and_help(parity, capsys):
    args = parity.parse_args(["--quick"])
    assert args.configurations == ["2d"] and args.seeds == 1 and args.dataset_cases == 20
    assert args.work.name == "learning_parity_quick"
    assert parity.budgets(args, "2d") == [parity.Budget(2, 3, 1, 8)]
    with pytest.raises(SystemExit) as exit_info:
        parity.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_only_seeds_splits_the_training_between_processes(parity):
    args = parity.parse_args(["--seeds", "3", "--only-seeds", "2"])
    assert [parity.trains_seed(args, seed) for seed in range(3)] == [False, False, True]
    everything = parity.parse_args(["--seeds", "3"])
    assert all(parity.trains_seed(everything, seed) for seed in range(3))
    report = parity.parse_args(["--seeds", "3", "--only-seeds", "0", "--report-only"])
    assert not any(parity.trains_seed(report, seed) for seed in range(3))
    with pytest.raises(SystemExit) as exit_info:
        parity.parse_args(["--seeds", "3", "--only-seeds", "3"])
    assert exit_info.value.code == 2
