"""Most-popular baseline: items by training interaction count (ties by item id)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable


class PopularRanker:
    name = "popular"

    def __init__(self, popularity: Counter, catalog: Iterable[str]):
        self.popularity = popularity
        self.order = sorted(catalog, key=lambda item: (-popularity[item], item))

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        return [self.rank(history, k, exclude) for history, exclude in zip(histories, excludes)]

    def rank(self, history: tuple[str, ...], k: int, exclude: set[str]) -> list[tuple[str, float]]:
        out = []
        for item in self.order:
            if item not in exclude:
                out.append((item, float(self.popularity[item])))
                if len(out) == k:
                    break
        return out
