"""The shipped trainers, one file each; every module here is imported by the registry on first lookup.

A new method: a file with a :class:`~medseg_auto.training.hooks.DomainMethod` subclass decorated
with :func:`~medseg_auto.training.registry.register_trainer`. It states its paper, its formula
and its defaults in its docstring, and overrides only the hooks it needs.
"""
