"""The catalog the service decodes against, as immutable versioned snapshots.

A request takes the current snapshot once and uses only it (titles, trie, popularity order), so it
sees one consistent catalog version even if the catalog changes while it runs. A change in Redis
(admin endpoint, loader CLI, another replica) bumps the version; `CatalogCache.refresh` notices it and
swaps in a new snapshot with one assignment:
- a few changed items (read from the store's change log) are laid over the current snapshot
  (`ModelCatalog.with_changes`): milliseconds, whatever the catalog's size;
- once the changes since the last full build pass `rebuild_after`, a full build starts in the
  background from the snapshot's own titles, and the changes made meanwhile are laid over it when done;
- a whole new catalog (the loader), or a replica too far behind the change log, reads the catalog whole.
Builds run in a worker thread: tokenizing titles and building tries never block the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from dataclasses import dataclass
from typing import Iterator, Mapping

from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import ItemCodes
from hatllm.core.prompt import PromptBuilder
from hatllm.core.trie import PatchedTrie, TitleTrie

from . import metrics
from .store import STORE_ERRORS, Store

log = logging.getLogger(__name__)
REBUILD_AFTER = 5_000  # changed items since the last full build that start a new one
_ABSENT = object()


@dataclass(frozen=True)
class CatalogSnapshot:
    version: int
    model: ModelCatalog  # titles, codes, trie, popularity order and prompts as the served checkpoint sees them

    @classmethod
    def build(cls, version: int, titles: Mapping[str, str], popularity: dict[str, float], builder: PromptBuilder,
              item_codes: ItemCodes | None = None) -> "CatalogSnapshot":
        return cls(version, ModelCatalog.build(builder, titles, item_codes, popularity))

    def with_changes(self, version: int, changes: dict[str, str | None], popularity: dict[str, float]) -> "CatalogSnapshot":
        return CatalogSnapshot(version, self.model.with_changes(changes, popularity))

    @property
    def titles(self) -> Mapping[str, str]:
        return self.model.titles

    @property
    def trie(self) -> TitleTrie | PatchedTrie:
        return self.model.trie

    def most_popular(self) -> Iterator[str]:
        """Catalog items, most interacted first (cold start)."""
        return self.model.most_popular()


def build_snapshot(version: int, titles: Mapping[str, str], popularity: dict[str, float], builder: PromptBuilder,
                   item_codes: ItemCodes | None) -> CatalogSnapshot:
    """`CatalogSnapshot.build` in a worker thread, then the heap pages its temporaries used handed back to
    the OS: glibc keeps freed memory resident otherwise (about 1.5 GB after a million-item build)."""
    snapshot = CatalogSnapshot.build(version, titles, popularity, builder, item_codes)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass
    return snapshot


class CatalogCache:
    def __init__(self, store: Store, builder: PromptBuilder, item_codes: ItemCodes | None = None,
                 rebuild_after: int = REBUILD_AFTER):
        self.store, self.builder, self.item_codes, self.rebuild_after = store, builder, item_codes, rebuild_after
        self.current: CatalogSnapshot | None = None
        self._lock = asyncio.Lock()
        self._rebuild: asyncio.Task | None = None

    async def refresh(self) -> CatalogSnapshot:
        """Catch up with the catalog in Redis if its version changed."""
        async with self._lock:
            current = self.current
            version = await self.store.catalog_version()
            if current is not None and current.version == version:
                return current
            # A version that went back (Redis restored from an older copy) is a different catalog: read it whole.
            behind = current is not None and version > current.version
            changes = await self.store.catalog_changes(current.version) if behind else None
            if changes is None or len(changes[1]) > self.rebuild_after:
                snapshot = await self._read_whole()
            else:
                version, changed = changes
                popularity = await self.store.popularity_of([item for item, title in changed.items() if title is not None])
                snapshot = await asyncio.to_thread(current.with_changes, version, changed, popularity)
                if snapshot.model.patch_size > self.rebuild_after and self._rebuild is None:
                    self._rebuild = asyncio.create_task(self._rebuild_from(snapshot))
            self._swap_in(snapshot)
            return snapshot

    async def _read_whole(self) -> CatalogSnapshot:
        version, titles = await self.store.catalog()
        popularity = await self.store.popularity()
        return await asyncio.to_thread(build_snapshot, version, titles, popularity, self.builder, self.item_codes)

    async def _rebuild_from(self, snapshot: CatalogSnapshot) -> None:
        """A full build of `snapshot`'s catalog, with the changes made since laid over it."""
        try:
            popularity = await self.store.popularity()
            rebuilt = await asyncio.to_thread(build_snapshot, snapshot.version, snapshot.titles, popularity,
                                              self.builder, self.item_codes)
            async with self._lock:
                current = self.current
                if current.model.base is not snapshot.model.base:  # the catalog was read whole meanwhile
                    return
                since = {item: title for item, title in current.model.changes.items()
                         if snapshot.model.changes.get(item, _ABSENT) != title}
                if since:
                    rebuilt = await asyncio.to_thread(rebuilt.with_changes, current.version, since,
                                                      await self.store.popularity_of(list(since)))
                self._swap_in(rebuilt)
        except STORE_ERRORS as exc:
            log.warning("catalog rebuild failed (the next change retries it): %s", exc)
        finally:
            self._rebuild = None

    def _swap_in(self, snapshot: CatalogSnapshot) -> None:
        if self.current is None or snapshot.version != self.current.version or snapshot.model.base is None:
            log.info("catalog version %d: %d items (%d changed since the last full build)", snapshot.version,
                     len(snapshot.titles), snapshot.model.patch_size)
        self.current = snapshot
        metrics.CATALOG_VERSION.set(snapshot.version)
        metrics.CATALOG_ITEMS.set(len(snapshot.titles))

    def stop(self) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()

    async def poll(self) -> None:
        """One round of the catalog watcher: follow changes made elsewhere; a Redis outage only delays it."""
        try:
            await self.refresh()
        except STORE_ERRORS as exc:
            log.warning("catalog refresh failed: %s", exc)
