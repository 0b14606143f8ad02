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

from hatllm.masks import NO_OPEN_ITEM, carry_after, packed_item_starts

NO_FIRST_ITEM = torch.iinfo(torch.int32).max  # no item yet: every key of the prefix is visible in IN


@dataclass
class StepSegments:
    """Per token of the current step (the first num_actual_tokens): item start and P."""

    positions: torch.Tensor  # [num_tokens] int64, absolute
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

    def slot_state(self, slots: torch.Tensor) -> torch.Tensor:
        """The state recorded at `slots`, [len(slots), 2] (carry, first item): moved with their KV entries."""
        return torch.stack((self.carry[slots], self.first[slots]), dim=1)

    def set_slot_state(self, slots: torch.Tensor, state: torch.Tensor) -> None:
        self.carry[slots], self.first[slots] = state[:, 0], state[:, 1]

    def update(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, block_size: int, num_slots: int) -> StepSegments:
        """Compute this step's segments and record every new token's state at its slot."""
        self._ensure_capacity(num_slots, input_ids.device)
        n = meta.num_actual_tokens
        ids, pos, slots = input_ids[:n], positions[:n].long(), meta.slot_mapping[:n].long()
        bounds = meta.query_start_loc.long()
        counts = bounds[1:] - bounds[:-1]
        num_reqs = len(counts)
        seq = torch.repeat_interleave(torch.arange(num_reqs), counts)
        # State left by each request's previous token (none for a request starting at position 0).
        first_pos = pos[bounds[:-1].clamp(max=max(n - 1, 0))]
        prev = (first_pos - 1).clamp(min=0)
        prev_slot = meta.block_table[:num_reqs].long().gather(1, (prev // block_size)[:, None])[:, 0] * block_size
        prev_slot += prev % block_size
        has_prev = (first_pos > 0) & (counts > 0)
        carry = torch.where(has_prev, self.carry[prev_slot].long(), NO_OPEN_ITEM)
        first_prev = torch.where(has_prev, self.first[prev_slot].long(), NO_FIRST_ITEM)

        starts = packed_item_starts(ids, pos, bounds, self.open_id, self.close_id, carry)
        opens = torch.where(ids == self.open_id, pos, NO_FIRST_ITEM)
        first_open = torch.full((num_reqs,), NO_FIRST_ITEM, dtype=torch.long).scatter_reduce(0, seq, opens, "amin")
        first_item = torch.minimum(first_prev, first_open)[seq]

        self.carry[slots] = carry_after(starts, ids, pos, self.close_id).int()
        self.first[slots] = torch.where(pos >= first_item, first_item, NO_FIRST_ITEM).int()
        self.step = StepSegments(pos, starts, first_item)
        return self.step
