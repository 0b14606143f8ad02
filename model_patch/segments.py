"""Item segments of the tokens an engine step computes, tracked across steps through the KV cache.

The attention backend sees no token ids, and a decode step or a prefill chunk sees only its own new
tokens. The model computes each new token's ``item_start`` (hatllm.masks) from its id and the state left
by the previous token of its sequence. That state is stored per KV-cache *slot*, beside the keys and
values: ``carry`` (start of the item still open after the token, or NO_OPEN_ITEM) and ``first_item``
(P, the first item position seen so far, or NO_FIRST_ITEM). Because it lives where the KV entries live,
it follows them through prefix caching (a cached block's tokens were computed with the same history),
preemption (recomputed with the tokens) and beam requests sharing a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hatllm.masks import NO_OPEN_ITEM, item_starts

NO_FIRST_ITEM = torch.iinfo(torch.int32).max  # no item yet: every key of the prefix is visible in IN


@dataclass
class StepSegments:
    """Per token of the current step (the first num_actual_tokens): item start and P."""

    starts: torch.Tensor  # [num_tokens] int64
    first_item: torch.Tensor  # [num_tokens] int64


class SegmentTracker:
    def __init__(self, item_open_id: int, item_close_id: int):
        self.open_id, self.close_id = item_open_id, item_close_id
        self.carry: torch.Tensor | None = None  # [num_slots] int32
        self.first: torch.Tensor | None = None  # [num_slots] int32
        self.step: StepSegments | None = None

    def _ensure_capacity(self, num_slots: int, device) -> None:
        if self.carry is None or self.carry.numel() < num_slots:
            self.carry = torch.full((num_slots,), NO_OPEN_ITEM, dtype=torch.int32, device=device)
            self.first = torch.full((num_slots,), NO_FIRST_ITEM, dtype=torch.int32, device=device)

    def update(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, block_size: int, num_slots: int) -> StepSegments:
        """Compute this step's segments and record every new token's state at its slot."""
        self._ensure_capacity(num_slots, input_ids.device)
        n = meta.num_actual_tokens
        ids, pos, slots = input_ids[:n], positions[:n].long(), meta.slot_mapping[:n].long()
        starts = torch.empty(n, dtype=torch.long, device=ids.device)
        first = torch.empty(n, dtype=torch.long, device=ids.device)
        bounds = meta.query_start_loc.tolist()
        for r in range(len(bounds) - 1):
            a, b = bounds[r], bounds[r + 1]
            if a == b:
                continue
            p0 = int(pos[a])
            if p0 > 0:
                prev = meta.block_table[r, (p0 - 1) // block_size].long() * block_size + (p0 - 1) % block_size
                carry, first_prev = int(self.carry[prev]), int(self.first[prev])
            else:
                carry, first_prev = NO_OPEN_ITEM, NO_FIRST_ITEM
            chunk = ids[a:b]
            chunk_starts = item_starts(chunk, self.open_id, self.close_id, offset=p0, carry=carry)
            starts[a:b] = chunk_starts
            opens = torch.nonzero(chunk == self.open_id)
            p_first = first_prev if first_prev != NO_FIRST_ITEM or not len(opens) else p0 + int(opens[0])
            first[a:b] = p_first
            chunk_pos = pos[a:b]
            in_item = (chunk_starts <= chunk_pos) & (chunk != self.close_id)
            self.carry[slots[a:b]] = torch.where(in_item, chunk_starts, NO_OPEN_ITEM).int()
            self.first[slots[a:b]] = torch.where(chunk_pos >= p_first, p_first, NO_FIRST_ITEM).int()
        self.step = StepSegments(starts, first)
        return self.step
