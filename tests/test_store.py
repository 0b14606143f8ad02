"""The store against a real single Redis and a real 3-master Redis Cluster: the same code, the same results."""

import asyncio

import pytest
import redis

from service import store as store_module
from service.keys import Keys
from service.redis_server import EmbeddedRedis
from service.store import Store, connect
from tests.helpers import LocalRedisCluster


@pytest.fixture(scope="module", params=["single", "cluster"])
def redis_url(request, tmp_path_factory):
    from loadtests.local_service import free_port

    server = (EmbeddedRedis(free_port(), tmp_path_factory.mktemp("redis")) if request.param == "single"
              else LocalRedisCluster(tmp_path_factory.mktemp("cluster"))).start()
    yield server.url, request.param == "cluster"
    server.stop()


def run(redis_url, prefix: str, scenario):
    """`scenario(store)` on a fresh client and key prefix."""
    url, cluster = redis_url

    async def main():
        client = connect(url, cluster, decode_responses=True)
        try:
            return await scenario(Store(client, Keys(prefix), history_cap=3))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_events_append_capped_histories_and_popularity(redis_url):
    async def scenario(store: Store):
        events = [(f"user-{u}", str(i)) for u in range(40) for i in range(5)]  # 40 users: every node of a cluster
        accepted = await store.append_events(events)
        return accepted, await store.history("user-7", 10), await store.popularity()

    accepted, history, popularity = run(redis_url, "events", scenario)
    assert accepted == 200 and history == ["2", "3", "4"]  # capped at 3, oldest dropped
    assert popularity == {str(i): 40.0 for i in range(5)}


def test_catalog_changes_are_versioned(redis_url):
    async def scenario(store: Store):
        first = await store.replace_catalog({"1": "One", "2": "Two"})
        second = await store.put_items({"3": "Three"})
        third = await store.remove_items(["1"])
        return first, second, third, await store.catalog(), await store.titles(["2", "9"])

    first, second, third, catalog, titles = run(redis_url, "catalog", scenario)
    assert (first, second, third) == (1, 2, 3) and catalog == (3, {"2": "Two", "3": "Three"})
    assert titles == ["Two", None]


def test_the_change_log_gives_every_item_changed_since_a_version(redis_url, monkeypatch):
    monkeypatch.setattr(store_module, "CHANGE_LOG_CAP", 4)

    async def scenario(store: Store):
        await store.replace_catalog({"1": "One", "2": "Two"})  # version 1
        at_load = await store.catalog_changes(0), await store.catalog_changes(1)
        await store.put_items({"3": "Three", "1": "Uno"})  # 2
        await store.remove_items(["2"])  # 3
        await store.put_items({"4": "Four"})  # 4
        since = [await store.catalog_changes(v) for v in (1, 2, 4)]
        await store.put_items({"5": "Five", "6": "Six"})  # 5: the log (cap 4) drops "1" and "3" (version 2)
        trimmed = await store.catalog_changes(1), await store.catalog_changes(2)
        await store.redis.incr(store.keys.catalog_version)  # a change that bypassed the log
        return at_load, since, trimmed, await store.catalog_changes(5)

    at_load, since, trimmed, bypassed = run(redis_url, "changes", scenario)
    assert at_load == (None, (1, {}))  # a reader from before the whole-catalog load must read it whole
    assert since == [(4, {"1": "Uno", "3": "Three", "2": None, "4": "Four"}), (4, {"2": None, "4": "Four"}), (4, {})]
    assert trimmed == (None, (5, {"2": None, "4": "Four", "5": "Five", "6": "Six"}))
    assert bypassed is None


def test_loader_replaces_histories(redis_url):
    async def scenario(store: Store):
        await store.replace_histories({f"u{u}": ["1", "2", "3", "4"] for u in range(30)})
        await store.replace_histories({"u0": ["9"]})
        return await store.history("u0", 10), await store.history("u29", 10)

    assert run(redis_url, "loader", scenario) == (["9"], ["2", "3", "4"])


def test_keys_of_the_layout_before_hash_tags_are_renamed(tmp_path):
    """On a single Redis only: a cluster never held the untagged layout."""
    from loadtests.local_service import free_port

    server = EmbeddedRedis(free_port(), tmp_path).start()
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    legacy = Keys("old").legacy
    raw.hset(legacy.catalog, mapping={"1": "One"})
    raw.set(legacy.catalog_version, 4)
    raw.zadd(legacy.popularity, {"1": 2})
    raw.rpush(legacy.history("alice"), "1")

    async def scenario(store: Store):
        renamed = await store.migrate_legacy_keys()
        again = await store.migrate_legacy_keys()
        return renamed, again, await store.catalog(), await store.history("alice", 10), await store.popularity()

    try:
        renamed, again, catalog, history, popularity = run((server.url, False), "old", scenario)
        assert not raw.exists(legacy.catalog, legacy.history("alice"))
    finally:
        server.stop()
    assert (renamed, again) == (4, 0) and catalog == (4, {"1": "One"}) and history == ["1"] and popularity == {"1": 2.0}


def test_a_restart_of_redis_fails_no_command(tmp_path):
    """After a restart every pooled connection is dead; each command is retried once, on a new one."""
    from loadtests.local_service import free_port

    async def burst(store: Store):
        return await asyncio.gather(*(store.history(f"reader-{i}", 5) for i in range(8)),
                                    *(store.append_events([(f"writer-{i}", "1")]) for i in range(8)))

    async def main(server):
        client = connect(server.url, decode_responses=True)
        try:
            store = Store(client, Keys("restart"), history_cap=3)
            await burst(store)  # 16 commands at once: as many pooled connections
            server.stop()
            server.start()
            return await burst(store), [await store.history(f"writer-{i}", 5) for i in range(8)]
        finally:
            await client.aclose()

    with EmbeddedRedis(free_port(), tmp_path) as server:
        after_restart, histories = asyncio.run(main(server))
    assert after_restart == [[]] * 8 + [1] * 8
    assert histories == [["1", "1"]] * 8  # both bursts' events, each once
