"""HatLLM's hierarchical attention masks: the one definition used by training, evaluation and serving.

Segments. Scanning a token sequence left to right, an *item* runs from an item-open token through the
next item-close token, both delimiters included. Every other token (BOS, instruction, anything before
the first item) is outside items. A prompt never puts non-item tokens after its first item; if one does
appear there (a stray token), the rules below still give it a non-empty, causal row.

One integer per token, ``item_start[q]``, describes every mask:
  - for an item token, the position of its item's open delimiter;
  - for a token outside items, ``q + 1`` (its "item" starts after it, so nothing of it is masked).
Plus one integer per sequence, ``first_item`` (P): the position of the first item-open token
(the sequence length if there is none).

Rules for query q and key k, all causal (k <= q), and the diagonal is always kept (k == q):
  OR  (plain causal):  every k <= q.
  IN  (intra-item):    k < P  or  item_start[q] <= k        -> the prefix before the first item plus the
                                                              earlier tokens of q's own item.
  CR  (cross-item):    k < item_start[q]  or  k == q        -> everything before q's item, and itself.
Tokens outside items before P get causal rows under all three (k <= q < P, and item_start[q] = q + 1).

Because ``item_start`` of a token depends only on earlier tokens, all masks are prefix-consistent: a
token's row does not change when tokens are appended. That is what lets one forward over a whole
sequence train every item, and lets an engine cache keys and values as usual.
"""

from __future__ import annotations

import torch

from hatllm.core.layers import LayerType

NO_OPEN_ITEM = -1  # carry value: no item is open before the first token of a chunk


def item_starts(
    token_ids: torch.Tensor,
    open_id: int,
    close_id: int,
    offset: int | torch.Tensor = 0,
    carry: int | torch.Tensor = NO_OPEN_ITEM,
) -> torch.Tensor:
    """``item_start`` for each token of ``token_ids`` ([..., T]).

    ``offset`` is the absolute position of the first token, ``carry`` the start of the item still open
    just before it (``NO_OPEN_ITEM`` if none): together they let a chunk or a single decode token be
    processed knowing only the state left by the previous token. Both broadcast over leading dims.
    """
    shape, T = token_ids.shape, token_ids.shape[-1]
    device = token_ids.device
    rows = token_ids.reshape(-1, T)
    offset = torch.as_tensor(offset, device=device).expand(shape[:-1]).reshape(-1)
    carry = torch.as_tensor(carry, device=device).expand(shape[:-1]).reshape(-1)
    positions = (offset[:, None] + torch.arange(T, device=device)).reshape(-1)
    bounds = torch.arange(0, rows.numel() + 1, T, device=device)
    return packed_item_starts(rows.reshape(-1), positions, bounds, open_id, close_id, carry).reshape(shape)


def packed_item_starts(
    token_ids: torch.Tensor,
    positions: torch.Tensor,
    bounds: torch.Tensor,
    open_id: int,
    close_id: int,
    carry: torch.Tensor,
) -> torch.Tensor:
    """``item_start`` for the tokens of several sequences packed in one dim (as an engine step has them).

    Sequence r owns tokens ``bounds[r]:bounds[r + 1]`` at absolute ``positions``, and ``carry[r]`` is the
    start of its item still open before its first token (NO_OPEN_ITEM if none).
    """
    device = token_ids.device
    counts = bounds[1:] - bounds[:-1]
    seq = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    positions = positions.long()
    # Shift each sequence's positions above every earlier sequence's, so that running maxima over the
    # packed tokens restart at each sequence: ``base - 1`` means "none" within a sequence.
    stride = int(positions.max()) + 2 if positions.numel() else 1
    base = seq * stride
    none = base - 1
    shifted = base + positions
    # Latest open at or before each token; the carry stands for an open before the sequence's tokens.
    last_open = torch.where(token_ids == open_id, shifted, none).cummax(0).values
    carried = carry.long()[seq]
    last_open = torch.maximum(last_open, torch.where(carried != NO_OPEN_ITEM, base + carried, none))
    # Latest close strictly before each token: a close token still belongs to its item.
    prev_close = torch.where(token_ids == close_id, shifted, none).roll(1)
    firsts = bounds[:-1][counts > 0]
    prev_close[firsts] = none[firsts]
    prev_close = prev_close.cummax(0).values
    # A close with no open item before it is thereby a stray token, outside items.
    in_item = (last_open != none) & (last_open > prev_close)
    return torch.where(in_item, last_open - base, positions + 1)


def carry_after(starts: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor | int, close_id: int) -> torch.Tensor:
    """The ``carry`` each token leaves for the next one: the start of its item if that item is still
    open after it (an item token other than the close delimiter), else NO_OPEN_ITEM. Element-wise."""
    still_open = (starts <= torch.as_tensor(positions)) & (token_ids != close_id)
    return torch.where(still_open, starts, torch.full_like(starts, NO_OPEN_ITEM))


def first_item_position(token_ids: torch.Tensor, open_id: int) -> torch.Tensor:
    """P per sequence: position of the first item-open token, or T if there is none."""
    T = token_ids.shape[-1]
    is_open = token_ids == open_id
    none = torch.full(is_open.shape[:-1], T, dtype=torch.long, device=token_ids.device)
    return torch.where(is_open.any(-1), is_open.long().argmax(-1), none)


def layer_mask(
    layer_type: LayerType | str,
    query_starts: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    first_item: torch.Tensor,
) -> torch.Tensor:
    """Boolean mask [..., Tq, Tk], True where query may attend to key.

    ``query_starts``/``query_pos``: [..., Tq]; ``key_pos``: [Tk] or [..., Tk]; ``first_item``: [...].
    """
    q = query_pos[..., :, None]
    k = key_pos[..., None, :] if key_pos.dim() > 1 else key_pos[None, :]
    s = query_starts[..., :, None]
    allowed = (k <= q).expand(*query_starts.shape, key_pos.shape[-1])
    layer_type = LayerType(layer_type)
    if layer_type is LayerType.IN:
        allowed = allowed & ((k < first_item[..., None, None]) | (k >= s) | (k == q))
    elif layer_type is LayerType.CR:
        allowed = allowed & ((k < s) | (k == q))
    return allowed
