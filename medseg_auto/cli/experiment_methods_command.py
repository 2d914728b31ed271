"""``medseg-auto experiment methods``: the method benchmark (trainers x seeds, external test sets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.cli.executor_options import add_executor_arguments, executor_settings
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.experiment")

METHODS = """\
The method benchmark: train every trainer (and network variant) with every seed on one
dataset, predict its in-domain test cases and every case of the external test datasets (never
trained or validated on), and compare each arm with Base case by case.

Splits are drawn once (splits.json): in-domain test (--test-fraction), validation for model
selection (--val-fraction of the rest), training; stratified by site. Exact and near-duplicate
images (perceptual hash, see 'medseg-auto verify'; clusters in duplicates.json) and one
patient's cases (an optional "groups" map in dataset.json) stay on one side. External datasets
are imported like any other (import-folder / import-msd) and predicted from their raw files:
RGB images are converted to a grey model's channel (luminance, with a warning), other sizes and
spacings are resampled as in 'predict'.

Cells (one per arm and seed) run seed by seed (every arm's seed 0 first), one after another,
in N processes with -j N, or as SLURM jobs with --executor slurm (see "executor" below; the
Base+FDA cells then run after the Base cells they use). Each cell writes cells/ARM/seedS/done.json and is never run again:
rerun the same command to resume (an interrupted training continues from its checkpoint), or
add trainers or seeds. A failing cell is logged (failed.json) and the others go on. Changing the
budget, plans or splits needs another --out.

Writes into --out (default results/DATASET/experiments/methods__CONFIG__PLANS/): results.csv (one
row per cell), per_case.csv, leaderboard.csv/.json/.md/.html (per arm, test set and site: Dice
mean ± sd over seeds; paired per-case difference to Base with a bootstrap 95% CI and a Wilcoxon
p-value Holm-corrected over arms; a harm flag where in-domain Dice < 95% of Base's; HTML with
per-site bars and a per-case Dice-vs-Base scatter), failure_prediction.csv (per arm and test set:
how well each per-case signal, OOD score, softmax entropy, mirrored-view disagreement, predicts
a failed case, Dice < 0.5, as AUROC; also in the .md/.html/.json), failure_flags.csv (the flag
rule each model learns from its in-domain cases, as training does from its validation cases,
against the fixed default, on the external sets: sensitivity, specificity; also in the .md/.html/.json),
splits.json, duplicates.json,
logs/. Each cell's test_SET/ folders hold its predictions, metrics.csv and failure_signals.csv.

examples:
  # train on BUSI, test in domain and on STU (never trained on); 3 seeds, 300 iterations per cell
  medseg-auto experiment methods BUSI --test-datasets STU -p plans_cpu_coarse \\
      --trainers Base FeatureDiscrepancy Dispersive --seeds 0 1 2 --epochs 6 --iters-per-epoch 50
  # every registered from-scratch trainer, the network variants and prediction-time FDA, 4 cells at a time
  medseg-auto experiment methods BreastUS --train-sites busi --test-datasets STU Hospital3 \\
      --trainers all --networks disseg catenorm --fda --seeds 0 1 2 -j 4
  # on a SLURM cluster: one GPU job per cell, 20 at a time
  medseg-auto experiment methods BUSI --test-datasets STU --trainers all --seeds 0 1 2 \\
      --executor slurm --slurm-partition gpu --gpus-per-cell 1 --cpus-per-cell 8 --mem-gb 32 -j 20
  # resume (same command); tables of what is finished, without running anything
  medseg-auto experiment methods BUSI --test-datasets STU -p plans_cpu_coarse --trainers all --seeds 0 1 2 \\
      --epochs 6 --iters-per-epoch 50 --report-only
  # failure signals for cells finished before cells recorded them (their prediction time again)
  medseg-auto experiment methods BUSI --test-datasets STU -p plans_cpu_coarse --trainers all --seeds 0 1 2 \\
      --epochs 6 --iters-per-epoch 50 --report-only --add-signals
  cat medseg_auto_data/results/Dataset501_BUSI/experiments/methods__2d__plans_cpu_coarse/leaderboard.md
"""


def register_methods(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("methods", help="benchmark trainers x seeds, in domain and on external datasets",
                              description=METHODS, formatter_class=HelpFormatter)
    parser.add_argument("dataset", metavar="NAME", help="training dataset (name, id or folder), planned and preprocessed")
    parser.add_argument("--test-datasets", nargs="+", default=[], metavar="NAME",
                        help="external test-only datasets (imported, never trained on)")
    parser.add_argument("--train-sites", nargs="+", default=None, metavar="SITE",
                        help="use only these sites of the training dataset (default: all)")
    parser.add_argument("--trainers", nargs="+", default=["Base"],
                        help="trainer names or 'all' (every from-scratch trainer, less those whose mechanism needs "
                             "more training sites than the training cases hold); Base is always included")
    parser.add_argument("--networks", nargs="+", default=[], metavar="NETWORK",
                        help="network variants, each an extra arm 'Base-NETWORK' (e.g. disseg catenorm)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (same splits for all)")
    parser.add_argument("--fda", action="store_true",
                        help="add the arm Base+FDA: each seed's Base model predicting the external sets with "
                             "prediction-time FDA towards the training dataset (as predict --fda-source)")
    parser.add_argument("--config", default="2d", help="configuration to train")
    parser.add_argument("-p", "--plans", default="plans", help="plans name (preprocessed/NAME/PLANS.json)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per cell (default: the trainer's)")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="training iterations per epoch")
    parser.add_argument("--val-iters-per-epoch", type=int, default=None, help="validation batches per epoch")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of the cases held out as in-domain test")
    parser.add_argument("--val-fraction", type=float, default=0.125, help="share of the rest used for validation")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the splits")
    parser.add_argument("--duplicate-distance", type=int, default=None, metavar="BITS",
                        help="near duplicates: perceptual hashes at most BITS of 64 apart (default: 8)")
    parser.add_argument("--checkpoint", choices=("best", "final"), default="best",
                        help="model tested: validation-selected best (final if none) or final")
    parser.add_argument("--trainer-option", action="append", default=[], metavar="KEY=VALUE",
                        help="trainer option by its argparse dest, value as JSON if it parses (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train and predict")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading processes per training")
    parser.add_argument("--report-only", action="store_true",
                        help="run no cell: rewrite the tables from the finished cells (e.g. while another call runs)")
    parser.add_argument("--add-signals", action="store_true",
                        help="predict again the test sets of finished cells that lack failure signals (cells "
                             "computed before cells recorded them; costs their prediction time again), then "
                             "rewrite the tables; with --report-only no cell is trained")
    parser.add_argument("--out", type=Path, default=None, help="experiment folder (default under results/DATASET/experiments/)")
    add_executor_arguments(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run_methods_command)


def run_methods_command(args: argparse.Namespace) -> int:
    from medseg_auto.cli.trainer_option_values import parse_trainer_options
    from medseg_auto.dataset.duplicates import DEFAULT_MAX_DISTANCE
    from medseg_auto.experiments import methods as experiment
    from medseg_auto.experiments.cells import TrainingOptions

    configure_logging(None, verbose=args.verbose)
    home = resolve_home(args)
    options = TrainingOptions(
        configuration=args.config, plans_name=args.plans, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
        val_iters_per_epoch=args.val_iters_per_epoch, trainer_options=parse_trainer_options(args.trainer_option),
        checkpoint=args.checkpoint, device=args.device, num_workers=args.num_workers,
    )
    request = experiment.MethodsRequest(
        dataset=args.dataset, trainers=args.trainers, options=options, networks=args.networks, seeds=args.seeds,
        test_datasets=args.test_datasets, train_sites=args.train_sites, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, split_seed=args.split_seed,
        duplicate_distance=DEFAULT_MAX_DISTANCE if args.duplicate_distance is None else args.duplicate_distance,
        executor=executor_settings(args), output=args.out, report_only=args.report_only, fda=args.fda,
        add_signals=args.add_signals,
    )
    experiment.check_request(request, quiet=True)  # a typo in a trainer name should cost nothing
    request.dataset = home.find_dataset(args.dataset)
    folder = args.out or experiment.default_folder(home, request)
    log_file = start_log(folder, "experiment_methods", args)
    outcome = experiment.run_methods(home, request, show_progress=not args.no_progress)
    log.info("%d cell(s) finished; experiment folder %s", len(outcome.rows), outcome.folder)
    for name, path in outcome.files.items():
        log.info("  %-18s %s", name, path)
    log.info("log: %s", log_file)
    return 0
