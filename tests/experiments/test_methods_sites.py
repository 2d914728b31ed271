"""``experiment methods --trainers all`` leaves out trainers that need more training sites than
the training cases hold (they would reduce to another arm), says so in one log line and in
``experiment.json``; a trainer named explicitly runs anyway, with a warning."""

from __future__ import annotations

import json

from medseg_auto.cli.main import main
from medseg_auto.experiments.methods import arms_for_sites, resolve_arms
from tests.experiments.test_methods_benchmark import ARGS, benchmark_home  # noqa: F401 (fixture)

NEED_TWO_SITES = {"SiteBalanced", "SiteAdversarial", "ExchangeableFeatureDiscrepancy", "RandomAmplitudeMixup",
                  "SemanticGuidedContrastiveRAM"}


def test_all_leaves_out_site_trainers_on_one_site_but_keeps_named_ones():
    kept, left_out = arms_for_sites(resolve_arms(["all"], quiet=True), 1)
    assert set(left_out) == NEED_TWO_SITES and not NEED_TWO_SITES & {arm.name for arm in kept}
    assert "needs >= 2 training sites, the training cases hold 1" in left_out["SiteBalanced"]
    kept, left_out = arms_for_sites(resolve_arms(["all"], quiet=True), 2)
    assert not left_out and NEED_TWO_SITES <= {arm.name for arm in kept}
    kept, left_out = arms_for_sites(resolve_arms(["SiteBalanced", "all"], quiet=True), 1)
    assert "SiteBalanced" in {arm.name for arm in kept} and "SiteBalanced" not in left_out


def test_methods_records_the_left_out_trainers(benchmark_home, capsys):  # noqa: F811
    out = benchmark_home.root / "one_site"
    base = ["experiment", "methods", "Syn2d", "--train-sites", "siteA", "--seeds", "0", "--report-only",
            "--out", str(out), "--home", str(benchmark_home.root), *ARGS]
    assert main(base[:3] + ["--trainers", "all", "SiteAdversarial"] + base[3:]) == 0
    log_text = capsys.readouterr().err
    line = next(line for line in log_text.splitlines() if "--trainers all leaves out SiteBalanced" in line
                or ("--trainers all leaves out" in line and "training sites" in line))
    assert "SiteBalanced" in line and "SiteAdversarial" not in line  # named: kept, with a warning
    assert "SiteAdversarial needs >= 2 training sites, the training cases hold 1" in log_text
    stored = json.loads((out / "experiment.json").read_text())["last_request"]
    assert set(stored["left_out_for_sites"]) == NEED_TWO_SITES - {"SiteAdversarial"}
    assert "SiteAdversarial" in stored["arms"] and "SiteBalanced" not in stored["arms"]
