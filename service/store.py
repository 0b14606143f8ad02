"""Every Redis read and write of the service (key layout in `keys.py` and service/README.md).

Writes that must go together run as one MULTI/EXEC transaction, so a reader never sees half of a
change: a catalog change (items + version), and on a single Redis an event batch (histories +
popularity). A Redis Cluster refuses transactions across hash slots, so there an event batch is one
transaction per user (history append + trim) plus one for popularity: each user's events are applied
whole or not at all, but a failed call may have applied some users' (service/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable, Iterable, Mapping

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from .keys import Keys

log = logging.getLogger(__name__)
# What an unreachable store raises: a cluster with no reachable node raises RedisClusterException,
# which is not a RedisError.
STORE_ERRORS = (RedisError, RedisClusterException)
Command = tuple  # (pipeline method name, *arguments), e.g. ("rpush", key, "1", "2")
CONCURRENT_TRANSACTIONS = 64  # per-user transactions in flight at once (cluster)
READ_CHUNK = 10_000  # entries per HSCAN / ZSCAN / HMGET call
WRITE_BATCH, PIPELINED_BATCHES = 5_000, 10  # items per HSET, HSETs per round trip when loading a catalog
CHANGE_LOG_CAP = 100_000  # items in the catalog change log; a replica further behind reads the whole catalog
# Scripts, not MULTI: the version a change gets is known only inside the transaction, and redis-py refuses
# RENAME in a cluster pipeline. Every catalog key shares one hash slot.
# KEYS: catalog, version, change log, log floor.
CHANGE_CATALOG = """
local version = redis.call('INCR', KEYS[2])
if ARGV[1] == 'put' then
  for i = 3, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[3], version, ARGV[i])
  end
else
  for i = 3, #ARGV do
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZADD', KEYS[3], version, ARGV[i])
  end
