"""Importers: turn data as it is found in the wild into a raw dataset (nnU-Net v2 layout).

- :func:`import_msd`: Medical Segmentation Decathlon task folders, and plain ``images/`` +
  ``labels/`` folders of 3D volumes.
- :func:`import_folder`: folders of 2D natural images (PNG, JPEG, ...) with their masks.

Both write every file atomically and ``dataset.json`` last, so a dataset folder with a
``dataset.json`` is always complete.
"""

from medseg_auto.dataset.importers.folder import import_folder
from medseg_auto.dataset.importers.msd import import_msd

__all__ = ["import_folder", "import_msd"]
