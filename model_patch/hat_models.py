"""``Hat<Base>`` model classes: vLLM's own model, with IN/CR layers' attention swapped for HatLLM's.

The class reads the schedule and delimiters from the checkpoint's config.json and refuses to build
(so the engine refuses to start) when they are missing or invalid. Its forward runs eagerly, before the
compiled decoder stack, and computes the step's item segments for the IN/CR layers.
"""

from __future__ import annotations

import functools
import importlib
import re

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

from hatllm.core.checkpoint import HAT_ARCHITECTURE_PREFIX, check_hat_config, hat_architecture
from hatllm.core.layers import LayerType
from model_patch import BASE_MODELS
from model_patch.cpu_attention import HatCPUAttentionImpl
from model_patch.segments import SegmentTracker

LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


class HatModelMixin:
    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        config = vllm_config.model_config.hf_config
        try:
            check_hat_config(config)
        except ValueError as e:
            raise ValueError(f"HatLLM checkpoint {vllm_config.model_config.model}: {e}") from None
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.segment_tracker = SegmentTracker(config.hat_item_open_token_id, config.hat_item_close_token_id)
        self.hat_layers: list[Attention] = []
        for name, module in self.named_modules():
            if not isinstance(module, Attention):
                continue
            layer_type = LayerType(config.hat_layer_types[int(LAYER_INDEX.search(name).group(1))])
            if layer_type is LayerType.OR:
                continue
            if not isinstance(module.impl, CPUAttentionBackendImpl):
                raise NotImplementedError(
                    f"HatLLM IN/CR layers need the CPU attention backend, got {type(module.impl).__name__}; "
                    "the GPU backend is designed in model_patch/README.md but not built yet"
                )
            module.impl = HatCPUAttentionImpl.wrap(module.impl, layer_type, self.segment_tracker)
            self.hat_layers.append(module)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if self.hat_layers:
            self._update_segments(input_ids, positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def _update_segments(self, input_ids: torch.Tensor | None, positions: torch.Tensor) -> None:
        metadata = get_forward_context().attn_metadata
        layer = self.hat_layers[0]
        meta = metadata.get(layer.layer_name) if isinstance(metadata, dict) else None
        if meta is None:  # profiling / dummy run: no real tokens
            return
        if input_ids is None:
            raise NotImplementedError("HatLLM needs token ids to find item boundaries (no prompt embeddings)")
        kv_cache = layer.kv_cache
        self.segment_tracker.update(input_ids, positions, meta, kv_cache.shape[2], kv_cache.shape[0] * kv_cache.shape[2])


@functools.cache
def hat_class(base: str) -> type:
    """`Hat<base>`: the base vLLM model class with the HatLLM layers."""
    base_cls = getattr(importlib.import_module(BASE_MODELS[base]), base)
    return type(hat_architecture(base), (HatModelMixin, base_cls), {"__module__": __name__})


def __getattr__(name: str) -> type:
    # vLLM's registry imports "model_patch.hat_models:Hat<base>" by name; each class is built on first use.
    base = name.removeprefix(HAT_ARCHITECTURE_PREFIX)
    if name.startswith(HAT_ARCHITECTURE_PREFIX) and base in BASE_MODELS:
        return hat_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
