"""Ranking metrics for leave-one-out evaluation (one target per user), and the one evaluation loop that
every method (LLM, SASRec, most popular) is scored by."""

from __future__ import annotations

import math
import time
from typing import Protocol, Sequence

from tqdm import tqdm

CUTOFFS = (1, 5, 10)
EVALUATION_BATCH = 256  # histories handed to a ranker at a time


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
                    batch_size: int = EVALUATION_BATCH, progress: bool = True) -> dict:
    """HR/NDCG@1/5/10 over `examples` (whole split). With `exclude_seen`, every earlier item of the
    user except the target is masked out of the ranking (the reference protocol's "seen excluded")."""
    return evaluate_rankers([ranker], examples, catalog, k, exclude_seen, batch_size, progress)[0]


def evaluate_rankers(rankers: Sequence[Ranker], examples, catalog, k: int = 10, exclude_seen: bool = True,
                     batch_size: int = EVALUATION_BATCH, progress: bool = True) -> list[dict]:
    """`evaluate_ranker` for several rankers in one pass: each ranks a batch in turn, so rankers that share
    work per history (`LLMRanker.with_weight`: the LLM's forward) do it once. `seconds` is the whole pass."""
    totals = [{name: 0.0 for c in CUTOFFS for name in (f"HR@{c}", f"NDCG@{c}")} for _ in rankers]
    invalid, short, started = [0] * len(rankers), [0] * len(rankers), time.time()
    names = ", ".join(dict.fromkeys(r.name for r in rankers))
    bar = tqdm(total=len(examples), desc=f"evaluate {names}", unit="user", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        excludes = [set(ex.seen) if exclude_seen else set() for ex in batch]
        for i, ranker in enumerate(rankers):
            for ex, ranked in zip(batch, ranker.rank_batch([ex.history for ex in batch], k, excludes)):
                items = [item for item, _ in ranked]
                invalid[i] += invalid_entries(items, catalog)
                short[i] += len(items) < k
                for name, value in hit_and_ndcg(target_rank(items, ex.target)).items():
                    totals[i][name] += value
        bar.update(len(batch))
    bar.close()
    n, seconds = max(len(examples), 1), round(time.time() - started, 1)
    return [{name: round(value / n, 5) for name, value in total.items()}
            | dict(users=len(examples), invalid_outputs=bad, short_lists=few, seconds=seconds)
            for total, bad, few in zip(totals, invalid, short)]
