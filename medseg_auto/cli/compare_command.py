"""``medseg-auto compare``: sample-level comparison of two evaluations (the paper's Table 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_logging_arguments
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.compare")

DESCRIPTION = """\
Compare two evaluations of the same cases (folders written by 'medseg-auto evaluate', or the
test_* folders of an experiment cell): RUN_A is the reference (e.g. Base), RUN_B the method.

Table 1 of the feature-discrepancy paper: mean Dice and IoU of A and B and their difference
B - A over the worst-off cases (lowest Dice in A), the best-off cases (highest Dice in A, as
many) and all paired cases. How many: --worst N, or the paper's Table 4 proportion of
worst-off test samples for --proportion-of (default UDIAT, breast ultrasound: 35 of 163).
A two-sided Wilcoxon signed-rank test of the paired differences (all and worst-off cases).
If a run logged per-case L_fd (an 'l_fd' column in metrics.csv, or per_case_l_fd.csv with
columns case,l_fd next to it: 'medseg-auto feature-discrepancy' writes it, experiment cells
write it themselves), a scatter plot of L_fd against Dice and Spearman's rho.

Writes comparison.json, comparison.md, per_case.csv (and l_fd_vs_dice.png) into --out
(default: RUN_B/compare_vs_<name of RUN_A>).

examples:
  medseg-auto compare results/base_test/ results/fd_test/
  medseg-auto compare EXP/cells/Base/f1_r0/test_base_test EXP/cells/FeatureDiscrepancy/f1_r0/test_base_test --worst 10
  medseg-auto compare evalA/metrics.csv evalB/metrics.csv --proportion-of US-TNBC -o reports/cmp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from medseg_auto.evaluation.worst_off import DEFAULT_PROPORTION_OF, PAPER_WORST_OFF

    parser = subparsers.add_parser("compare", help="compare two evaluations case by case (Table 1, Wilcoxon)",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("run_a", metavar="RUN_A", type=Path, help="reference evaluation folder (or its metrics.csv)")
    parser.add_argument("run_b", metavar="RUN_B", type=Path, help="evaluation folder of the method (or its metrics.csv)")
    parser.add_argument("--worst", type=int, default=None, metavar="N",
                        help="number of worst-off (and best-off) cases (default: the Table 4 proportion)")
    parser.add_argument("--proportion-of", choices=sorted(PAPER_WORST_OFF), default=DEFAULT_PROPORTION_OF,
                        help="the paper's Table 4 dataset whose worst-off proportion sets the count")
    parser.add_argument("--names", nargs=2, default=None, metavar=("A", "B"), help="names of the runs in the tables")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: RUN_B/compare_vs_<A>)")
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.evaluation.compare import COMPARISON_JSON, COMPARISON_MD, load_run, write_comparison

    configure_logging(None, verbose=args.verbose)
    names = args.names or (None, None)
    run_a, run_b = load_run(args.run_a, names[0]), load_run(args.run_b, names[1])
    output = args.out or run_b.source / f"compare_vs_{run_a.source.name}"
    result = write_comparison(run_a, run_b, output, args.worst, args.proportion_of)
    for group in ("worst_off", "best_off", "all"):
        row = result["table1"][group]
        log.info("%-9s n=%-4d Dice %.4f -> %.4f (%+.4f)  IoU %.4f -> %.4f (%+.4f)", group, row["n"], row["dice_a"],
                 row["dice_b"], row["delta_dice"], row["iou_a"], row["iou_b"], row["delta_iou"])
    p_value = result["wilcoxon"]["all"]["dice"]["p_value"]
    log.info("Wilcoxon signed-rank (Dice, all pairs): p = %s", "n/a" if p_value is None else f"{p_value:.4g}")
    log.info("written: %s, %s", output / COMPARISON_JSON, output / COMPARISON_MD)
    return 0
