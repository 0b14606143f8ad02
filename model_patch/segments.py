"""Item segments of the tokens an engine step computes, tracked across steps through the KV cache.

The attention backend sees no token ids, and a decode step or a prefill chunk sees only its own new
tokens. The model computes each new token's ``item_start`` (hatllm.core.masks) from its id and the state left
by the previous token of its sequence. That state is stored per KV-cache *slot*, beside the keys and
values: ``carry`` (start of the item still open after the token, or NO_OPEN_ITEM) and ``first_item``
(P, the first item position seen so far, or NO_FIRST_ITEM). Because it lives where the KV entries live,
it follows them through prefix caching (a cached block's tokens were computed with the same history),
preemption (recomputed with the tokens) and beam requests sharing a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model_patch.kernels import hat_attention_ops

NO_OPEN_ITEM = -1  # carry: no item is open after the token
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

    def update(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, block_size: int,
               num_slots: int) -> StepSegments:
        """Compute this step's segments and record every new token's state at its slot.

        One C++ pass (``hat_segments``, the rules of ``hatllm.core.masks.item_starts`` applied token by token
        from the carried state): the same rules as a few dozen small torch ops, without their per-op cost on
        every decode step.
        """
        self._ensure_capacity(num_slots, input_ids.device)
        n = meta.num_actual_tokens
        pos = positions[:n].long()
        starts, first_item = hat_attention_ops().hat_segments(
            input_ids[:n].long(), pos, meta.slot_mapping[:n].long(), meta.query_start_loc.int(), meta.block_table.int(),
            block_size, self.open_id, self.close_id, self.carry, self.first, NO_OPEN_ITEM, NO_FIRST_ITEM)
        self.step = StepSegments(pos, starts, first_item)
        return self.step
