"""nnU-Net spellings parse to our options; abbreviations and glued short options fail loudly."""

from __future__ import annotations

import pytest

from medseg_auto.cli.main import build_parser

PREDICT = ["predict", "-i", "in", "-o", "out", "-d", "4", "-c", "3d_fullres"]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_predict_nnunet_flags(parser) -> None:
    args = parser.parse_args(PREDICT + ["-chk", "checkpoint_best.pth", "--save_probabilities", "--disable_tta",
                                        "-step_size", "0.7", "-device", "cpu", "-nps", "3", "-npp", "2",
                                        "--disable_progress_bar"])
    assert args.checkpoint == "best" and args.save_probabilities and args.no_mirroring
    assert args.step == 0.7 and args.device == "cpu" and args.num_processes == 3 and args.no_progress


def test_train_nnunet_flags(parser) -> None:
    args = parser.parse_args(["train", "4", "3d_fullres", "0", "--c", "-pretrained_weights", "w.pt",
                              "-device", "cpu", "--val_best", "--npz"])
    assert args.continue_training
    assert args.pretrained == "w.pt" and args.device == "cpu" and args.val_best and args.npz


def test_plan_and_preprocess_dash_d(parser) -> None:
    args = parser.parse_args(["plan_and_preprocess", "-d", "4", "5", "-npfp", "2", "--verify_dataset_integrity"])
    assert args.dataset is None and args.dataset_ids == ["4", "5"] and args.num_processes == 2 and args.verify


@pytest.mark.parametrize("command", ["find_best_configuration", "find-best-configuration",
                                     "plan_and_preprocess", "plan-and-preprocess", "import_msd", "import-msd",
                                     "feature_discrepancy", "import_folder"])
def test_command_spellings(parser, command: str) -> None:
    argv = {"import_msd": ["x", "--name", "n"], "import_folder": ["--images", "x", "--name", "n"],
            "feature_discrepancy": ["x", "--model", "m"]}.get(command.replace("-", "_"), ["Hippocampus"])
    assert parser.parse_args([command, *argv]).handler is not None


def test_underscore_long_options(parser) -> None:
    args = parser.parse_args(PREDICT + ["--no_postprocessing", "--fda_beta", "0.1"])
    assert args.no_postprocessing and args.fda_beta == 0.1


@pytest.mark.parametrize("argv", [
    ["train", "4", "3d_fullres", "0", "--cont"],            # abbreviation of --continue
    ["train", "4", "3d_fullres", "0", "-pretrained", "w"],  # not -p retrained
    PREDICT + ["-chkk", "final"],                           # not -c hkk
    PREDICT + ["--save-prob"],
    ["plan_and_preprocess", "Hippocampus", "--plan"],
])
def test_typos_fail_loudly(parser, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_numeric_glued_values_still_work(parser) -> None:
    args = parser.parse_args(PREDICT + ["-f0"])
    assert args.folds == ["0"]
