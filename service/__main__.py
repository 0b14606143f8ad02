"""The main job: everything on this machine with the embedded defaults.

    python -m service

Starts redis-server unless REDIS_URL is set, loads the default dataset if Redis holds no catalog,
serves the default model on http://127.0.0.1:8000 (OpenAPI docs at /docs). Ctrl-C stops all of it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack

import uvicorn

from .api import create_app
from .keys import Keys
from .loader import load
from .redis_server import EmbeddedRedis
from .settings import Settings


async def catalog_present(redis_url: str, keys: Keys) -> bool:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return bool(await redis.exists(keys.catalog))
    finally:
        await redis.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    with ExitStack() as stack:
        if settings.redis_url is None:
            embedded = stack.enter_context(EmbeddedRedis(settings.embedded_redis_port, settings.embedded_redis_dir))
            settings = settings.model_copy(update={"redis_url": embedded.url})
            logging.info("started redis-server at %s (data in %s)", embedded.url, settings.embedded_redis_dir)
        if settings.dataset and not asyncio.run(catalog_present(settings.redis_url, Keys(settings.redis_prefix))):
            logging.info("loading %s into Redis", settings.dataset)
            logging.info("%s", asyncio.run(load(settings.dataset, settings.redis_url, settings.redis_prefix,
                                                settings.history_cap)))
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
