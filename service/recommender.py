"""One recommendation: request -> history -> prompt -> engine -> items -> response.

Admission: a bound on the recommendations under way at once (the engine batches their decoding), at
most `max_in_flight` and lower while the engine's latency says requests are queueing (`AdmissionLimit`);
one more is refused at once with 429, before it costs a Redis call, rather than queued without bound,
and one that runs past `request_timeout_s` is abandoned (its engine requests aborted) with 503.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from itertools import islice

from hatllm.core.fusion import ItemPrior
from hatllm.sasrec import SASRecRanker

from . import metrics
from .admission import AdmissionLimit
from .catalog import CatalogCache, CatalogSnapshot
from .engine import Engine, EngineFailed
from .errors import ServiceError, catalog_unavailable, unknown_items
from .schemas import RecommendedItem, RecommendRequest, RecommendResponse
from .settings import Settings
from .store import Store


@contextmanager
def stage(name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


class Recommender:
    def __init__(self, settings: Settings, store: Store, catalog: CatalogCache, engine: Engine,
                 fusion: tuple[SASRecRanker, float] | None = None):
        """`fusion`: the SASRec prior and its weight fused into the search (`hatllm.core.fusion`), or None."""
        self.settings, self.store, self.catalog, self.engine = settings, store, catalog, engine
        self.prior, self.fusion_weight = fusion or (None, 0.0)
        self.pipeline = "llm+sasrec" if self.prior is not None else "llm"
        self.admission = AdmissionLimit(settings.max_in_flight, settings.admission_tolerance,
                                        settings.admission_slack_ms / 1000)

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        if req.k > self.settings.max_k:
            raise ServiceError(422, "k_too_large", f"k must be at most {self.settings.max_k}")
        with self._admitted():
            return await self._recommend(req)

    @contextmanager
    def _admitted(self):
        """Refuse at once (429), before any Redis call or catalog work, when the admission bound is reached:
        under overload a refusal must cost next to nothing, or refusing slows the admitted."""
        if not self.admission.admit():
            metrics.SHED.labels("queue_full").inc()
            raise ServiceError(429, "overloaded", "too many recommendations in progress",
                               retry_after=self.settings.retry_after_s)
        try:
            yield
        finally:
            self.admission.release()

    async def _recommend(self, req: RecommendRequest) -> RecommendResponse:
        snapshot = self.catalog.current
        if snapshot is None:
            raise catalog_unavailable(self.settings.retry_after_s)
        with stage("redis"):
            history = await self._history(req, snapshot)
        deny = set(req.filters.deny) if req.filters else set()
        if req.exclude_seen:
            deny |= set(history)
        allow = req.filters.allow if req.filters and req.filters.allow is not None else None
        if not history:
            return self._cold_start(req, snapshot, allow, deny)
        if not self.engine.ready:
            raise ServiceError(503, "engine_unavailable", "the model engine is not running",
                               retry_after=self.settings.retry_after_s)
        recent = history[-self.settings.max_history:]  # the prompt's items; exclusion covers all of history
        with stage("prompt"):
            prompt = snapshot.model.prompt(recent)
            if len(prompt) + snapshot.trie.longest_path > self.settings.max_model_len:
                raise ServiceError(422, "history_too_long", f"the prompt ({len(prompt)} tokens) leaves no room for a "
                                                            f"title within max_model_len={self.settings.max_model_len}")
            view = snapshot.trie.view(allow=allow, deny=deny)
        prior = None
        if self.prior is not None:
            with stage("prior"):
                log_probs = (await asyncio.to_thread(self.prior.log_probs_batch, [tuple(recent)]))[0]
                prior = ItemPrior(view, log_probs, self.fusion_weight)
        with stage("decode"), self.admission.timed():
            result = await self._decode(prompt, view, req.k, prior)
        metrics.ENGINE_STEPS.observe(result.model_steps)
        return self._response(req, snapshot, result.items, len(recent), "model", self.pipeline)

    async def _history(self, req: RecommendRequest, snapshot: CatalogSnapshot) -> list[str]:
        if req.history is not None:
            unknown = [i for i in req.history if i not in snapshot.titles]
            if unknown:
                raise unknown_items(unknown, "history")
            return list(req.history)
        stored = await self.store.history(req.user_id, self.settings.history_cap)  # all of it: exclude_seen covers every stored item
        return [i for i in stored if i in snapshot.titles]  # items removed from the catalog since

    def _cold_start(self, req, snapshot: CatalogSnapshot, allow, deny) -> RecommendResponse:
        metrics.COLD_START.inc()
        allowed = set(allow) if allow is not None else None
        picked = list(islice((i for i in snapshot.most_popular() if i not in deny and (allowed is None or i in allowed)), req.k))
        return self._response(req, snapshot, [(i, None) for i in picked], 0, "cold_start_popular", "popular")

    def _response(self, req: RecommendRequest, snapshot: CatalogSnapshot, ranked: list[tuple[str, float | None]],
                  history_length: int, strategy: str, pipeline: str) -> RecommendResponse:
        items = [RecommendedItem(rank=r, item_id=item, title=snapshot.titles[item], score=score)
                 for r, (item, score) in enumerate(ranked, 1)]
        return RecommendResponse(user_id=req.user_id, items=items, model=self.engine.name,
                                 catalog_version=snapshot.version, history_length=history_length,
                                 strategy=strategy, exhausted=len(items) < req.k, pipeline=pipeline)

    async def _decode(self, prompt: list[int], view, k: int, prior: ItemPrior | None):
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self.engine.search(prompt, view, k, max(self.settings.beam_width or k, k), prior)
        except TimeoutError:
            metrics.SHED.labels("timeout").inc()
            raise ServiceError(503, "timeout", f"no answer within {self.settings.request_timeout_s} s",
                               retry_after=self.settings.retry_after_s) from None
        except Exception as exc:
            if isinstance(exc, EngineFailed) or not self.engine.ready:  # an engine stopping may abort, then die
                raise ServiceError(503, "engine_unavailable", "the model engine failed",
                                   retry_after=self.settings.retry_after_s) from exc
            raise
