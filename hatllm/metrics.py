"""Ranking metrics for leave-one-out evaluation (one target per user)."""

from __future__ import annotations

import math
from typing import Sequence

CUTOFFS = (1, 5, 10)


def target_rank(ranked: Sequence[str], target: str) -> int | None:
    """0-based rank of the target, None if absent."""
    try:
        return list(ranked).index(target)
    except ValueError:
        return None


def hit_and_ndcg(rank: int | None, cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    out = {}
    for k in cutoffs:
        hit = rank is not None and rank < k
        out[f"HR@{k}"] = float(hit)
        out[f"NDCG@{k}"] = 1.0 / math.log2(rank + 2) if hit else 0.0
    return out


def invalid_entries(ranked: Sequence[str], catalog: set[str] | dict) -> int:
    """Entries that are not catalog items, plus repeats of an item already listed."""
    seen, bad = set(), 0
    for item in ranked:
        if item not in catalog or item in seen:
            bad += 1
        seen.add(item)
    return bad
