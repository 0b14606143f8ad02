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


def item_starts(token_ids: torch.Tensor, open_id: int, close_id: int) -> torch.Tensor:
    """``item_start`` for each token of ``token_ids`` ([..., T])."""
    positions = torch.arange(token_ids.shape[-1], device=token_ids.device).expand_as(token_ids)
    none = torch.full_like(positions, -1)
    # Latest open at or before each token, and latest close strictly before it: a close token still
    # belongs to its item, and a close with no open item before it is a stray token, outside items.
    last_open = torch.where(token_ids == open_id, positions, none).cummax(-1).values
    closes = torch.where(token_ids == close_id, positions, none)
    prev_close = torch.cat((none[..., :1], closes[..., :-1]), -1).cummax(-1).values
    in_item = (last_open != none) & (last_open > prev_close)
    return torch.where(in_item, last_open, positions + 1)


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
