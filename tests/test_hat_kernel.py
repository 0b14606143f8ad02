"""The C++ IN/CR kernel computes exactly hatllm.core.masks.layer_mask attention over paged cache rows."""

import pytest
import torch
import torch.nn.functional as F

from hatllm.core.layers import LAYER_CODES
from hatllm.core.masks import layer_mask
from model_patch.kernels import hat_attention_ops


def reference(q, rows, block_table, request, query_pos, starts, first, kind, block_size, seq_lens):
    heads, head = q.shape[1], q.shape[2]
    out = torch.empty_like(q, dtype=torch.float32)
    for t in range(q.shape[0]):
        r = int(request[t])
        keys = torch.arange(int(seq_lens[r]))
        slots = block_table[r].long()[keys // block_size] * block_size + keys % block_size
        k = rows[slots, :, :head].float().repeat_interleave(heads // rows.shape[1], 1).transpose(0, 1)
        v = rows[slots, :, head:].float().repeat_interleave(heads // rows.shape[1], 1).transpose(0, 1)
        mask = layer_mask(kind, starts[t : t + 1], query_pos[t : t + 1], keys, first[t : t + 1])
        out[t] = F.scaled_dot_product_attention(q[t].float()[:, None], k, v, attn_mask=mask, scale=head**-0.5)[:, 0]
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kind", ["IN", "CR"])
@pytest.mark.parametrize("head", [64, 80])  # 80: value chunks of four vector registers and of one
def test_kernel_equals_masked_sdpa(kind, dtype, tol, head):
    torch.manual_seed(0)
    heads, kv_heads, block_size, blocks = 4, 2, 32, 40  # grouped-query attention
    # Prefill, decode, chunk, prefix-only prefill, and a chunk over 200 cached keys: key ranges from 1 key (rows
    # read one by one) to several 64-key tiles of transposed keys, with a partial last tile.
    seq_lens, num_q = torch.tensor([70, 33, 100, 12, 200]), torch.tensor([70, 1, 5, 12, 3])
    request = torch.repeat_interleave(torch.arange(5), num_q)
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), num_q.cumsum(0)])
    query_pos = seq_lens[request] - num_q[request] + torch.arange(len(request)) - bounds[request]
    first = torch.where(request == 3, 1 << 31, 10)  # request 3 has no item yet: a causal prefix
    starts = torch.where((query_pos < 10) | (request == 3), query_pos + 1, (query_pos // 7) * 7).clamp(min=0)
    starts = torch.where((query_pos >= 10) & (request != 3), starts.clamp(min=10), starts)
    rows = torch.randn(blocks * block_size, kv_heads, 2 * head).to(dtype)
    block_table = torch.randperm(blocks)[:35].reshape(5, 7).int()
    q = torch.randn(len(request), heads, head).to(dtype)
    out = torch.empty_like(q)
    hat_attention_ops().hat_attention(q, rows, out, bounds.int(), seq_lens.int(), query_pos, starts, first,
                                      block_table, block_size, head**-0.5, LAYER_CODES[kind])
    expected = reference(q, rows, block_table, request, query_pos, starts, first, kind, block_size, seq_lens)
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_update_writes_rows_of_real_slots(dtype):
    torch.manual_seed(0)
    kv_heads, head, slots = 2, 64, 96
    key, value = torch.randn(7, kv_heads, head).to(dtype), torch.randn(7, kv_heads, head).to(dtype)
    slot_mapping = torch.tensor([5, 40, 41, 95, -1, -1])  # padded; key has one more row than the mapping
    rows = torch.zeros(slots, kv_heads, 2 * head, dtype=dtype)
    hat_attention_ops().hat_cache_update(key, value, rows, slot_mapping)
    expected = torch.zeros_like(rows)
    expected[slot_mapping[:4], :, :head], expected[slot_mapping[:4], :, head:] = key[:4], value[:4]
    assert torch.equal(rows, expected)


def test_segment_tracker_equals_reference_item_starts():
    # Requests fed to the tracker (C++ hat_segments) in chunks over several steps, as vLLM schedules them
    # (prefill chunks, decodes, stray closes, items open across steps), against hatllm.core.masks.item_starts on
    # each whole sequence; P is the first item position seen up to the end of the step.
    from types import SimpleNamespace

    from hatllm.core.masks import item_starts
    from model_patch.segments import NO_FIRST_ITEM, SegmentTracker

    open_id, close_id, block_size, blocks_per_req = 3, 4, 16, 8
    gen = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(5):
        ids = torch.randint(5, 50, (100,), generator=gen)
        marks = torch.rand(100, generator=gen)
        ids[marks < 0.12] = open_id
        ids[(marks >= 0.12) & (marks < 0.22)] = close_id
        seqs.append(ids)
    seqs[0][:30] = 7  # a long prefix with no item
    table = torch.arange(5 * blocks_per_req, dtype=torch.int32).flip(0).reshape(5, blocks_per_req)  # scattered blocks
    tracker, done = SegmentTracker(open_id, close_id), [0] * 5
    chunks = [iter(sizes) for sizes in ([37, 1, 1, 20, 41], [1] * 100, [50, 50], [3, 97], [100])]
    while any(d < 100 for d in done):
        ids, pos, slots, bounds, expected_starts, expected_first = [], [], [], [0], [], []
        for r in range(5):
            if done[r] >= 100:
                bounds.append(bounds[-1])
                continue
            size = next(chunks[r])
            a, b = done[r], done[r] + size
            p = torch.arange(a, b)
            ids.append(seqs[r][a:b]), pos.append(p), bounds.append(bounds[-1] + size)
            slots.append(table[r].long()[p // block_size] * block_size + p % block_size)
            expected_starts.append(item_starts(seqs[r], open_id, close_id)[a:b])
            opens = (seqs[r][:b] == open_id).nonzero()
            expected_first.append(torch.full((size,), int(opens[0]) if len(opens) else NO_FIRST_ITEM))
            done[r] = b
        meta = SimpleNamespace(num_actual_tokens=int(bounds[-1]), slot_mapping=torch.cat(slots),
                               query_start_loc=torch.tensor(bounds, dtype=torch.int32), block_table=table)
        step = tracker.update(torch.cat(ids), torch.cat(pos), meta, block_size, table.numel() * block_size)
        assert step.starts.tolist() == torch.cat(expected_starts).tolist()
        assert step.first_item.tolist() == torch.cat(expected_first).tolist()
