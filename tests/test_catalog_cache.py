"""The service's catalog snapshots against a real Redis: patched on small changes, rebuilt in the background,
read whole after a new catalog."""

import asyncio

import pytest

from service.catalog import CatalogCache
from service.keys import Keys
from service.redis_server import EmbeddedRedis
from service.store import Store, connect
from tests.helpers import TITLES


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    from loadtests.local_service import free_port

    server = EmbeddedRedis(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def live_items(snapshot) -> set[str]:
    view = snapshot.trie.view()
    return {item for item in snapshot.titles if view.live_count(snapshot.trie.leaf(item)) > 0}


def test_small_changes_patch_the_snapshot_and_many_rebuild_it_in_the_background(redis_url, builder, item_codes):
    async def scenario():
        client = connect(redis_url, decode_responses=True)
        store = Store(client, Keys("cache"), history_cap=10)
        cache = CatalogCache(store, builder, item_codes, rebuild_after=3)
        try:
            await store.replace_catalog(TITLES)
            loaded = await cache.refresh()
            await store.put_items({"new": "Heat Casino (2020)", "2": "Jumanji Two"})
            await store.remove_items(["3"])
            patched = await cache.refresh()
            await store.put_items({"new2": "Toy Story 5", "new3": "Casino Royale"})  # 5 changes since the build
            before_rebuild = await cache.refresh()
            rebuild = cache._rebuild  # started by the refresh above, runs in a thread
            await store.put_items({"late": "Late Heat"})  # during the rebuild (or just after)
            await cache.refresh()
            await rebuild
            rebuilt = cache.current
            await store.put_items({f"bulk{i}": f"Heat {i}" for i in range(4)})  # more than rebuild_after at once
            whole = await cache.refresh()
            return loaded, patched, before_rebuild, rebuilt, whole
        finally:
            await client.aclose()

    loaded, patched, before_rebuild, rebuilt, whole = asyncio.run(scenario())
    assert loaded.model.base is None and loaded.version == 1
    assert patched.version == 3 and patched.model.base is loaded.model and patched.model.patch_size == 3
    expected = {item: title for item, title in TITLES.items() if item != "3"} | {"new": "Heat Casino (2020)", "2": "Jumanji Two"}
    assert patched.titles == expected and live_items(patched) == set(expected)
    assert patched.trie.tokens("2") != loaded.trie.tokens("2")
    assert "new" in set(patched.most_popular()) and "3" not in set(patched.most_popular())
    assert before_rebuild.model.patch_size == 5
    # A full build of the 5 changes, with the late change laid over it, whichever finished first.
    assert rebuilt.version == before_rebuild.version + 1 and rebuilt.model.patch_size == 1
    assert rebuilt.model.base.base is None and rebuilt.model.base.titles == before_rebuild.titles
    assert rebuilt.titles == dict(before_rebuild.titles) | {"late": "Late Heat"} and live_items(rebuilt) == set(rebuilt.titles)
    assert whole.model.base is None and len(whole.titles) == len(rebuilt.titles) + 4


def test_a_rebuild_that_fails_keeps_the_patched_snapshot_and_the_next_change_retries_it(tmp_path, builder, item_codes):
    from loadtests.local_service import free_port

    server = EmbeddedRedis(free_port(), tmp_path).start()

    async def scenario():
        client = connect(server.url, decode_responses=True)
        store = Store(client, Keys("failing"), history_cap=10)
        cache = CatalogCache(store, builder, item_codes, rebuild_after=1)
        try:
            await store.replace_catalog(TITLES)
            await cache.refresh()
            await store.put_items({"a": "Heat Again"})
            await cache.refresh()
            await store.put_items({"b": "Casino Again"})
            patched = await cache.refresh()  # 2 changes since the build > 1: a rebuild task starts at the next await
            server.stop()  # ... and finds Redis gone
            await cache._rebuild
            failed = cache.current, cache._rebuild
            server.start()
            await client.connection_pool.disconnect()
            await store.put_items({"c": "Toy Story Again"})
            await cache.refresh()
            await cache._rebuild
            return patched, failed, cache.current
        finally:
            await client.aclose()

    try:
        patched, (after_failure, task_after_failure), rebuilt = asyncio.run(scenario())
    finally:
        server.stop()
    assert after_failure is patched and task_after_failure is None  # served on, the failure forgotten
    assert patched.model.patch_size == 2 and rebuilt.model.patch_size == 0 and rebuilt.model.base is None
    assert rebuilt.titles == TITLES | {"a": "Heat Again", "b": "Casino Again", "c": "Toy Story Again"}
    assert live_items(rebuilt) == set(rebuilt.titles)
