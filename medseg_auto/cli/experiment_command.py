"""``medseg-auto experiment``: multi-run experiments (data addition, leave one site out)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.cli.executor_options import add_executor_arguments, executor_settings
from medseg_auto.cli.trainer_option_values import parse_trainer_options
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.experiment")

DESCRIPTION = """\
Experiments made of many training runs ("cells") on fixed, seeded case splits, written once to
splits.json in the experiment folder. Each cell trains with 'train' on explicit case lists
(results/DATASET/TRAINER__PLANS__CONFIG/fold_<tag>/), selects its model on validation cases
only, predicts its test cases and scores them. A finished cell writes cells/TRAINER/CELL/done.json
and is never run again: rerun the same command to resume (an interrupted training continues
from its checkpoint), or add trainers, fractions or repeats to extend it. Changing epochs,
plans or other training settings needs another --out.

examples:
  medseg-auto experiment data-addition --dataset BreastUS --base busi --novel stu --config 2d \\
      --plans plans_cpu_small --trainers Base FeatureDiscrepancy --epochs 20 --iters-per-epoch 50
  medseg-auto experiment data-addition --base BUSI --novel STU --config 2d   # two datasets: merged first
  medseg-auto experiment leave-one-site-out BreastUS --config 2d --trainers Base Dispersive --epochs 20
  medseg-auto experiment leave-one-site-out BreastUS --trainers Base Dispersive --executor slurm \\
      --slurm-partition gpu --gpus-per-cell 1 --cpus-per-cell 8 -j 16   # every cell a SLURM job
"""

DATA_ADDITION = """\
Data addition (feature-discrepancy paper, Figure 3): train on the base site's training cases plus
a fraction of the novel site's training pool (nested subsets per repeat), test on a fixed base
test split (and the novel test split). Default splits follow the paper's 70/20/10: 20% of the
base cases test, 12.5% of the rest (10% overall) validation, the rest training; 20% of the
novel cases test, the rest the pool. Validation cases are base cases only, the same in every
cell.

Writes into --out (default results/DATASET/experiments/data_addition__BASE__NOVEL__CONFIG__PLANS/):
results.csv (one row per cell: trainer, fraction, repeat, n_novel, Dice/IoU on base and novel
test), summary.csv (mean/std over repeats), results.md, dice_vs_fraction.png, splits.json,
experiment.json, logs/.

examples:
  medseg-auto experiment data-addition --dataset BreastUS --base-site busi --novel-site stu \\
      --config 2d --plans plans_cpu_small --fractions 0 0.0625 0.125 0.25 0.5 1 \\
      --trainers Base FeatureDiscrepancy ExchangeableFeatureDiscrepancy LocalContrastive \\
      --epochs 20 --iters-per-epoch 50 --repeats 3
  medseg-auto experiment data-addition --base BUSI --novel STU --config 2d --trainers Base --epochs 5
"""

LEAVE_ONE_SITE_OUT = """\
Leave one site out: for each site, train on the other sites (validation cases drawn from those
sites only, stratified by site) and test on every case of the held-out site.

Writes into --out (default results/DATASET/experiments/leave_one_site_out__CONFIG__PLANS/):
results.csv (one row per cell), table.csv (rows trainers, columns held-out sites and mean Dice),
table.md (Dice and IoU), splits.json, experiment.json, logs/.

