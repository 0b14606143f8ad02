"""Ranking metrics for leave-one-out evaluation (one target per user), and the one evaluation loop that
every method (LLM, SASRec, most popular) is scored by."""

from __future__ import annotations

import math
import time
from typing import Protocol, Sequence

from tqdm import tqdm

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


class Ranker(Protocol):
    name: str

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) per history, best first, never an excluded item."""


def evaluate_ranker(ranker: Ranker, examples, catalog, k: int = 10, exclude_seen: bool = True,
                    batch_size: int = 256, progress: bool = True) -> dict:
    """HR/NDCG@1/5/10 over `examples` (whole split). With `exclude_seen`, every earlier item of the
    user except the target is masked out of the ranking (the reference protocol's "seen excluded")."""
    totals = {name: 0.0 for c in CUTOFFS for name in (f"HR@{c}", f"NDCG@{c}")}
    invalid, short, started = 0, 0, time.time()
    bar = tqdm(total=len(examples), desc=f"evaluate {ranker.name}", unit="user", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        excludes = [set(ex.seen) if exclude_seen else set() for ex in batch]
        for ex, ranked in zip(batch, ranker.rank_batch([ex.history for ex in batch], k, excludes)):
            items = [item for item, _ in ranked]
            invalid += invalid_entries(items, catalog)
            short += len(items) < k
            for name, value in hit_and_ndcg(target_rank(items, ex.target)).items():
                totals[name] += value
        bar.update(len(batch))
    bar.close()
    n = max(len(examples), 1)
    result = {name: round(value / n, 5) for name, value in totals.items()}
    result.update(users=len(examples), invalid_outputs=invalid, short_lists=short, seconds=round(time.time() - started, 1))
    return result
