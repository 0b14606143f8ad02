"""The C++ IN/CR kernel computes exactly hatllm.masks.layer_mask attention over paged cache rows."""

import pytest
import torch
import torch.nn.functional as F

from hatllm.masks import layer_mask
from model_patch.kernels import LAYER_CODES, hat_attention_ops


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
@pytest.mark.parametrize("head", [64, 80])  # 80: value chunks of 64 and of 16
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
