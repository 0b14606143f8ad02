"""The catalog the service decodes against, as immutable versioned snapshots.

A request takes the current snapshot once and uses only it (titles, trie, popularity order), so it
sees one consistent catalog version even if the catalog changes while it runs. A change in Redis
(admin endpoint, loader CLI, another replica) bumps the version; `CatalogCache.refresh` notices it,
builds the new snapshot in a worker thread (tokenizing new titles and building the trie do not block
the event loop) and swaps it in with one assignment.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import ItemCodes
from hatllm.core.prompt import PromptBuilder
from hatllm.core.trie import TitleTrie

from . import metrics
from .store import STORE_ERRORS, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogSnapshot:
    version: int
    model: ModelCatalog  # titles, codes, trie and prompts as the served checkpoint sees them
    popular: list[str]  # item ids, most interacted first (cold start, and the trie's tie order)

    @classmethod
    def build(cls, version: int, titles: dict[str, str], popularity: dict[str, float], builder: PromptBuilder,
              item_codes: ItemCodes | None = None):
        counts = Counter({item: popularity.get(item, 0) for item in titles})
        popular = sorted(titles, key=lambda item: (-counts[item], item))
        return cls(version, ModelCatalog.build(builder, titles, item_codes, counts), popular)

    @property
    def titles(self) -> dict[str, str]:
        return self.model.titles

    @property
    def trie(self) -> TitleTrie:
        return self.model.trie


class CatalogCache:
    def __init__(self, store: Store, builder: PromptBuilder, item_codes: ItemCodes | None = None):
        self.store, self.builder, self.item_codes = store, builder, item_codes
        self.current: CatalogSnapshot | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> CatalogSnapshot | None:
        """Load the catalog from Redis if its version changed."""
        async with self._lock:
            version = await self.store.catalog_version()
            if self.current is not None and self.current.version == version:
                return self.current
            version, titles = await self.store.catalog()
            popularity = await self.store.popularity()
            snapshot = await asyncio.to_thread(CatalogSnapshot.build, version, titles, popularity, self.builder,
                                               self.item_codes)
            self.current = snapshot
            metrics.CATALOG_VERSION.set(version)
            metrics.CATALOG_ITEMS.set(len(titles))
            log.info("catalog version %d: %d items", version, len(titles))
            return snapshot

    async def watch(self, interval_s: float) -> None:
        """Follow catalog changes made elsewhere; Redis outages only delay it."""
        while True:
            try:
                await self.refresh()
            except STORE_ERRORS as exc:
                log.warning("catalog refresh failed: %s", exc)
            await asyncio.sleep(interval_s)
