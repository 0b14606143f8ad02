"""The plugin's C++ ops (csrc/hat_attention.cpp: IN/CR attention, cache writes, segment tracking).

torch's JIT extension build compiles them (about a minute) into TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions). That happens at install (`scripts/install.sh`, the Dockerfile: `python -m
model_patch.kernels`) and, should the cache be empty, when the engine starts, never during a request.
The build is for the host CPU (-march=native), so its name carries the CPU's feature flags: a cache
built on another CPU (an image built elsewhere) is not loaded but rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

from torch.utils.cpp_extension import load

from hatllm.core.layers import LAYER_CODES

SOURCE = Path(__file__).parent / "csrc" / "hat_attention.cpp"
# Reassociation lets the compiler vectorise the dot products; infinities stay IEEE (no -ffast-math).
# The layer types' integers come from their one definition (`hatllm.core.layers`): the kernel is built with them.
CFLAGS = ["-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
          *(f"-DHAT_LAYER_{layer.value}={code}" for layer, code in LAYER_CODES.items())]


def cpu_features_tag() -> str:
    """A short hash of this CPU's feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = platform.processor() or platform.machine()
    return hashlib.sha1(flags.encode()).hexdigest()[:12]


@functools.cache
def hat_attention_ops():
    return load(name=f"hat_attention_cpu_{cpu_features_tag()}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                verbose=False)


if __name__ == "__main__":
    print(f"built {hat_attention_ops().__file__}")
