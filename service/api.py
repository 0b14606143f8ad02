"""The HTTP app: the routes (`service.routes`) over the services a lifespan builds (`service.services`).

    uvicorn service.api:app        # settings from the environment; see `python -m service` for the main job
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import metrics
from .errors import install_error_handlers
from .limits import BodySizeLimit
from .request_ids import add_request_ids
from .routes import ROUTERS
from .schemas import ErrorBody
from .services import Services
from .settings import Settings

ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 404, 422, 429, 503)}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.redis_url is None:
        raise ValueError("REDIS_URL is not set (python -m service starts an embedded Redis for you)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = Services(settings, getattr(app.state, "request_exit", None))
        app.state.services = services
        await services.start()
        yield
        await services.stop()

    app = FastAPI(title="HatLLM recommendations", version="0.1.0", lifespan=lifespan, responses=ERRORS)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.middleware("http")(metrics.record_request)
    add_request_ids(app)
    install_error_handlers(app, settings.retry_after_s)
    for router in ROUTERS:
        app.include_router(router)
    return app


@functools.cache
def default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str):
    # `uvicorn service.api:app`: built on first access (not at import), from the environment's settings.
    if name == "app":
        return default_app()
    raise AttributeError(name)
