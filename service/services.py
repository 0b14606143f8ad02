"""What a request needs, built once per process by the app's lifespan: Redis, the store, the catalog,
the engine and the recommender, plus the watchers that keep their state current."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from itertools import islice
from typing import Callable

from transformers import AutoConfig, AutoTokenizer

from hatllm.core.item_codes import ItemCodes
from hatllm.core.prompt import PromptBuilder
from hatllm.sasrec import load_fusion

from . import metrics
from .admission import MIN_BASELINE_SAMPLES
from .api_keys import key_ring
from .background import every
from .catalog import CatalogCache
from .engine import Engine
from .keys import Keys
from .recommender import Recommender
from .schemas import RecommendRequest
from .settings import IN_FLIGHT_PER_CORE, Settings
from .store import STORE_ERRORS, Store, connect

log = logging.getLogger(__name__)
WATCHERS_STOP_S = 5.0  # the longest a shutdown waits for a watcher's round (a Redis call, a warm-up) to end


class Services:
    def __init__(self, settings: Settings, request_exit: Callable[[], None] | None = None):
        try:
            config = AutoConfig.from_pretrained(settings.model_path)
        except OSError as exc:  # transformers' message for a missing folder is about hub repository names
            raise ValueError(f"no model at HATREC_MODEL_PATH={settings.model_path}: a folder with the config.json, "
                             "tokenizer and weights that training writes is expected (`python -m "
                             f"hatllm.training.default_model --retrain` rebuilds the default one; {exc})") from None
        if settings.max_history is None:  # the history length the model was trained with
            settings = settings.model_copy(update={"max_history": getattr(config, "hat_max_history", None) or 20})
        if settings.max_in_flight is None:  # sized for this machine: the engine's steps are the bottleneck
            settings = settings.model_copy(update={"max_in_flight": IN_FLIGHT_PER_CORE * len(os.sched_getaffinity(0))})
        self.settings = settings
        self.keys = key_ring(settings.api_keys, settings.api_keys_file, settings.api_key, settings.host)
        if self.keys.open:
            log.warning("no API keys: every route is open (allowed: the service listens on %s only)", settings.host)
        # How to stop the server when the engine dies: the runner's hook (python -m service exits with
        # code 3), else SIGTERM to this process (uvicorn shuts down gracefully, then dies by the signal).
        self.request_exit = request_exit or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.redis = connect(settings.redis_connection_url(), settings.redis_cluster, decode_responses=True,
                             socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s,
                             health_check_interval=5)
        self.store = Store(self.redis, Keys(settings.redis_prefix), settings.history_cap)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
        self.builder = PromptBuilder.from_model_config(tokenizer, config)
        item_codes = ItemCodes.load(settings.model_path)
        self.catalog = CatalogCache(self.store, self.builder, item_codes)
        self.engine = Engine(settings, item_codes)
        fusion = load_fusion(settings.model_path) if settings.fusion else None
        self.recommender = Recommender(settings, self.store, self.catalog, self.engine, fusion)
        self._watchers: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.engine_failed = False
        self.migrated = self.warmed_up = False
        self.redis_answered = True  # the last health check's answer: a change is logged, not every probe

    async def start(self) -> None:
        self.engine.start()
        preparing = asyncio.create_task(self.prepare())
        interrupted = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([preparing, interrupted], return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not preparing.done():
            log.info("stopping while starting: the warm-up is given up")
            preparing.cancel()
            self._watchers = [preparing]  # stop() waits for it, boundedly, before the engine goes
            return
        if (exc := preparing.exception()) is not None:  # not ready until Redis answers and the warm-up went
            log.warning("not ready at start: %s: %s", type(exc).__name__, exc)  # through; the watcher retries
        self._watchers = [asyncio.create_task(every(self.settings.catalog_poll_s, self.catalog.poll, self._stopping)),
                          asyncio.create_task(every(self.settings.catalog_poll_s, self.check_health, self._stopping)),
                          asyncio.create_task(metrics.watch_event_loop())]

    def interrupt(self) -> None:
        """A stop signal while starting: give up the warm-up instead of waiting it out (Ctrl-C also stops the
        engine core, and vLLM may not fail the request it held before the request's timeout). Called from a
        signal handler, which runs in the loop's thread between two of its steps, maybe inside the engine's
        blocking start: the event is set through the loop's wake-up pipe, so a waiting loop sees it at once."""
        asyncio.get_running_loop().call_soon_threadsafe(self._stopping.set)

    async def prepare(self) -> None:
        """Keys of the older layout renamed (once), the catalog loaded, the engine warmed up."""
        if not self.migrated:
            await self.store.migrate_legacy_keys()
            self.migrated = True
        await self.catalog.refresh()
        await self.warm_up()

    async def warm_up(self) -> None:
        """Recommendations through the engine before /readyz says ready. The first requests on a fresh
        engine set up its kernels, buffers and caches (seconds on CPU): the warm-up pays for that, not a
        user. Two, with different histories, so that the first real request is not the first of its kind; then,
        when the admission bound adapts, a few more, one at a time, give it its first measure of a lone decode."""
        snapshot = self.catalog.current
        if self.warmed_up or snapshot is None or not snapshot.titles:
            return
        started = time.perf_counter()
        log.info("warming up: recommendations through the engine")
        n = self.settings.max_history
        calibration = MIN_BASELINE_SAMPLES if self.settings.admission_tolerance else 0
        popular = list(islice(snapshot.most_popular(), n + calibration))
        histories = [popular[i : i + n] or popular[:n] for i in range(2 + calibration)]
        for i, history in enumerate(histories):
            if i == 2:  # the cold engine's first decodes are no measure of its latency; the rest calibrate it
                self.recommender.admission.forget_latencies()
            request = RecommendRequest(user_id="warm-up", k=min(10, len(popular)), history=history)
            response = await self.recommender.recommend(request)
        self.warmed_up = response.strategy == "model"
        log.info("warm-up recommendations through the engine: %.2f s", time.perf_counter() - started)

    async def checks(self) -> dict[str, bool]:
        """What /readyz reports, also exported as hatrec_dependency_up."""
        try:
            redis_ok = await self.store.ping()
        except STORE_ERRORS as exc:
            if self.redis_answered:
                log.warning("Redis did not answer the health check: %s: %s", type(exc).__name__, exc)
            redis_ok = False
        if redis_ok and not self.redis_answered:
            log.warning("Redis answers the health check again")
        self.redis_answered = redis_ok
        checks = {"redis": redis_ok, "catalog": self.catalog.current is not None, "engine": self.engine.ready,
                  "warmed_up": self.warmed_up}
        for name, ok in checks.items():
            metrics.DEPENDENCY_UP.labels(name).set(int(ok))
        return checks

    async def check_health(self) -> None:
        """One round of the health watcher: notice a dead engine, and finish preparing once everything answers."""
        try:
            checks = await self.checks()
            if not checks["engine"] and self.engine.started and not self.engine_failed:
                self._on_engine_failure()
            elif checks["engine"] and not self.warmed_up:
                await self.prepare()
        except Exception:  # a health check must never stop for good
            log.exception("health check failed")

    def _on_engine_failure(self) -> None:
        """vLLM does not restart a dead engine core: leave it to the supervisor (exit code 3), after a
        grace period in which /readyz is unready, so load balancers stop sending traffic first."""
        self.engine_failed = True
        delay = self.settings.exit_on_engine_failure_s
        log.error("the vLLM engine died%s", f"; exiting in {delay} s" if delay is not None else "")
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self.request_exit)

    async def stop(self) -> None:
        self._stopping.set()  # ends each watcher after its round, also one whose cancellation is lost
        for task in self._watchers:
            task.cancel()
        if self._watchers:  # before the engine and Redis they use go away
            await asyncio.wait(self._watchers, timeout=WATCHERS_STOP_S)
        self.catalog.stop()
        self.engine.shutdown()
        await self.redis.aclose()
