"""Finding the cases of an input folder: raw-dataset naming (``CASE_0000.ext``, one file per
channel) or plain single files (``anything.ext``, one case each, one channel)."""

from __future__ import annotations

import re
from pathlib import Path

from medseg_auto.dataset.image_io import file_ending_of, is_supported
from medseg_auto.errors import DatasetError
from medseg_auto.paths import check_safe_name

_CHANNEL_SUFFIX = re.compile(r"^(.+)_(\d{4})$")


def find_input_cases(input_path: Path, num_channels: int) -> dict[str, list[Path]]:
    """``{case_id: [channel files]}`` for a folder (or a single file).

    Files named ``CASE_XXXX.ext`` are grouped by case and must provide channels 0..N-1 (an
    RGB file may provide three at once); other supported files are single-channel cases named
    after the file.
    """
    if input_path.is_file():
        files = [input_path]
    elif input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and is_supported(p))
    else:
        raise DatasetError(f"{input_path}: input not found")
    grouped: dict[str, dict[int, Path]] = {}
    for path in files:
        stem = path.name[: -len(file_ending_of(path))]
        match = _CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match.group(1), int(match.group(2))) if match else (stem, 0)
        grouped.setdefault(check_safe_name(case_id.replace(" ", "_")), {})[channel] = path
    if not grouped:
        raise DatasetError(f"{input_path}: no image files found (supported endings: .nii.gz, .nii, .nrrd, .mha, .png, ...)")
    cases: dict[str, list[Path]] = {}
    for case_id, channels in sorted(grouped.items()):
        indices = sorted(channels)
        if indices != list(range(len(indices))) or len(indices) > num_channels:
            raise DatasetError(
                f"{input_path}: case '{case_id}' has channel files {indices}; the model expects "
                f"{num_channels} channel(s) named {case_id}_0000 .. {case_id}_{num_channels - 1:04d}"
            )
        cases[case_id] = [channels[index] for index in indices]
    return cases