examples:
  medseg-auto experiment leave-one-site-out BreastUS --config 2d --plans plans_cpu_small \\
      --trainers Base Dispersive SemanticGuidedContrastiveRAM --epochs 20 --iters-per-epoch 50
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiment", help="data-addition, leave-one-site-out and method-benchmark experiments",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    kinds = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    addition = kinds.add_parser("data-addition", help="add fractions of a novel site to a base site",
                                description=DATA_ADDITION, formatter_class=HelpFormatter)
    addition.add_argument("--dataset", default=None,
                          help="dataset holding both sites; without it --base and --novel are datasets to merge")
    addition.add_argument("--base", "--base-site", dest="base", required=True, help="base site (or dataset)")
    addition.add_argument("--novel", "--novel-site", dest="novel", required=True, help="novel site (or dataset)")
    addition.add_argument("--fractions", type=float, nargs="+", default=[0, 0.0625, 0.125, 0.25, 0.5, 1],
                          help="fractions of the novel training pool to add")
    addition.add_argument("--test-fraction", type=float, default=0.2, help="share of the base cases held out for testing")
    addition.add_argument("--novel-test-fraction", type=float, default=None,
                          help="share of the novel cases held out for testing (default: --test-fraction; 0: none)")
    _add_common(addition)
    addition.set_defaults(handler=run_data_addition_command)
    held_out = kinds.add_parser("leave-one-site-out", help="train on all sites but one, test on that one",
                                description=LEAVE_ONE_SITE_OUT, formatter_class=HelpFormatter)
    held_out.add_argument("dataset", metavar="NAME", help="multi-site dataset (name, id or folder)")
    held_out.add_argument("--sites", nargs="+", default=None, help="held-out sites to run (default: every site)")
    _add_common(held_out)
    held_out.set_defaults(handler=run_leave_one_site_out_command)
    from medseg_auto.cli.experiment_methods_command import register_methods

    register_methods(kinds)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 1)[1])


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="2d", help="configuration to train")
    parser.add_argument("--trainers", nargs="+", default=["Base"], help="trainer names (see 'medseg-auto trainers')")
    parser.add_argument("-p", "--plans", default="plans", help="plans name (preprocessed/NAME/PLANS.json)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per cell (default: the trainer's)")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="training iterations per epoch")
    parser.add_argument("--val-iters-per-epoch", type=int, default=None, help="validation batches per epoch")
    parser.add_argument("--repeats", type=int, default=1, help="repeats with other seeds (and novel subsets)")
    parser.add_argument("--val-fraction", type=float, default=0.125, help="share of the training cases used for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits; repeat r trains with seed + r")
    parser.add_argument("--checkpoint", choices=("best", "final"), default="best",
                        help="model tested: validation-selected best (final if none) or final")
    parser.add_argument("--network", default="dynunet", help="network variant (see 'medseg-auto trainers')")
    parser.add_argument("--trainer-option", action="append", default=[], metavar="KEY=VALUE",
                        help="trainer option by its argparse dest, value as JSON if it parses (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train and predict")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading processes per training")
    parser.add_argument("--out", type=Path, default=None, help="experiment folder (default under results/DATASET/experiments/)")
    add_executor_arguments(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)


def _training_options(args: argparse.Namespace):
    from medseg_auto.experiments.cells import TrainingOptions

    return TrainingOptions(
        configuration=args.config, plans_name=args.plans, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
        val_iters_per_epoch=args.val_iters_per_epoch, trainer_options=parse_trainer_options(args.trainer_option),
        network=args.network, checkpoint=args.checkpoint, device=args.device, num_workers=args.num_workers,
    )


def run_data_addition_command(args: argparse.Namespace) -> int:
    from medseg_auto.experiments import data_addition as experiment

    configure_logging(None, verbose=args.verbose)
    home = resolve_home(args)
    options = _training_options(args)
    request = experiment.DataAdditionRequest(
        dataset=args.dataset, base_site=args.base, novel_site=args.novel, trainers=args.trainers, options=options,
        fractions=args.fractions, repeats=args.repeats, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, novel_test_fraction=args.novel_test_fraction, seed=args.seed, output=args.out,
        executor=executor_settings(args),
    )
    experiment.check_request(request)  # before a merge: a typo in a trainer name should cost nothing
    dataset, base, novel = experiment.resolve_base_and_novel(home, args.dataset, args.base, args.novel,
                                                             show_progress=not args.no_progress)
    request = replace(request, dataset=dataset, base_site=base, novel_site=novel)
    folder = args.out or experiment.default_folder(home, request)
    log_file = start_log(folder, "experiment_data_addition", args)
    outcome = experiment.run_data_addition(home, request, show_progress=not args.no_progress)
    _report(outcome, log_file)
    return 0


def run_leave_one_site_out_command(args: argparse.Namespace) -> int:
    from medseg_auto.experiments import leave_one_site_out as experiment

    configure_logging(None, verbose=args.verbose)
    home = resolve_home(args)
    request = experiment.LeaveOneSiteOutRequest(
        dataset=home.find_dataset(args.dataset), trainers=args.trainers, options=_training_options(args),
        repeats=args.repeats, val_fraction=args.val_fraction, seed=args.seed, sites=args.sites, output=args.out,
        executor=executor_settings(args),
    )
    folder = args.out or experiment.default_folder(home, request)
    log_file = start_log(folder, "experiment_leave_one_site_out", args)
    outcome = experiment.run_leave_one_site_out(home, request, show_progress=not args.no_progress)
    _report(outcome, log_file)
    return 0


def _report(outcome, log_file: Path) -> None:
    log.info("%d cell(s) finished; experiment folder %s", len(outcome.rows), outcome.folder)
    for name, path in outcome.files.items():
        log.info("  %-22s %s", name, path)
    log.info("log: %s", log_file)
