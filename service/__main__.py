"""The main job: everything on this machine with the embedded defaults.

    python -m service

Starts redis-server unless REDIS_URL is set, loads the default dataset if Redis holds no catalog,
serves the default model on http://127.0.0.1:8000 (OpenAPI docs at /docs). Ctrl-C (or SIGTERM) stops
all of it: in-flight requests finish (up to 30 s), new ones are refused. Exit code 3: the engine died.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import ExitStack

import uvicorn

from .api import create_app
from .loader import load
from .redis_server import EmbeddedRedis
from .request_ids import log_handler
from .settings import Settings

ENGINE_FAILED_EXIT_CODE = 3


def serve(settings: Settings) -> int:
    """Run everything until stopped; the exit code: 0, or 3 when the engine died."""
    with ExitStack() as stack:
        if settings.redis_url is None:
            embedded = stack.enter_context(EmbeddedRedis(settings.embedded_redis_port, settings.embedded_redis_dir,
                                                        restart=True))
            settings = settings.model_copy(update={"redis_url": embedded.url})
            logging.info("started redis-server at %s (data in %s)", embedded.url, settings.embedded_redis_dir)
        if settings.dataset:
            loaded = asyncio.run(load(settings.dataset, settings, only_if_empty=True))
            if loaded:
                logging.info("loaded %s into Redis: %s", settings.dataset, loaded)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                               timeout_graceful_shutdown=30))
        app.state.request_exit = lambda: setattr(server, "should_exit", True)
        server.run()
    services = getattr(app.state, "services", None)
    return ENGINE_FAILED_EXIT_CODE if services is not None and services.engine_failed else 0


def main() -> None:
    logging.basicConfig(level=logging.INFO, handlers=[log_handler()])
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: turn it into an
    # exception so that the embedded Redis is stopped too, and exit with the conventional 128 + signal.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        code = serve(Settings())
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    sys.exit(code)


if __name__ == "__main__":
    main()
