"""Import an nnU-Net v2 raw dataset folder (``dataset.json`` with ``channel_names`` and
``file_ending``, ``imagesTr/CASE_0000<ending>``, ``labelsTr/CASE<ending>``).

Such a folder is already our raw layout, so nothing is converted: the case files are copied
byte for byte and ``dataset.json`` is kept with every key (sites, descriptions, nnU-Net's own
keys). Reading it in place, without a copy, is usually better: ``--raw DIR`` or
``$nnUNet_raw`` (see :mod:`medseg_auto.paths`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.importers.output import clear_case_folders, copy_file_atomic, prepare_dataset_folder
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.parallel import parallel_map

logger = logging.getLogger("medseg_auto.import")
LAYOUT_NAME = "nnU-Net v2 raw dataset (dataset.json with channel_names and file_ending, imagesTr/CASE_0000)"


def is_nnunet_v2_folder(task_dir: Path) -> bool:
    """True for a v2 raw folder: its ``dataset.json`` has ``file_ending`` and name -> value labels."""
    json_path = task_dir / "dataset.json"
    if not json_path.is_file() or not (task_dir / "imagesTr").is_dir():
        return False
    try:
        payload = read_json(json_path)
    except ValueError:
        return False
    labels = payload.get("labels") if isinstance(payload, dict) else None
    return ("file_ending" in payload and isinstance(labels, dict)
            and all(isinstance(value, int) for value in labels.values()))


def import_nnunet_v2(home: DataHome, task_dir: str | Path, name: str, dataset_id: int | None = None,
                     num_processes: int = 1, show_progress: bool = True) -> DatasetSpec:
    """Copy the v2 raw dataset at ``task_dir`` into ``home`` as ``DatasetNNN_name``."""
    source = DatasetSpec.load(task_dir)
    cases = source.training_cases()  # every channel and label present, or a DatasetError naming the file
    folder, _ = prepare_dataset_folder(home, name, dataset_id, append=False)
    logger.info("recognised layout: %s; copying %d case(s) into %s", LAYOUT_NAME, len(cases), folder)
    copies = [(path, folder / "imagesTr" / path.name) for case in cases for path in case.images]
    copies += [(case.label, folder / "labelsTr" / case.label.name) for case in cases if case.label is not None]
    try:
        parallel_map(copy_file_atomic, copies, num_processes, "import", show_progress)
        if len(cases) != source.num_training:
            logger.warning("%s: numTraining says %d but %d case(s) were found; writing %d",
                           source.folder / "dataset.json", source.num_training, len(cases), len(cases))
        payload = dict(source.raw, numTraining=len(cases))
        write_json_atomic(folder / "dataset.json", payload)
        spec = DatasetSpec.load(folder)
    except BaseException:
        (folder / "dataset.json").unlink(missing_ok=True)
        clear_case_folders(folder)
        raise
    if not spec.training_cases():
        raise DatasetError(f"{task_dir}: no training cases")
    return spec
