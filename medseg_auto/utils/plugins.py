"""Finding what registers itself by name: the one discovery step the trainer registry
(``-tr NAME``) and the network registry (``--network NAME``) share.

A registry keeps a ``name -> spec`` table that decorators fill when their module is imported.
:class:`PluginDiscovery` imports every module of the registry's built-in package, and loads
the entry points of its group (other installed packages), once per process, on the first
lookup, so starting the command line imports none of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Callable

from medseg_auto.utils.logging_setup import get_logger

log = get_logger("plugins")


class PluginDiscovery:
    """Imports ``package``'s modules and loads the entry points of ``entry_point_group``, once.

    ``on_entry_point(name, loaded)`` receives each entry point's name and object (a module that
    registered on import, or an object for the registry to register under ``name``). A broken
    entry point is logged and skipped: a third-party plug-in must not break the built-ins.
    """

    def __init__(self, package: str, entry_point_group: str | None = None,
                 on_entry_point: Callable[[str, Any], None] | None = None) -> None:
        self.package = package
        self.entry_point_group = entry_point_group
        self.on_entry_point = on_entry_point
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, prefix=f"{self.package}."):
            importlib.import_module(module.name)
        if self.entry_point_group is None:
            return
        for entry_point in entry_points(group=self.entry_point_group):
            try:
                loaded = entry_point.load()
            except Exception as error:  # a broken plug-in must not break the built-ins
                log.warning("could not load entry point %s (%s) of %s: %r", entry_point.name, entry_point.value,
                            self.entry_point_group, error)
                continue
            if self.on_entry_point is not None:
                self.on_entry_point(entry_point.name, loaded)
