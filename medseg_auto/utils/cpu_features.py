"""Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): then bf16 autocast roughly
halves the time of a convolution network on the CPU; without it, oneDNN emulates bf16 and is
slower than float32, so bf16 must stay off there."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs advertising AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo`` (Linux) and on
    Apple silicon (arm64 macOS, whose cores have BF16 instructions); False where unknown."""
    if platform.system() == "Darwin":
        return platform.machine() == "arm64"
    try:
        return native_bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False


def native_bf16_in_cpuinfo(text: str) -> bool:
    """Whether the first ``flags`` line of a ``/proc/cpuinfo`` text names a native bf16 feature."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False
