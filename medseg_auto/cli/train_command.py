"""``medseg-auto train``: train one fold of one configuration with a registered trainer."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from medseg_auto.cli.aliases import StrictArgumentParser
from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.train")

EXAMPLES = """\
examples:
  medseg-auto train Hippocampus 3d_fullres 0
  medseg-auto train Hippocampus 2d all -tr NoMirroring --epochs 50
  medseg-auto train Hippocampus 3d_fullres 0 -tr FewEpochs --device cpu
  medseg-auto train Hippocampus 3d_fullres 0 --continue          # resume after a crash or kill
  medseg-auto train BreastUS 2d 0 --pretrained results/.../checkpoint_final.pt   # fine-tune
  torchrun --nproc_per_node 2 -m medseg_auto train Hippocampus 3d_fullres 0   # DDP

Results: results/NAME/TRAINER__PLANS__CONFIG/fold_F/ with training_log.txt, progress.csv,
progress.png, checkpoint_{best,latest,final}.pt and validation/summary.json. Trainer-specific
options appear in this help once -tr names the trainer (medseg-auto train -tr NAME -h);
'medseg-auto trainers' lists the trainers.
"""


class TrainArgumentParser(StrictArgumentParser):
    """Adds the options of the trainer named by ``-tr`` before parsing the rest.

    argparse cannot know a trainer's options before it has read ``-tr``, so the first parse
    reads only ``-tr`` (``parse_known_args``), then the trainer's ``add_cli_arguments`` extend
    this parser, then the real parse runs. An unknown name adds nothing here; the command then
    fails with the list of known trainers.
    """

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None):  # type: ignore[override]
        if not getattr(self, "_trainer_options_added", False):
            self._trainer_options_added = True
            add_trainer_options(self, _peek_trainer(args))
        return super().parse_known_args(args, namespace)


def _peek_trainer(args: Sequence[str] | None) -> str:
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("-tr", "--trainer", default="Base")
    known, _ = probe.parse_known_args(args)
    return known.trainer


def add_trainer_options(parser: argparse.ArgumentParser, trainer_name: str) -> list[str]:
    """Add the options of every method of ``trainer_name`` in their own group; return their dests."""
    from medseg_auto.errors import MedsegError
    from medseg_auto.training.registry import get_trainer

    try:
        spec = get_trainer(trainer_name)
    except MedsegError:
        return []
    dests: list[str] = []
    for method_class in spec.methods:
        group = parser.add_argument_group(f"options of trainer {method_class.__name__}")
        before = {action.dest for action in parser._actions}
        method_class.add_cli_arguments(group)  # type: ignore[arg-type]
        dests += [action.dest for action in parser._actions if action.dest not in before]
    parser.set_defaults(trainer_option_dests=dests)
    return dests


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", formatter_class=HelpFormatter, help="train one fold of a configuration",
        description=__doc__ + "\n\n" + EXAMPLES,
    )
    parser.__class__ = TrainArgumentParser  # subparsers build plain parsers; this one reads -tr first
    parser.add_argument("dataset", help="dataset name (e.g. Hippocampus), id (4) or folder name")
    parser.add_argument("configuration", help="configuration: 2d, 3d_fullres, 3d_lowres")
    parser.add_argument("fold", help="fold 0..4, or 'all' to train on every case")
    parser.add_argument("-tr", "--trainer", default="Base", help="trainer name (see 'medseg-auto trainers')")
    parser.add_argument("-p", "--plans", default="plans", help="plans name (preprocessed/NAME/PLANS.json)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the trainer's, 1000 for Base)")
    parser.add_argument("--iters-per-epoch", type=int, default=None,
                        help="training iterations per epoch (default: the trainer's, 250 for Base)")
    parser.add_argument("--val-iters-per-epoch", type=int, default=None,
                        help="validation batches per epoch (default: 50 per 250 training iterations)")
    parser.add_argument("--continue", dest="continue_training", action="store_true",
                        help="resume from checkpoint_final, else _latest, else _best")
    parser.add_argument("--pretrained", default=None, metavar="CKPT",
                        help="initialise from these weights (matching names and shapes only)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loading processes (default: $MEDSEG_AUTO_WORKERS or cores - 1)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 on CPU (default: bf16 autocast)")
    parser.add_argument("--val-best", action="store_true", help="final validation with checkpoint_best")
    parser.add_argument("--npz", action="store_true", help="save softmax probabilities in the final validation")
    parser.add_argument("--network", default="dynunet",
                        help="network variant, usable with any trainer (see 'medseg-auto trainers'); a "
                             "non-default one is added to the results folder name: TRAINER-NETWORK__PLANS__CONFIG")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log losses, Dice, LR and validation overlays for TensorBoard (fold_F/tensorboard/)")
    parser.add_argument("--splits", metavar="FILE", default=None,
                        help="cross-validation folds from this file (e.g. nnU-Net's splits_final.json)")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run, trainer_option_dests=[])


def run(args: argparse.Namespace) -> int:
    from medseg_auto.training.distributed import context_from_environment
    from medseg_auto.run.train import TrainRequest, train_fold

    configure_logging(None, verbose=args.verbose)
    if not context_from_environment().is_main:
        get_logger().setLevel("WARNING")  # one process reports; the others only warn
    options = {dest: getattr(args, dest) for dest in args.trainer_option_dests}
    if args.splits:
        from medseg_auto.cli.splits_option import install_splits_for

        install_splits_for(resolve_home(args), args.dataset, args.splits)
    named = {"num_epochs": args.epochs, "iterations_per_epoch": args.iters_per_epoch,
             "val_iterations_per_epoch": args.val_iters_per_epoch, "num_workers": args.num_workers,
             "cpu_bf16": False if args.no_bf16 else None, "tensorboard": True if args.tensorboard else None}
    folder = train_fold(TrainRequest(
        resolve_home(args), args.dataset, args.configuration, args.fold, trainer_name=args.trainer,
        plans_name=args.plans, network=args.network, trainer_options=options,
        settings={name: value for name, value in named.items() if value is not None},  # unnamed: the trainer's
        continue_training=args.continue_training, pretrained=args.pretrained, device=args.device, seed=args.seed,
        val_best=args.val_best, save_probabilities=args.npz, show_progress=not args.no_progress,
    ))
    log.info("results: %s", folder)
    return 0
