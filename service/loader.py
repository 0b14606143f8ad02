"""Load a dataset into Redis: catalog, users' histories, popularity counts.

    python -m service.loader --data data/ml-latest-small [--redis-url redis://127.0.0.1:6379/0]

Any format `hatllm.data.load_dataset` reads. Idempotent: the catalog is replaced as a whole (new
version), the dataset's users get exactly their sequences, and popularity is recounted; running it
twice gives the same state. Users not in the dataset keep their histories.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from tqdm import tqdm

from hatllm.data import dataset_folder, load_dataset

from .keys import Keys
from .settings import Settings
from .store import STORE_ERRORS, Store, connect

USERS_PER_BATCH = 500


async def load_into_redis(store: Store, data: str) -> dict:
    dataset = load_dataset(data)
    with tqdm(total=len(dataset.catalog), desc="catalog", unit="item") as bar:
        version = await store.replace_catalog(dataset.catalog.titles, bar.update)
    users = list(dataset.sequences)
    for start in tqdm(range(0, len(users), USERS_PER_BATCH), desc="histories", unit="batch"):
        await store.replace_histories({u: dataset.sequences[u] for u in users[start:start + USERS_PER_BATCH]})
    await store.replace_popularity(Counter(item for seq in dataset.sequences.values() for item in seq))
    return dict(dataset=dataset.name, catalog_version=version, items=len(dataset.catalog), users=len(users),
                interactions=dataset.num_interactions, skipped=dataset.report.summary())


async def load(data: str, settings: Settings, only_if_empty: bool = False) -> dict | None:
    """Load `data` into the Redis of `settings` (after renaming keys of the older layout); with
    `only_if_empty`, only when it holds no catalog yet (the main job's first start)."""
    redis = connect(settings.redis_connection_url(), settings.redis_cluster, decode_responses=True)
    try:
        store = Store(redis, Keys(settings.redis_prefix), settings.history_cap)
        await store.migrate_legacy_keys()
        if only_if_empty and await redis.exists(store.keys.catalog):
            return None
        return await load_into_redis(store, data)
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> dict:
    settings = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=dataset_folder, help="dataset folder")
    p.add_argument("--redis-url", default=settings.redis_url, required=settings.redis_url is None)
    p.add_argument("--cluster", action=argparse.BooleanOptionalAction, default=settings.redis_cluster,
                   help="the URL is a node of a Redis Cluster")
    p.add_argument("--prefix", default=settings.redis_prefix)
    p.add_argument("--history-cap", type=int, default=settings.history_cap)
    args = p.parse_args(argv)
    settings = settings.model_copy(update={"redis_url": args.redis_url, "redis_cluster": args.cluster,
                                           "redis_prefix": args.prefix, "history_cap": args.history_cap})
    try:
        summary = asyncio.run(load(args.data, settings))
    except STORE_ERRORS as exc:
        p.exit(1, f"{p.prog}: error: Redis at {args.redis_url}: {exc}\n")
    print(summary)
    return summary


if __name__ == "__main__":
    main()
