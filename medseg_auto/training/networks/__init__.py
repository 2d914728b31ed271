"""Network variants selectable with ``--network NAME`` (one file each, registered with
:func:`~medseg_auto.training.network_registry.register_network`; imported on first lookup)."""
