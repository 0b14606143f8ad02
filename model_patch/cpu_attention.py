"""Attention for HatLLM's IN and CR layers on vLLM's CPU backend.

OR layers keep vLLM's own fused CPU kernel and cache layout untouched. An IN or CR layer gets this
implementation instead (a subclass of vLLM's, swapped in by the model class): it writes its keys and
values into its own KV-cache tensor in a slot-major layout, ``[slot, kv_head, K | V]`` (the tensor's
memory reinterpreted, one row per token), and computes attention with a small C++ kernel
(``csrc/hat_attention.cpp``) that walks, per query, the at most two contiguous key ranges its mask
allows (``hatllm.core.masks.layer_mask`` written as intervals), reading keys through the block table. The cache tensor, its size and its blocks are vLLM's; only the layout
inside an IN/CR layer's tensor is ours, so prefix caching, preemption and block reuse work unchanged.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backend import MultipleOf
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from hatllm.core.layers import LayerType
from model_patch.kernels import hat_attention_ops
from model_patch.segments import SegmentTracker


class HatCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's CPU attention backend, also accepting 16-token KV blocks.

    vLLM's CPU kernels run 16-token blocks (its ISA choice picks ``vec16`` for them; tested against the
    reference in tests/test_engine.py) but the backend declares multiples of 32 only. Top-K decoding sends
    every beam as a request that recomputes its last partial block: 16-token blocks halve that work.
    """

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]


class HatCPUAttentionImpl(CPUAttentionBackendImpl):
    layer_type: LayerType
    tracker: SegmentTracker

    @classmethod
    def wrap(cls, impl: CPUAttentionBackendImpl, layer_type: LayerType, tracker: SegmentTracker) -> "HatCPUAttentionImpl":
        """The same impl (all its settings), with the HatLLM mask for this layer."""
        hat = cls.__new__(cls)
        hat.__dict__.update(impl.__dict__)
        hat.layer_type, hat.tracker = LayerType(layer_type), tracker
        return hat

    @staticmethod
    def _slot_rows(kv_cache: torch.Tensor) -> torch.Tensor:
        """The layer's cache as one row per slot: [num_blocks * block_size, kv_heads, 2 * head]."""
        num_blocks, kv_heads, block_size, two_head = kv_cache.shape
        return kv_cache.view(num_blocks * block_size, kv_heads, two_head)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        # The runner pads slot_mapping with -1 (skipped by the op).
        hat_attention_ops().hat_cache_update(key.to(kv_cache.dtype), value.to(kv_cache.dtype),
                                             self._slot_rows(kv_cache), slot_mapping.long())

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None):
        if attn_metadata is None:  # profiling / warm-up run
            return output
        meta, step = attn_metadata, self.tracker.step
        n = meta.num_actual_tokens
        hat_attention_ops().hat_attention(
            query[:n], self._slot_rows(kv_cache), output[:n], meta.query_start_loc.int(), meta.seq_lens.int(),
            step.positions, step.starts, step.first_item, meta.block_table.int(), kv_cache.shape[2], self.scale,
            self.layer_type.code,
        )
        return output
