"""``medseg-auto trainers``: list the registered trainers (built-in and from entry points)."""

from __future__ import annotations

import argparse

from medseg_auto.cli.common import HelpFormatter

EXAMPLES = """\
examples:
  medseg-auto trainers
  medseg-auto train Hippocampus 3d_fullres 0 -tr NoMirroring

Third-party packages add trainers through the entry-point group 'medseg_auto.trainers';
'A+B' combines two trainers' methods.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trainers", formatter_class=HelpFormatter, help="list the registered trainers",
        description=__doc__ + "\n\n" + EXAMPLES,
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.training.network_registry import available_networks
    from medseg_auto.training.registry import available_trainers

    trainers = available_trainers()
    networks = available_networks()
    width = max((len(name) for name in [*trainers, *networks]), default=0)
    print("trainers (-tr NAME):")
    for name, spec in trainers.items():
        print(f"  {name:<{width}}  {spec.description}")
    print("networks (--network NAME, with any trainer):")
    for name, network in networks.items():
        print(f"  {name:<{width}}  {network.description}")
    return 0
