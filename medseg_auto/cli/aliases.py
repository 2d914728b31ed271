"""Strict option parsing and nnU-Net v2's spellings, so an nnU-Net user's habits either work or
fail loudly.

argparse by default accepts abbreviations (``--c`` for ``--continue``) and glues a short option
to the rest of its word (``-chk`` becomes ``-c hk``, ``-pretrained_weights`` becomes
``-p retrained_weights``): an nnU-Net flag we do not know would then change another option
silently. :class:`StrictArgumentParser` refuses both; :func:`add_aliases` then adds, after every
command has registered its options, nnU-Net's spellings of the options we share, an
underscore spelling of every hyphenated long option (``--save_probabilities``) and a hyphen or
underscore spelling of every command name (``find-best-configuration``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

_NUMBER_TAIL = re.compile(r"^[0-9.,:+-]*$")

# command -> {our option string: nnU-Net's spellings}; only options with the same meaning.
NNUNET_OPTION_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "plan_and_preprocess": {"-np": ("-npfp",), "--verify": ("--verify_dataset_integrity",)},
    "train": {"--continue": ("--c",), "--pretrained": ("-pretrained_weights",), "--device": ("-device",),
              "--val-best": ("--val_best",), "--npz": ("--npz",)},
    "predict": {"--checkpoint": ("-chk",), "--save-probabilities": ("--save_probabilities",),
                "--no-mirroring": ("--disable_tta",), "--step": ("-step_size",), "--device": ("-device",),
                "-np": ("-nps",), "--no-progress": ("--disable_progress_bar",)},
    "evaluate": {"--predicted-only": ("--chill",)},
    "find_best_configuration": {"--no-ensembles": ("--disable_ensembling",)},
    "ensemble": {"--save-probabilities": ("--save_npz",)},
}


class StrictArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` without abbreviations and without ``-cVALUE`` for word values.

    ``allow_abbrev=False`` stops ``--c`` standing for ``--continue``; it does not stop a
    single-dash word being split into a short option and its value (``-chk`` -> ``-c hk``), so
    such a split is refused too unless the value is a number (``-f0``, ``-np8`` still work).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string: str):  # type: ignore[override]
        single_dash_word = (len(option_string) > 2 and option_string[0] in self.prefix_chars
                            and option_string[1] not in self.prefix_chars)
        if single_dash_word and not _NUMBER_TAIL.match(option_string[2:]):
            return []  # -> "unrecognized arguments: -chkk" instead of a silent -c hkk
        return super()._get_option_tuples(option_string)


def checkpoint_name(value: str) -> str:
    """nnU-Net's ``-chk checkpoint_final.pth`` -> ``final``; our names pass unchanged."""
    name = Path(value).name
    for suffix in (".pth", ".pt"):
        name = name.removesuffix(suffix)
    return name.removeprefix("checkpoint_")


_VALUE_CONVERTERS: dict[tuple[str, str], Callable[[str], str]] = {("predict", "--checkpoint"): checkpoint_name}


def add_aliases(parser: argparse.ArgumentParser) -> None:
    """Add option and command aliases to ``parser``'s commands (after they are all registered).

    Underscore spellings are parsed but not listed in ``--help`` (they would double it);
    nnU-Net's spellings are listed next to ours.
    """
    commands = _subcommands(parser)
    for name, command in list(commands.items()):
        for alias in {name.replace("_", "-"), name.replace("-", "_")} - {name}:
            commands.setdefault(alias, command)
    for name, command in _unique(commands):
        _add_underscore_spellings(command)
        for nested_name, nested in _unique(_subcommands(command)):
            _add_underscore_spellings(nested)
        key = name.replace("-", "_")
        for ours, theirs in NNUNET_OPTION_ALIASES.get(key, {}).items():
            action = _option_actions(command).get(ours)
            if action is None:
                continue
            for spelling in theirs:
                if spelling not in _option_actions(command):
                    _option_actions(command)[spelling] = action
                    action.option_strings.append(spelling)
            converter = _VALUE_CONVERTERS.get((key, ours))
            if converter is not None:
                action.type = converter
        if key == "predict" and "-npp" not in _option_actions(command):
            command.add_argument("-npp", type=int, default=None, dest="nnunet_preprocessing_processes",
                                 help="nnU-Net's preprocessing processes: accepted and ignored "
                                      "(cases are preprocessed one at a time beside the network)")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices  # type: ignore[return-value]
    return {}


def _unique(commands: dict[str, argparse.ArgumentParser]) -> list[tuple[str, argparse.ArgumentParser]]:
    """One (first name, parser) pair per parser: aliases share their parser."""
    seen: dict[int, tuple[str, argparse.ArgumentParser]] = {}
    for name, command in commands.items():
        seen.setdefault(id(command), (name, command))
    return list(seen.values())


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    # argparse keeps the option-string table private; it has no public way to add a spelling.
    return parser._option_string_actions


def _add_underscore_spellings(parser: argparse.ArgumentParser) -> None:
    table = _option_actions(parser)
    for option, action in list(table.items()):
        if option.startswith("--") and "-" in option[2:]:
            table.setdefault("--" + option[2:].replace("-", "_"), action)
