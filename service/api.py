"""The HTTP API: typed routes over the recommender, the store and the catalog.

    uvicorn service.api:app        # settings from the environment; see `python -m service` for the main job
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from contextlib import asynccontextmanager
from typing import Annotated, Callable

from fastapi import Depends, FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from transformers import AutoConfig, AutoTokenizer

from hatllm.baselines.sasrec import load_fusion
from hatllm.item_codes import ItemCodes
from hatllm.prompt import PromptBuilder

from . import metrics
from .catalog import CatalogCache
from .engine import Engine
from .errors import ServiceError, catalog_unavailable, error_body, unknown_items
from .keys import Keys
from .limits import BodySizeLimit
from .recommender import Recommender
from .schemas import (CatalogInfo, CatalogItem, CatalogItems, ErrorBody, Event, EventBatch, EventsAccepted,
                      RecommendRequest, RecommendResponse)
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)
ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 422, 429, 503)}


class Services:
    """Everything a request needs, built once per process by the lifespan."""

    def __init__(self, settings: Settings, request_exit: Callable[[], None] | None = None):
        config = AutoConfig.from_pretrained(settings.model_path)
        if settings.max_history is None:  # the history length the model was trained with
            settings = settings.model_copy(update={"max_history": getattr(config, "hat_max_history", None) or 20})
        self.settings = settings
        # How to stop the server when the engine dies: the runner's hook (python -m service exits with
        # code 3), else SIGTERM to this process (uvicorn shuts down gracefully, then dies by the signal).
        self.request_exit = request_exit or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=settings.redis_timeout_s,
                                    socket_connect_timeout=settings.redis_timeout_s, health_check_interval=5)
        self.store = Store(self.redis, Keys(settings.redis_prefix), settings.history_cap)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
        self.builder = PromptBuilder.from_model_config(tokenizer, config)
        self.catalog = CatalogCache(self.store, self.builder, ItemCodes.load(settings.model_path))
        self.engine = Engine(settings)
        fusion = load_fusion(settings.model_path) if settings.fusion else None
        self.recommender = Recommender(settings, self.store, self.catalog, self.engine, fusion)
        self._watchers: list[asyncio.Task] = []
        self.engine_failed = False

    async def start(self) -> None:
        self.engine.start()
        try:
            await self.catalog.refresh()
        except RedisError as exc:  # not ready until Redis answers; the watcher keeps trying
            log.warning("Redis unavailable at start: %s", exc)
        self._watchers = [asyncio.create_task(self.catalog.watch(self.settings.catalog_poll_s)),
                          asyncio.create_task(self.watch_health(self.settings.catalog_poll_s))]

    async def checks(self) -> dict[str, bool]:
        """What /readyz reports, also exported as hatrec_dependency_up."""
        try:
            redis_ok = await self.store.ping()
        except RedisError:
            redis_ok = False
        checks = {"redis": redis_ok, "catalog": self.catalog.current is not None, "engine": self.engine.ready}
        for name, ok in checks.items():
            metrics.DEPENDENCY_UP.labels(name).set(int(ok))
        return checks

    async def watch_health(self, interval_s: float) -> None:
        while True:
            try:
                checks = await self.checks()
                if not checks["engine"] and self.engine.llm is not None and not self.engine_failed:
                    self._on_engine_failure()
            except Exception:  # a metrics refresh must never stop for good
                log.exception("health check failed")
            await asyncio.sleep(interval_s)

    def _on_engine_failure(self) -> None:
        """vLLM does not restart a dead engine core: leave it to the supervisor (exit code 3), after a
        grace period in which /readyz is unready, so load balancers stop sending traffic first."""
        self.engine_failed = True
        delay = self.settings.exit_on_engine_failure_s
        log.error("the vLLM engine died%s", f"; exiting in {delay} s" if delay is not None else "")
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self.request_exit)

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        self.engine.shutdown()
        await self.redis.aclose()

    def check_key(self, key: str | None) -> None:
        expected = self.settings.api_key
        if expected is not None and not (key and secrets.compare_digest(key, expected.get_secret_value())):
            raise ServiceError(401, "unauthorized", "this endpoint needs a valid X-API-Key header")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(services: ServicesDep, key: str | None = Security(APIKeyHeader(name="X-API-Key", auto_error=False))):
    services.check_key(key)


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status, headers=headers)


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

    @app.middleware("http")
    async def observe(request: Request, call_next):
        metrics.IN_FLIGHT.inc()
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.IN_FLIGHT.dec()
            route = request.scope.get("route")
            path = route.path if route is not None else "unmatched"
            metrics.REQUESTS.labels(request.method, path, str(status)).inc()
            metrics.REQUEST_SECONDS.labels(request.method, path).observe(time.perf_counter() - started)

    @app.exception_handler(ServiceError)
    async def service_error(_request, exc: ServiceError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        details = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        return error_response(422, "invalid_request", "the request does not match the API schema", details)

    @app.exception_handler(RedisError)
    async def redis_down(_request, exc: RedisError):
        log.warning("Redis error: %s", exc)
        return error_response(503, "redis_unavailable", "the data store is unavailable",
                              headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "unexpected error (logged)")

    @app.post("/recommend", response_model=RecommendResponse, tags=["recommendations"])
    async def recommend(req: RecommendRequest, services: ServicesDep) -> RecommendResponse:
        """The user's next items, best first. No usable history: most popular items (strategy cold_start_popular)."""
        return await services.recommender.recommend(req)

    @app.post("/events", response_model=EventsAccepted, tags=["events"], dependencies=[Depends(require_api_key)])
    async def ingest_events(body: Event | EventBatch, services: ServicesDep) -> EventsAccepted:
        """Append interactions to histories (one event or `{"events": [...]}`); durable when this returns."""
        events = body.events if isinstance(body, EventBatch) else [body]
        if len(events) > settings.max_events_per_call:
            raise ServiceError(422, "too_many_events", f"at most {settings.max_events_per_call} events per call")
        item_ids = list(dict.fromkeys(e.item_id for e in events))
        titles = await services.store.titles(item_ids)
        unknown = [item for item, title in zip(item_ids, titles) if title is None]
        if unknown:
            raise unknown_items(unknown, "events")
        ordered = sorted(events, key=lambda e: e.timestamp if e.timestamp is not None else float("-inf"))
        accepted = await services.store.append_events((e.user_id, e.item_id) for e in ordered)
        metrics.EVENTS.inc(accepted)
        return EventsAccepted(accepted=accepted)

    @app.get("/catalog", response_model=CatalogInfo, tags=["catalog"])
    async def catalog_info(services: ServicesDep) -> CatalogInfo:
        snapshot = services.catalog.current
        if snapshot is None:
            raise catalog_unavailable(settings.retry_after_s)
        return CatalogInfo(version=snapshot.version, size=len(snapshot.titles))

    async def stored_title(services: Services, item_id: str) -> str:
        (title,) = await services.store.titles([item_id])
        if title is None:
            raise ServiceError(404, "item_not_found", f"no item {item_id!r} in the catalog")
        return title

    @app.get("/catalog/items/{item_id}", response_model=CatalogItem, tags=["catalog"])
    async def catalog_item(item_id: str, services: ServicesDep) -> CatalogItem:
        return CatalogItem(item_id=item_id, title=await stored_title(services, item_id))

    @app.put("/admin/catalog/items", response_model=CatalogInfo, tags=["admin"], dependencies=[Depends(require_api_key)])
    async def put_items(body: CatalogItems, services: ServicesDep) -> CatalogInfo:
        """Add or retitle items. The next recommendation decodes against the new catalog version."""
        titles = {item.item_id: item.title for item in body.items}
        bad = {}
        for item_id, title in titles.items():
            try:
                services.builder.title_tokens(title)
            except ValueError as exc:
                bad[item_id] = str(exc)
        if bad:
            raise ServiceError(422, "invalid_titles", "some titles cannot be decoded", details=bad)
        await services.store.put_items(titles)
        return await _refreshed(services)

    @app.delete("/admin/catalog/items/{item_id}", response_model=CatalogInfo, tags=["admin"],
                dependencies=[Depends(require_api_key)])
    async def remove_item(item_id: str, services: ServicesDep) -> CatalogInfo:
        await stored_title(services, item_id)
        await services.store.remove_items([item_id])
        return await _refreshed(services)

    async def _refreshed(services: Services) -> CatalogInfo:
        snapshot = await services.catalog.refresh()
        return CatalogInfo(version=snapshot.version, size=len(snapshot.titles))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(services: ServicesDep):
        """Redis reachable, catalog loaded, engine running."""
        checks = await services.checks()
        if all(checks.values()):
            return {"ready": True, "checks": checks}
        return JSONResponse({"ready": False, "checks": checks}, 503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def __getattr__(name: str):
    # `uvicorn service.api:app`: the app is built on first access, from the environment's settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
