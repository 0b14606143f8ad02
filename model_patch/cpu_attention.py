"""Attention for HatLLM's IN and CR layers on vLLM's CPU backend.

OR layers keep vLLM's own fused CPU kernel and cache layout untouched. An IN or CR layer gets this
implementation instead (a subclass of vLLM's, swapped in by the model class): it writes its keys and
values into its own KV-cache tensor in a plain layout, ``[block, kv_head, offset, K | V]``, gathers each
request's keys through the block table, and runs SDPA with the mask of ``hatllm.masks.layer_mask`` built
from the step's item segments. The cache tensor, its size and its blocks are vLLM's; only the layout
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

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        head = key.shape[-1]
        block_size = kv_cache.shape[2]
        valid = slot_mapping >= 0  # the runner pads slot_mapping with -1
        slots = slot_mapping[valid].long()
        block, offset = slots // block_size, slots % block_size
        kv_cache[block, :, offset, :head] = key[: len(valid)][valid].to(kv_cache.dtype)
        kv_cache[block, :, offset, head:] = value[: len(valid)][valid].to(kv_cache.dtype)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None):
        if attn_metadata is None:  # profiling / warm-up run
            return output
        meta, step = attn_metadata, self.tracker.step
        n = meta.num_actual_tokens
        num_blocks, kv_heads, block_size, two_head = kv_cache.shape
        head = two_head // 2
        qsl, seq_lens = meta.query_start_loc.long(), meta.seq_lens.long()
        num_q = qsl[1:] - qsl[:-1]
        num_reqs, max_q, max_len = len(seq_lens), int(num_q.max()), int(seq_lens.max())
        blocks = (max_len + block_size - 1) // block_size

        # Keys/values of every request, padded to the longest: [R, kv_heads, max_len, head].
        kv = kv_cache[meta.block_table[:num_reqs, :blocks].long()]  # [R, blocks, kv_heads, bs, 2h]
        kv = kv.permute(0, 2, 1, 3, 4).reshape(num_reqs, kv_heads, blocks * block_size, two_head)[:, :, :max_len]
        k, v = kv[..., :head], kv[..., head:]

        # Queries, padded per request: [R, heads, max_q, head].
        offsets = torch.arange(max_q)
        token = qsl[:-1, None] + offsets  # [R, max_q]
        real = offsets < num_q[:, None]
        token = torch.where(real, token, 0)
        q = query[:n][token].transpose(1, 2)
        q_pos = seq_lens[:, None] - num_q[:, None] + offsets  # absolute positions

        mask = layer_mask(self.layer_type, step.starts[token], q_pos, torch.arange(max_len), step.first_item[token][:, 0])
        mask &= torch.arange(max_len) < seq_lens[:, None, None]
        mask[..., 0] |= ~real  # padded query rows: any key, output discarded (avoids all-masked NaN rows)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], scale=self.scale, enable_gqa=self.num_queries_per_kv > 1
        )
        output[:n][token[real]] = out.transpose(1, 2)[real].to(output.dtype)
        return output
