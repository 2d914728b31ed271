"""``dataset.json`` and the case listing of a raw dataset (nnU-Net v2's format).

Layout: ``imagesTr/CASE_XXXX.ext`` (one file per channel, XXXX = 4-digit channel index),
``labelsTr/CASE.ext``, optional ``imagesTs/``. medseg_auto adds one optional key,
``"sites": {"CASE": "SITE"}``, naming the hospital or scanner of each case, and one optional
key ``"groups": {"CASE": "PATIENT"}`` naming cases of one patient (experiment splits keep a
group on one side); nnU-Net ignores both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import DatasetError
from medseg_auto.paths import check_safe_name
from medseg_auto.utils.atomic import read_json, write_json_atomic

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass
class CaseFiles:
    """The files of one training case."""

    case_id: str
    images: list[Path]
    label: Path | None
    site: str | None = None


@dataclass
class DatasetSpec:
    """The parsed ``dataset.json`` of one raw dataset folder."""

    folder: Path
    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    sites: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        """Sorted label values, background (0) included."""
        return sorted(set(self.labels.values()))

    @property
    def foreground_labels(self) -> list[int]:
        return [value for value in self.label_values if value != 0]

    @property
    def num_classes(self) -> int:
        """Number of network outputs: background plus every foreground label."""
        return len(self.label_values)

    def channel_name(self, index: int) -> str:
        return self.channel_names[str(index)]

    def site_of(self, case_id: str) -> str | None:
        return self.sites.get(case_id)

    @classmethod
    def load(cls, folder: str | Path) -> "DatasetSpec":
        """Parse and check ``folder/dataset.json``; errors name the file and the key."""
        folder = Path(folder)
        json_path = folder / "dataset.json"
        if not json_path.is_file():
            raise DatasetError(f"{json_path}: not found (is {folder} a raw dataset folder?)")
        try:
            payload = read_json(json_path)
        except ValueError as error:
            raise DatasetError(f"{json_path}: not valid JSON ({error})") from error
        if not isinstance(payload, dict):
            raise DatasetError(f"{json_path}: expected a JSON object at the top level")
        if "channel_names" not in payload and "modality" in payload:
            payload["channel_names"] = payload["modality"]  # nnU-Net v1 name, still accepted
        missing = [key for key in REQUIRED_KEYS if key not in payload]
        if missing:
            raise DatasetError(f"{json_path}: missing required key(s) {', '.join(missing)}")
        labels = payload["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise DatasetError(
                f"{json_path}: 'labels' must map names to integer values, e.g. {{\"background\": 0, \"tumour\": 1}} "
                "(region lists are not supported yet)"
            )
        values = sorted(labels.values())
        if 0 not in values:
            raise DatasetError(f"{json_path}: 'labels' must contain the background value 0")
        if values != list(range(len(values))):
            raise DatasetError(f"{json_path}: label values must be consecutive from 0, found {values}")
        channel_names = {str(k): str(v) for k, v in payload["channel_names"].items()}
        if sorted(int(k) for k in channel_names) != list(range(len(channel_names))) or not channel_names:
            raise DatasetError(f"{json_path}: 'channel_names' keys must be 0..N-1, found {list(channel_names)}")
        sites = payload.get("sites", {}) or {}
        if not isinstance(sites, dict):
            raise DatasetError(f"{json_path}: 'sites' must map case names to site names")
        groups = payload.get("groups", {}) or {}
        if not isinstance(groups, dict):
            raise DatasetError(f"{json_path}: 'groups' must map case names to patient (group) names")
        return cls(
            folder=folder,
            channel_names=channel_names,
            labels={str(k): int(v) for k, v in labels.items()},
            num_training=int(payload["numTraining"]),
            file_ending=str(payload["file_ending"]),
            sites={str(k): str(v) for k, v in sites.items()},
            raw=payload,
            groups={str(k): str(v) for k, v in groups.items()},
        )

    def save(self) -> None:
        """Write ``dataset.json`` back (atomically), keeping keys we do not interpret."""
        payload = dict(self.raw)
        payload.update(
            channel_names=self.channel_names,
            labels=self.labels,
            numTraining=self.num_training,
            file_ending=self.file_ending,
        )
        if self.sites:
            payload["sites"] = self.sites
        write_json_atomic(self.folder / "dataset.json", payload)

    def training_cases(self, require_labels: bool = True) -> list[CaseFiles]:
        """List the training cases, sorted by id, with their channel and label files.

        Channel files are matched as ``CASE_XXXX<file_ending>``; a case missing a channel or
        (when ``require_labels``) its label raises :class:`DatasetError` naming the file.
        """
        images_folder = self.folder / "imagesTr"
        labels_folder = self.folder / "labelsTr"
        if not images_folder.is_dir():
            raise DatasetError(f"{images_folder}: folder not found")
        cases = find_cases_in_folder(images_folder, self.file_ending, self.num_channels)
        result: list[CaseFiles] = []
        for case_id, images in cases.items():
            label = labels_folder / f"{case_id}{self.file_ending}"
            if not label.is_file():
                if require_labels:
                    raise DatasetError(f"{label}: label file missing for case '{case_id}' (expected next to imagesTr)")
                label = None  # type: ignore[assignment]
            result.append(CaseFiles(case_id, images, label, self.sites.get(case_id)))
        return result


def find_cases_in_folder(folder: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Group ``CASE_XXXX<ending>`` files of ``folder`` by case.

    Usually there is one file per channel; an RGB natural image is one file holding three
    channels (as in nnU-Net), so a case may have fewer files than ``num_channels``. Every case
    must have files 0..k-1 with the same k; the readers check the channel total.
    """
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    grouped: dict[str, dict[int, Path]] = {}
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if not match or not entry.is_file():
            continue
        case_id = check_safe_name(match.group(1))
        grouped.setdefault(case_id, {})[int(match.group(2))] = entry
    if not grouped:
        return {}
    files_per_case = max(len(channels) for channels in grouped.values())
    if files_per_case > num_channels:
        raise DatasetError(
            f"{folder}: found {files_per_case} channel files per case but dataset.json declares "
            f"{num_channels} channel(s) in 'channel_names'"
        )
    cases: dict[str, list[Path]] = {}
    for case_id in sorted(grouped):
        channels = grouped[case_id]
        missing = [index for index in range(files_per_case) if index not in channels]
        if missing:
            names = ", ".join(f"{case_id}_{index:04d}{file_ending}" for index in missing)
            raise DatasetError(f"{folder}: case '{case_id}' lacks channel file(s) {names}")
        extra = sorted(set(channels) - set(range(files_per_case)))
        if extra:
            raise DatasetError(f"{folder}: case '{case_id}' has unexpected channel file index(es) {extra}")
        cases[case_id] = [channels[index] for index in range(files_per_case)]
    return cases


def write_dataset_json(
    folder: Path,
    channel_names: dict[str, str],
    labels: dict[str, int],
    num_training: int,
    file_ending: str,
    sites: dict[str, str] | None = None,
    extra: dict | None = None,
) -> DatasetSpec:
    """Create ``folder/dataset.json`` and return the spec."""
    payload = dict(extra or {})
    payload.update(channel_names=channel_names, labels=labels, numTraining=num_training, file_ending=file_ending)
    if sites:
        payload["sites"] = sites
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "dataset.json", payload)
    return DatasetSpec.load(folder)
