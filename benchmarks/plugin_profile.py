"""Where the plugin's time goes: per-step segment tracking and per-layer IN/CR attention, vs vLLM's
own fused CPU kernel for the same shapes (the cost an OR layer pays).

    python benchmarks/plugin_profile.py

Synthetic decode and prefill steps shaped like the default model (4 heads of 64, 32-token blocks),
single thread (vLLM's CPU worker binds one core by default).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from hatllm.core.layers import LAYER_CODES
from model_patch.kernels import hat_attention_ops
from model_patch.segments import SegmentTracker

HEADS, HEAD, BLOCK, OPEN, CLOSE = 4, 64, 32, 3, 4


def timed(fn, repeat: int = 50) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def step(requests: int, new_tokens: int, context: int):
    """Metadata of a step where each request adds new_tokens after context cached tokens."""
    seq_lens = torch.full((requests,), context + new_tokens, dtype=torch.int32)
    qsl = torch.arange(0, requests * new_tokens + 1, new_tokens, dtype=torch.int32)
    blocks = (context + new_tokens + BLOCK - 1) // BLOCK
    table = torch.arange(requests * blocks, dtype=torch.int32).reshape(requests, blocks)
    positions = (context + torch.arange(new_tokens)).repeat(requests)
    req = torch.repeat_interleave(torch.arange(requests), new_tokens)
    slots = table.long()[req, positions // BLOCK] * BLOCK + positions % BLOCK
    ids = torch.randint(5, 4000, (requests * new_tokens,))
    ids[positions % 10 == 0] = OPEN
    ids[positions % 10 == 9] = CLOSE
    meta = SimpleNamespace(num_actual_tokens=len(ids), query_start_loc=qsl, seq_lens=seq_lens, block_table=table,
                           slot_mapping=slots)
    return meta, ids, positions, requests * blocks * BLOCK


def vllm_kernel(meta, rows_tensor, query, out):
    from vllm import _custom_ops as ops

    sched = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=len(meta.seq_lens), num_heads=HEADS, num_kv_heads=HEADS, head_dim=HEAD, seq_lens=meta.seq_lens,
        dtype=torch.float32, query_start_loc=meta.query_start_loc, causal=True, sliding_window_size=-1, isa="vec",
        enable_kv_split=False)
    kv = rows_tensor.view(-1, HEADS, BLOCK * 2, HEAD)
    key_cache, value_cache = kv.chunk(2, dim=2)
    return lambda: ops.cpu_attention_with_kv_cache(
        query=query, key_cache=key_cache, value_cache=value_cache, output=out, query_start_loc=meta.query_start_loc,
        seq_lens=meta.seq_lens, scale=HEAD**-0.5, causal=True, alibi_slopes=None, sliding_window=-1,
        block_table=meta.block_table, softcap=0, scheduler_metadata=sched, s_aux=None)


def main() -> None:
    torch.set_num_threads(1)
    ops = hat_attention_ops()
    print("| step | segment tracking ms | IN layer ms | CR layer ms | vLLM fused (OR) layer ms |")
    print("|---|---|---|---|---|")
    for name, (requests, new, context) in {
        "decode, 1 request, 250 context": (1, 1, 250),
        "decode, 16 requests, 250 context": (16, 1, 250),
        "prefill, 1 request, 250 tokens": (1, 250, 0),
        "prefill, 16 requests, 250 tokens": (16, 250, 0),
        "top-K round, 10 beams x 10 tokens, 270 cached": (10, 10, 270),
    }.items():
        meta, ids, positions, num_slots = step(requests, new, context)
        tracker = SegmentTracker(OPEN, CLOSE)
        track_ms = timed(lambda: tracker.update(ids, positions, meta, BLOCK, num_slots))
        seg = tracker.step
        rows = torch.randn(num_slots // BLOCK, HEADS, BLOCK, 2 * HEAD)
        query = torch.randn(len(ids), HEADS, HEAD)
        out = torch.empty_like(query)
        flat = rows.view(num_slots, HEADS, 2 * HEAD)

        def layer(kind):
            return lambda: ops.hat_attention(query, flat, out, meta.query_start_loc, meta.seq_lens, seg.positions,
                                             seg.starts, seg.first_item, meta.block_table, BLOCK, HEAD**-0.5, LAYER_CODES[kind])

        try:
            fused_ms = f"{timed(vllm_kernel(meta, rows, query, out)):.3f}"
        except Exception as e:  # the fused kernel's signature is vLLM-version specific
            fused_ms = f"n/a ({type(e).__name__})"
        print(f"| {name} | {track_ms:.3f} | {timed(layer('IN')):.3f} | {timed(layer('CR')):.3f} | {fused_ms} |")


if __name__ == "__main__":
    main()
