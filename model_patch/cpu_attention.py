"""Attention for HatLLM's IN and CR layers on vLLM's CPU backend.

OR layers keep vLLM's own fused CPU kernel and cache layout untouched. An IN or CR layer gets this
implementation instead (a subclass of vLLM's, swapped in by the model class): it writes its keys and
values into its own KV-cache tensor in a slot-major layout, ``[slot, kv_head, K | V]`` (the tensor's
memory reinterpreted, one row per token), gathers each request's keys by slot, and runs SDPA with the
mask of ``hatllm.masks.layer_mask`` built from the step's item segments. The cache tensor, its size and its blocks are vLLM's; only the layout
inside an IN/CR layer's tensor is ours, so prefix caching, preemption and block reuse work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

from hatllm.masks import LayerType, layer_mask

from .segments import SegmentTracker


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
        head = key.shape[-1]
        valid = slot_mapping >= 0  # the runner pads slot_mapping with -1
        slots = slot_mapping[valid].long()
        rows = self._slot_rows(kv_cache)
        rows[slots, :, :head] = key[: len(valid)][valid].to(kv_cache.dtype)
        rows[slots, :, head:] = value[: len(valid)][valid].to(kv_cache.dtype)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None):
        if attn_metadata is None:  # profiling / warm-up run
            return output
        meta, step = attn_metadata, self.tracker.step
        n = meta.num_actual_tokens
        block_size, head = kv_cache.shape[2], kv_cache.shape[3] // 2
        qsl, seq_lens = meta.query_start_loc.long(), meta.seq_lens.long()
        num_q = qsl[1:] - qsl[:-1]
        num_reqs, max_q, max_len = len(seq_lens), int(num_q.max()), int(seq_lens.max())

        # Keys/values of every request by slot, padded to the longest: [R, kv_heads, max_len, head].
        key_pos = torch.arange(max_len)
        blocks = meta.block_table[:num_reqs].long().gather(1, (key_pos // block_size).expand(num_reqs, max_len))
        kv = self._slot_rows(kv_cache)[blocks * block_size + key_pos % block_size]  # [R, max_len, kv_heads, 2h]
        k, v = kv[..., :head].transpose(1, 2), kv[..., head:].transpose(1, 2)

        # Queries, padded per request: [R, heads, max_q, head].
        offsets = torch.arange(max_q)
        token = qsl[:-1, None] + offsets  # [R, max_q]
        real = offsets < num_q[:, None]
        token = torch.where(real, token, 0)
        q = query[:n][token].transpose(1, 2)
        q_pos = seq_lens[:, None] - num_q[:, None] + offsets  # absolute positions

        mask = layer_mask(self.layer_type, step.starts[token], q_pos, key_pos, step.first_item[token][:, 0])
        mask &= key_pos < seq_lens[:, None, None]
        mask[..., 0] |= ~real  # padded query rows: any key, output discarded (avoids all-masked NaN rows)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], scale=self.scale, enable_gqa=self.num_queries_per_kv > 1
        )
        output[:n][token[real]] = out.transpose(1, 2)[real].to(output.dtype)
        return output