end
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[2])
if excess > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[3], excess)
  redis.call('SET', KEYS[4], dropped[#dropped])
end
return version
"""
# KEYS: staging hash, catalog, version, change log, log floor.
SWAP_CATALOG = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) else redis.call('DEL', KEYS[2]) end
local version = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[5], version)
return version
"""


def connect(url: str, cluster: bool = False, **options) -> Redis | RedisCluster:
    """A client for one Redis, or for the Redis Cluster that `url` is a node of.

    On one Redis a command whose connection fails is retried once, at once, on a new connection: after Redis
    restarts, every pooled connection is dead, and without the retry each would fail one request with 503
    (redis-py's `from_url` retries nothing). During an outage the retry's connect is refused as fast, so
    failures stay fast. A write that Redis applied just before its connection broke can apply twice, as
    when a client retries a 503 (service/README.md). The cluster client has its own retries, with backoff,
    which also find a failed-over node."""
    if not cluster:
        options.setdefault("retry", Retry(NoBackoff(), 1))
    return (RedisCluster if cluster else Redis).from_url(url, **options)


class Store:
    def __init__(self, redis: Redis | RedisCluster, keys: Keys, history_cap: int):
        self.redis, self.keys, self.history_cap = redis, keys, history_cap
        self.cluster = isinstance(redis, RedisCluster)

    async def ping(self) -> bool:
        return await self.redis.ping()

    async def _transaction(self, commands: list[Command]) -> list:
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, *args in commands:
                getattr(pipe, name)(*args)
            return await pipe.execute()

    async def _apply(self, groups: list[list[Command]]) -> None:
        """Each group touches one hash slot. On a single Redis all of them go in one transaction; on a
        cluster, one transaction per group (a bounded number at a time)."""
        if not self.cluster:
            await self._transaction([command for group in groups for command in group])
            return
        for start in range(0, len(groups), CONCURRENT_TRANSACTIONS):
            await asyncio.gather(*(self._transaction(group) for group in groups[start : start + CONCURRENT_TRANSACTIONS]))

    async def migrate_legacy_keys(self) -> int:
        """Rename keys of the layout before hash tags (single Redis only; a cluster never had them).
        Runs at every start; a no-op once done. Returns the number of keys renamed."""
        legacy = self.keys.legacy
        if self.cluster or not await self.redis.exists(legacy.catalog, legacy.catalog_version, legacy.popularity):
            return 0
        renamed = 0
        for old, new in ((legacy.catalog, self.keys.catalog), (legacy.catalog_version, self.keys.catalog_version),
                         (legacy.popularity, self.keys.popularity)):
            if await self.redis.exists(old):  # RENAMENX fails on a missing key
                renamed += await self.redis.renamenx(old, new)
        async for key in self.redis.scan_iter(match=legacy.history_pattern, count=1000):
            if "{" not in key:
                renamed += await self.redis.renamenx(key, self.keys.history(key.removeprefix(legacy.history(""))))
        log.warning("renamed %d Redis keys to the hash-tagged layout", renamed)
        return renamed

    # Histories and popularity

    async def history(self, user_id: str, last: int) -> list[str]:
        """The user's last `last` items, oldest first."""
        return await self.redis.lrange(self.keys.history(user_id), -last, -1)

    async def erase_history(self, user_id: str) -> int:
        """Delete the user's history; how many items it held."""
        length, _ = await self._transaction([("llen", self.keys.history(user_id)), ("delete", self.keys.history(user_id))])
        return length

    async def append_events(self, events: Iterable[tuple[str, str]]) -> int:
        """Append (user id, item id) pairs in order; one transaction for the whole batch."""
        by_user: dict[str, list[str]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for user, item in events:
            by_user[user].append(item)
            counts[item] += 1
        groups = [[("rpush", self.keys.history(user), *items), ("ltrim", self.keys.history(user), -self.history_cap, -1)]
                  for user, items in by_user.items()]
        groups.append([("zincrby", self.keys.popularity, count, item) for item, count in counts.items()])
        await self._apply(groups)
        return sum(counts.values())

    async def replace_histories(self, sequences: Mapping[str, list[str]]) -> None:
        """Set these users' histories (loader: running it twice gives the same state)."""
        await self._apply([[("delete", self.keys.history(user))]
                           + ([("rpush", self.keys.history(user), *items[-self.history_cap:])] if items else [])
                           for user, items in sequences.items()])

    async def replace_popularity(self, counts: Mapping[str, int]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.popularity)
            if counts:
                pipe.zadd(self.keys.popularity, dict(counts))
            await pipe.execute()

    async def popularity(self) -> dict[str, float]:
        return {item: score async for item, score in self.redis.zscan_iter(self.keys.popularity, count=READ_CHUNK)}

    async def popularity_of(self, item_ids: list[str]) -> dict[str, float]:
        scores = await self.redis.zmscore(self.keys.popularity, item_ids) if item_ids else []
        return {item: score for item, score in zip(item_ids, scores) if score is not None}

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

    async def catalog_changes(self, since: int) -> tuple[int, dict[str, str | None]] | None:
        """(version, item -> its title now or None if removed) for every item changed after version
        `since`; None when the change log does not reach back that far (read the whole catalog instead).
        A title may be newer than the version: applying a change again is harmless."""
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.catalog_version).get(keys.catalog_changes_floor)
            pipe.zrange(keys.catalog_changes, -1, -1, withscores=True)
            pipe.zrangebyscore(keys.catalog_changes, f"({since}", "+inf")
            version, floor, newest, items = await pipe.execute()
        version, floor = int(version or 0), int(floor or 0)
        # A version the log does not hold: changed by something that bypassed this store (older code).
        logged = version == floor or (newest and int(newest[0][1]) == version)
        if since < floor or not logged:
            return None
        titles = []
        for start in range(0, len(items), READ_CHUNK):
            titles += await self.redis.hmget(keys.catalog, items[start:start + READ_CHUNK])
        return version, dict(zip(items, titles))

    async def titles(self, item_ids: list[str]) -> list[str | None]:
        return await self.redis.hmget(self.keys.catalog, item_ids) if item_ids else []

    async def _change_catalog(self, action: str, arguments: list[str]) -> int:
        keys = self.keys
        return await self.redis.eval(CHANGE_CATALOG, 4, keys.catalog, keys.catalog_version, keys.catalog_changes,
                                     keys.catalog_changes_floor, action, CHANGE_LOG_CAP, *arguments)

    async def put_items(self, titles: Mapping[str, str]) -> int:
        """Add or retitle items; returns the new catalog version."""
        return await self._change_catalog("put", [field for pair in titles.items() for field in pair])

    async def remove_items(self, item_ids: list[str]) -> int:
        return await self._change_catalog("remove", list(item_ids))

    async def replace_catalog(self, titles: Mapping[str, str], on_written: Callable[[int], object] = lambda n: None) -> int:
        """Swap in a whole new catalog: written aside in pipelined batches (`on_written` gets each batch's
        item count), then renamed and versioned at once (every replica then reads it whole)."""
        keys = self.keys
        staging = keys.catalog + ":staging"
        await self.redis.delete(staging)
        items = list(titles.items())
        for start in range(0, len(items), WRITE_BATCH * PIPELINED_BATCHES):
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch in range(start, min(start + WRITE_BATCH * PIPELINED_BATCHES, len(items)), WRITE_BATCH):
                    pipe.hset(staging, mapping=dict(items[batch:batch + WRITE_BATCH]))
                await pipe.execute()
            on_written(min(WRITE_BATCH * PIPELINED_BATCHES, len(items) - start))
        return await self.redis.eval(SWAP_CATALOG, 5, staging, keys.catalog, keys.catalog_version, keys.catalog_changes,
                                     keys.catalog_changes_floor)
