"""medseg_auto: self-configuring medical image segmentation with domain-adaptation trainers.

The package is laid out by pipeline stage, so the data flow is visible in the file tree:
``dataset`` (raw format, readers, importers, verification) -> ``planning`` (fingerprint,
planner, plans) -> ``preprocessing`` (the case pipeline shared with prediction) ->
``training`` -> ``inference`` -> ``evaluation``. ``cli`` holds one small module per command.
"""

__version__ = "0.1.0"
