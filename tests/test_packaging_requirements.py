"""Packaging: a torch range in install_requires with the exact pin kept in README, CI and the
Docker constraints; threadpoolctl declared; extras for nnU-Net models and TensorBoard; Docker
images run as a non-root user."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _requirements(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return {re.split(r"[<>=!~\[]", line, maxsplit=1)[0].lower(): line for line in lines}


def test_torch_is_a_range_and_pinned_elsewhere() -> None:
    requirements = _requirements(_setup()["options"]["install_requires"])
    assert "==" not in requirements["torch"] and ">=" in requirements["torch"]
    readme_pin = re.search(r"pip install (torch==[0-9.]+)", (ROOT / "README.md").read_text()).group(1)
    assert f'TORCH_PIN="{readme_pin}"' in (ROOT / ".ci" / "run").read_text()
    assert _requirements((ROOT / "docker" / "constraints.txt").read_text())["torch"] == readme_pin


def test_direct_imports_are_declared() -> None:
    assert "threadpoolctl" in _requirements(_setup()["options"]["install_requires"])
    extras = _setup()["options.extras_require"]
    assert "dynamic_network_architectures" in _requirements(extras["nnunet"])
    assert "tensorboard" in _requirements(extras["tensorboard"])


def test_docker_images_use_constraints_and_a_non_root_user() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (ROOT / "docker" / name).read_text()
        assert "-c docker/constraints.txt" in text
        users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0")
