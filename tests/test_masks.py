"""Hand-checked HatLLM mask cells (see hatllm/core/masks.py for the rules)."""

import pytest
import torch

from hatllm.core.layers import hat_schedule, parse_schedule
from hatllm.core.masks import first_item_position, item_starts, layer_mask

BOS, OPEN, CLOSE = 1, 3, 4
#            0    1   2   3     4   5   6      7     8   9      10
SEQ = [BOS, 10, 11, OPEN, 20, 21, CLOSE, OPEN, 22, CLOSE, OPEN]
P = 3


def mask(kind, seq=SEQ):
    ids = torch.tensor([seq])
    starts = item_starts(ids, OPEN, CLOSE)
    pos = torch.arange(len(seq))
    return layer_mask(kind, starts, pos, pos, first_item_position(ids, OPEN))[0]


def keys(m, q):
    return set(torch.nonzero(m[q]).flatten().tolist())


def test_item_starts_and_first_item():
    ids = torch.tensor([SEQ])
    assert item_starts(ids, OPEN, CLOSE)[0].tolist() == [1, 2, 3, 3, 3, 3, 3, 7, 7, 7, 10]
    assert first_item_position(ids, OPEN).tolist() == [P]
    assert first_item_position(torch.tensor([[BOS, 10]]), OPEN).tolist() == [2]


def test_or_is_causal():
    m = mask("OR")
    for q in range(len(SEQ)):
        assert keys(m, q) == set(range(q + 1))


@pytest.mark.parametrize("kind", ["IN", "OR", "CR"])
def test_prefix_tokens_are_causal_in_every_layer(kind):
    m = mask(kind)
    for q in range(P):
        assert keys(m, q) == set(range(q + 1))


def test_in_sees_prefix_and_own_item():
    m = mask("IN")
    assert keys(m, 3) == {0, 1, 2, 3}  # open delimiter of item 1
    assert keys(m, 5) == {0, 1, 2, 3, 4, 5}
    assert keys(m, 6) == {0, 1, 2, 3, 4, 5, 6}  # close delimiter belongs to its item
    assert keys(m, 8) == {0, 1, 2, 7, 8}  # item 2 does not see item 1
    assert keys(m, 10) == {0, 1, 2, 10}  # open of the generated item


def test_cr_sees_other_items_not_own_except_self():
    m = mask("CR")
    assert keys(m, 3) == {0, 1, 2, 3}
    assert keys(m, 5) == {0, 1, 2, 5}
    assert keys(m, 6) == {0, 1, 2, 6}
    assert keys(m, 8) == {0, 1, 2, 3, 4, 5, 6, 8}
    assert keys(m, 9) == {0, 1, 2, 3, 4, 5, 6, 9}
    assert keys(m, 10) == set(range(11))


@pytest.mark.parametrize("kind", ["IN", "OR", "CR"])
def test_rows_never_empty_and_diagonal_kept(kind):
    m = mask(kind, SEQ + [CLOSE, 99])  # a stray close and a stray token after the items
    assert bool(m.diagonal().all())
    assert not bool(torch.triu(m, diagonal=1).any())


def test_stray_tokens_after_items_see_prefix_and_self():
    seq = SEQ[:7] + [99]  # a non-item token after item 1
    assert item_starts(torch.tensor([seq]), OPEN, CLOSE)[0, 7].item() == 8
    assert keys(mask("IN", seq), 7) == {0, 1, 2, 7}
    assert keys(mask("CR", seq), 7) == set(range(8))


def test_masks_are_prefix_consistent():
    full = {k: mask(k) for k in ("IN", "OR", "CR")}
    for cut in range(1, len(SEQ)):
        for kind, m in full.items():
            assert torch.equal(mask(kind, SEQ[:cut]), m[:cut, :cut])


def test_schedules():
    assert hat_schedule(6) == ["IN", "IN", "OR", "OR", "CR", "CR"]
    assert parse_schedule("causal", 3) == ["OR"] * 3
    assert parse_schedule("hat:1,2", 4) == ["IN", "OR", "CR", "CR"]
    assert parse_schedule("IN,CR", 2) == ["IN", "CR"]
    with pytest.raises(ValueError, match="entries"):
        parse_schedule("IN,CR", 3)
    with pytest.raises(ValueError, match="unknown"):
        parse_schedule("IN,XX", 2)
    with pytest.raises(ValueError):
        hat_schedule(2, 2, 1)
