"""The commands added this round refuse bad input with one line naming it (exit 2, no traceback),
and write nothing for a refused call."""

from __future__ import annotations

import pytest

from medseg_auto.cli.main import main


@pytest.mark.parametrize("argv, named", [
    (["export", "{tmp}/no_model", "--format", "onnx"], "no_model"),
    (["export-plans", "Nope", "--nnunet", "--home", "{tmp}/home"], "Nope"),
    (["experiment", "methods", "Nope", "--test-datasets", "X", "--home", "{tmp}/home"], "Nope"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, argv, named):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and named in err and "Traceback" not in err
    assert not (tmp_path / "no_model").exists()
