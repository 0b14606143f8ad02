"""The reference forward applies exactly the per-layer masks."""

import copy

import pytest
import torch

from hatllm.reference.modeling import forward, logits
from tests.helpers import tiny_model

A, B, C = "Heat (1995)", "Casino (1995)", "Sabrina (1995)"


def hidden(model, ids):
    with torch.no_grad():
        return forward(model, torch.tensor([ids])).hidden[0]


def same_length_titles(builder):
    by_len = {}
    for t in ["Heat (1995)", "Casino (1995)", "Sabrina (1995)", "Jumanji (1995)", "Toy Story (1995)"]:
        by_len.setdefault(len(builder.title_tokens(t)), []).append(t)
    return next(ts for ts in by_len.values() if len(ts) >= 2)


def test_in_layers_isolate_items(tokenizer, builder):
    model = tiny_model(tokenizer, builder, "IN,IN,IN")
    x, y = same_length_titles(builder)[:2]
    h1, h2 = hidden(model, builder.prompt([x, C])), hidden(model, builder.prompt([y, C]))
    start = len(builder.prefix()) + len(builder.item_tokens(x))
    # Item 2 and the open delimiter after it see only the prefix and themselves, not item 1.
    torch.testing.assert_close(h1[start:], h2[start:])
    assert not torch.allclose(h1[start - 2], h2[start - 2])


def test_cr_layers_hide_own_item(tokenizer, builder):
    model = tiny_model(tokenizer, builder, "CR,CR,CR")
    ids = builder.prompt([A, B])
    start = len(builder.prefix()) + len(builder.item_tokens(A))  # item B's open delimiter
    changed = list(ids)
    changed[start + 1] = builder.title_tokens(C)[0]  # B's first title token
    h1, h2 = hidden(model, ids), hidden(model, changed)
    end = start + len(builder.item_tokens(B))  # B's close delimiter is at end - 1
    torch.testing.assert_close(h1[start + 2 : end], h2[start + 2 : end])  # later tokens of B cannot see it
    assert not torch.allclose(h1[end], h2[end])  # the next item can


def test_causal_schedule_equals_stock_sdpa(tokenizer, builder):
    model = tiny_model(tokenizer, builder, "causal")
    stock = copy.deepcopy(model)
    stock.config._attn_implementation = "sdpa"
    stock.set_attn_implementation("sdpa")
    ids = torch.tensor([builder.prompt([A, B, C])])
    with torch.no_grad():
        ref = stock(ids).logits
        ours = logits(model, forward(model, ids).hidden)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_hat_differs_from_causal_with_same_weights(tokenizer, builder):
    hat, causal = tiny_model(tokenizer, builder, "IN,OR,CR"), tiny_model(tokenizer, builder, "causal")
    ids = builder.prompt([A, B, C])
    assert not torch.allclose(hidden(hat, ids), hidden(causal, ids), atol=1e-3)


@pytest.mark.parametrize("split_at", [3, 9, -4, -1])
def test_cached_forward_equals_full_forward(hat_model, builder, split_at):
    from transformers import DynamicCache

    ids = torch.tensor([builder.prompt([A, B, C]) + list(builder.title_tokens(A))])
    with torch.no_grad():
        full = forward(hat_model, ids).hidden
        cache = DynamicCache(config=hat_model.config)
        head = forward(hat_model, ids[:, :split_at], cache=cache).hidden
        tail = forward(hat_model, ids, cache=cache).hidden
    torch.testing.assert_close(torch.cat([head, tail], dim=1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens(hat_model, builder, tokenizer):
    short, long_ = builder.prompt([A]), builder.prompt([A, B, C])
    batch = torch.full((2, len(long_)), tokenizer.pad_token_id)
    batch[0, : len(short)] = torch.tensor(short)
    batch[1] = torch.tensor(long_)
    with torch.no_grad():
        padded = forward(hat_model, batch).hidden[0, : len(short)]
    torch.testing.assert_close(padded, hidden(hat_model, short), atol=1e-5, rtol=1e-5)
