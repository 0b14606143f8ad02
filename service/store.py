"""Every Redis read and write of the service (key layout in `keys.py` and service/README.md).

Writes that must go together run as one MULTI/EXEC transaction, so a reader never sees half of a
change: an event batch (histories + popularity), a catalog change (items + version).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from redis.asyncio import Redis

from .keys import Keys

READ_CHUNK = 10_000  # entries per HSCAN / ZSCAN call


class Store:
    def __init__(self, redis: Redis, keys: Keys, history_cap: int):
        self.redis, self.keys, self.history_cap = redis, keys, history_cap

    async def ping(self) -> bool:
        return await self.redis.ping()

    # Histories and popularity

    async def history(self, user_id: str, last: int) -> list[str]:
        """The user's last `last` items, oldest first."""
        return await self.redis.lrange(self.keys.history(user_id), -last, -1)

    async def append_events(self, events: Iterable[tuple[str, str]]) -> int:
        """Append (user id, item id) pairs in order; one transaction for the whole batch."""
        by_user: dict[str, list[str]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for user, item in events:
            by_user[user].append(item)
            counts[item] += 1
        async with self.redis.pipeline(transaction=True) as pipe:
            for user, items in by_user.items():
                pipe.rpush(self.keys.history(user), *items)
                pipe.ltrim(self.keys.history(user), -self.history_cap, -1)
            for item, count in counts.items():
                pipe.zincrby(self.keys.popularity, count, item)
            await pipe.execute()
        return sum(counts.values())

    async def replace_histories(self, sequences: Mapping[str, list[str]]) -> None:
        """Set these users' histories (loader: running it twice gives the same state)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for user, items in sequences.items():
                pipe.delete(self.keys.history(user))
                if items:
                    pipe.rpush(self.keys.history(user), *items[-self.history_cap:])
            await pipe.execute()

    async def replace_popularity(self, counts: Mapping[str, int]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.popularity)
            if counts:
                pipe.zadd(self.keys.popularity, dict(counts))
            await pipe.execute()

    async def popularity(self) -> dict[str, float]:
        return {item: score async for item, score in self.redis.zscan_iter(self.keys.popularity, count=READ_CHUNK)}

    # Catalog

    async def catalog_version(self) -> int:
        return int(await self.redis.get(self.keys.catalog_version) or 0)

    async def catalog(self) -> tuple[int, dict[str, str]]:
        """(version, item id -> title) of one version. Read in chunks (HSCAN: no single command walks a
        catalog of millions of items and blocks Redis), then read again if the version moved meanwhile."""
        while True:
            version = await self.catalog_version()
            titles = {item: title async for item, title in self.redis.hscan_iter(self.keys.catalog, count=READ_CHUNK)}
            if await self.catalog_version() == version:
                return version, titles

    async def titles(self, item_ids: list[str]) -> list[str | None]:
        return await self.redis.hmget(self.keys.catalog, item_ids) if item_ids else []

    async def put_items(self, titles: Mapping[str, str]) -> int:
        """Add or retitle items; returns the new catalog version."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.catalog, mapping=dict(titles))
            pipe.incr(self.keys.catalog_version)
            return (await pipe.execute())[-1]

    async def remove_items(self, item_ids: list[str]) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.catalog, *item_ids)
            pipe.incr(self.keys.catalog_version)
            return (await pipe.execute())[-1]

    async def replace_catalog(self, titles: Mapping[str, str], batch: int = 5000) -> int:
        """Swap in a whole new catalog: written aside, then renamed in one transaction."""
        staging = self.keys.catalog + ":staging"
        await self.redis.delete(staging)
        items = list(titles.items())
        for start in range(0, len(items), batch):
            await self.redis.hset(staging, mapping=dict(items[start:start + batch]))
        async with self.redis.pipeline(transaction=True) as pipe:
            if items:
                pipe.rename(staging, self.keys.catalog)
            else:
                pipe.delete(self.keys.catalog)
            pipe.incr(self.keys.catalog_version)
            return (await pipe.execute())[-1]
