"""Trainer lookup by name: built-ins, the decorator, entry points, combinations, errors."""

from __future__ import annotations

import pytest

from medseg_auto.cli.main import main
from medseg_auto.training import registry
from medseg_auto.training.hooks import DomainMethod, TrainingSettings
from medseg_auto.training.registry import UnknownTrainerError, available_trainers, get_trainer, register_trainer
from medseg_auto.utils import plugins

SHIPPED = ("Base", "FewEpochs", "NoDeepSupervision", "NoMirroring")


def test_shipped_trainers_are_registered_with_descriptions():
    trainers = available_trainers()
    for name in SHIPPED:
        assert name in trainers and trainers[name].description


def test_unknown_trainer_error_lists_known_ones():
    with pytest.raises(UnknownTrainerError) as error:
        get_trainer("NoSuchTrainer")
    for name in SHIPPED:
        assert name in str(error.value)


def test_unknown_trainer_on_the_command_line_exits_with_the_list(capsys, tmp_path):
    code = main(["train", "Toy", "3d_fullres", "0", "-tr", "Nope", "--home", str(tmp_path)])
    assert code == 2
    assert "NoMirroring" in capsys.readouterr().err


def test_trainers_command_lists_one_line_each(capsys):
    assert main(["trainers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in lines} >= set(SHIPPED)


def test_combined_trainer_chains_configure_hooks():
    spec = get_trainer("NoMirroring+NoDeepSupervision")
    settings = TrainingSettings()
    for method in spec.create_methods():
        settings = method.configure(settings)
    assert settings.mirror_axes is None and settings.deep_supervision is False


def test_entry_point_trainers_are_discovered(monkeypatch):
    class FromPlugin(DomainMethod):
        """A third-party method."""

    class FakeEntryPoint:
        name, value = "PluginMethod", "plugin:FromPlugin"

        def load(self):
            return FromPlugin

    monkeypatch.setattr(registry.DISCOVERY, "done", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [FakeEntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    spec = get_trainer("PluginMethod")
    assert spec.methods == (FromPlugin,) and spec.description == "A third-party method."


def test_decorator_refuses_a_name_taken_by_another_class(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    available_trainers()
    with pytest.raises(ValueError, match="already registered"):
        @register_trainer("Base")
        class Impostor(DomainMethod):
            """Not the base."""


@pytest.mark.parametrize("name", ["", "Base+", "+Base"])
def test_an_empty_part_of_a_trainer_name_is_unknown(name):
    with pytest.raises(UnknownTrainerError, match="unknown trainer"):
        get_trainer(name)
