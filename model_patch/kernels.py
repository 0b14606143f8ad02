"""The plugin's C++ ops (csrc/hat_attention.cpp: IN/CR attention, cache writes, segment tracking),
compiled on first use and cached.

torch's JIT extension build compiles it once per machine (about a minute) into TORCH_EXTENSIONS_DIR
(default ~/.cache/torch_extensions); later engine starts load the cached library.
"""

from __future__ import annotations

import functools
from pathlib import Path

from torch.utils.cpp_extension import load

from hatllm.core.layers import LAYER_CODES

SOURCE = Path(__file__).parent / "csrc" / "hat_attention.cpp"
# Reassociation lets the compiler vectorise the dot products; infinities stay IEEE (no -ffast-math).
# The layer types' integers come from their one definition (`hatllm.core.layers`): the kernel is built with them.
CFLAGS = ["-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
          *(f"-DHAT_LAYER_{layer.value}={code}" for layer, code in LAYER_CODES.items())]


@functools.cache
def hat_attention_ops():
    return load(name="hat_attention_cpu", sources=[str(SOURCE)], extra_cflags=CFLAGS, verbose=False)
