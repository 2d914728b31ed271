"""Trainers by name: ``-tr NAME`` picks the domain methods a :class:`Trainer` holds.

A registered trainer is a :class:`TrainerSpec`: a name, a one-line description and the
:class:`~medseg_auto.training.hooks.DomainMethod` classes it combines. Names come from

1. the :func:`register_trainer` decorator on a method class (this package's
   ``training/trainers/`` modules are imported on first lookup), and
2. the entry-point group ``medseg_auto.trainers``, so another installed package can add one::

       [options.entry_points]
       medseg_auto.trainers =
           MyMethod = my_package.my_method:MyMethod

   The entry point's object is either a ``DomainMethod`` subclass (registered under the entry
   point's name unless it registered itself) or a module that registers on import.

``"A+B"`` combines registered trainers: their methods run together, in that order. The name
(with the ``+``) is what the results folder and the checkpoint record.
:func:`register_combined_trainer` gives such a combination its own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod
from medseg_auto.utils.plugins import PluginDiscovery

ENTRY_POINT_GROUP = "medseg_auto.trainers"
BUILTIN_PACKAGE = "medseg_auto.training.trainers"
COMBINE = "+"

MethodClass = TypeVar("MethodClass", bound=type[DomainMethod])


class UnknownTrainerError(MedsegError):
    """``-tr`` names no registered trainer."""


@dataclass(frozen=True)
class TrainerSpec:
    """A trainer: its name, what it changes (one line) and the method classes it combines."""

    name: str
    description: str
    methods: tuple[type[DomainMethod], ...]

    @property
    def min_training_sites(self) -> int:
        """The training sites the trainer needs: the most any of its methods declares."""
        return max((method.min_training_sites for method in self.methods), default=1)

    @property
    def control_arm(self) -> str | None:
        """The arm that isolates the trainer's contribution: its one method's declaration (None
        for combinations, whose parts each have their own)."""
        return self.methods[0].control_arm if len(self.methods) == 1 else None

    def create_methods(self, options: dict | None = None) -> list[DomainMethod]:
        """Instantiate the methods; each takes the option values it declared (others ignored)."""
        options = options or {}
        created = []
        for method_class in self.methods:
            known = method_class.default_options()
            created.append(method_class({key: value for key, value in options.items() if key in known}))
        return created


_REGISTRY: dict[str, TrainerSpec] = {}


def register_trainer(name: str | None = None, description: str | None = None) -> Callable[[MethodClass], MethodClass]:
    """Class decorator: register a ``DomainMethod`` subclass as trainer ``name`` (default: class name).

    ``description`` defaults to the first line of the class docstring.
    """

    def decorate(method_class: MethodClass) -> MethodClass:
        if not (isinstance(method_class, type) and issubclass(method_class, DomainMethod)):
            raise TypeError(f"register_trainer expects a DomainMethod subclass, got {method_class!r}")
        trainer_name = name or method_class.__name__
        if COMBINE in trainer_name:
            raise ValueError(f"trainer name {trainer_name!r} must not contain {COMBINE!r}")
        line = description if description is not None else _first_line(method_class.__doc__)
        existing = _REGISTRY.get(trainer_name)
        if existing is not None and existing.methods != (method_class,):
            raise ValueError(f"trainer name {trainer_name!r} is already registered by {existing.methods[0].__module__}")
        _REGISTRY[trainer_name] = TrainerSpec(trainer_name, line.strip(), (method_class,))
        return method_class

    return decorate


def register_combined_trainer(name: str, methods: tuple[type[DomainMethod], ...], description: str) -> TrainerSpec:
    """Register ``name`` as a trainer running several method classes together, in that order
    (what ``-tr A+B`` does, under one name, e.g. a paper's method on top of its baseline)."""
    if COMBINE in name:
        raise ValueError(f"trainer name {name!r} must not contain {COMBINE!r}")
    if not methods or not all(isinstance(m, type) and issubclass(m, DomainMethod) for m in methods):
        raise TypeError(f"register_combined_trainer expects DomainMethod subclasses, got {methods!r}")
    spec = TrainerSpec(name, description, tuple(methods))
    existing = _REGISTRY.get(name)
    if existing is not None and existing.methods != spec.methods:
        raise ValueError(f"trainer name {name!r} is already registered by {existing.methods[0].__module__}")
    _REGISTRY[name] = spec
    return spec


def available_trainers() -> dict[str, TrainerSpec]:
    """Every registered trainer, sorted by name (built-ins and entry points)."""
    DISCOVERY()
    return dict(sorted(_REGISTRY.items()))


def get_trainer(name: str) -> TrainerSpec:
    """The spec for ``name`` (or ``"A+B"``); unknown names raise an error listing the known ones."""
    known = available_trainers()
    parts = [part.strip() for part in name.split(COMBINE)]
    missing = [part for part in parts if part not in known]
    if missing:  # split() gives at least one part; an empty name is a missing one
        raise UnknownTrainerError(
            f"unknown trainer {name!r}; known trainers: {', '.join(known)}. "
            f"Third-party trainers register through the entry-point group '{ENTRY_POINT_GROUP}'."
        )
    if len(parts) == 1:
        return known[parts[0]]
    methods = tuple(method for part in parts for method in known[part].methods)
    return TrainerSpec(name, " + ".join(known[part].description for part in parts), methods)


def _register_entry_point(name: str, loaded: Any) -> None:
    """A ``DomainMethod`` subclass from an entry point is registered under the entry point's
    name unless it registered itself; a module registered its trainers on import."""
    registered = any(loaded in spec.methods for spec in _REGISTRY.values())
    if isinstance(loaded, type) and issubclass(loaded, DomainMethod) and not registered:
        register_trainer(name)(loaded)


DISCOVERY = PluginDiscovery(BUILTIN_PACKAGE, ENTRY_POINT_GROUP, _register_entry_point)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
