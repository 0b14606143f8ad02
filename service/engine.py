"""The vLLM engine the service decodes with: started once, watched, shut down with the service."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from hatllm.core.fusion import ItemPrior
from hatllm.core.item_codes import ItemCodes
from hatllm.core.search import SearchResult
from hatllm.core.trie import TrieView
from model_patch.engine_topk import EngineTopK, RequestAborted, default_kv_tails, engine_args, start_engine

from .settings import Settings

log = logging.getLogger(__name__)


def cpu_bind(setting: str) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for a setting. 'all': on a small machine the engine's steps, not the
    frontend, are the bottleneck: both cores raised top-K throughput 1.3-1.4x on 2 cores (docs/topk_decoding.md)."""
    if setting != "all":
        return setting
    cpus = sorted(os.sched_getaffinity(0))
    return f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else "auto"


class EngineFailed(RuntimeError):
    """A search the engine could not answer: its core died or is stopping."""


class Engine:
    """The service's one seam to vLLM: `start`, `search`, `ready`, `shutdown`."""

    def __init__(self, settings: Settings, item_codes: ItemCodes | None):
        """`item_codes`: the model's, as the catalog already loaded them (they decide the tail store's default)."""
        self.settings, self.item_codes = settings, item_codes
        self.llm: AsyncLLM | None = None
        self.topk: EngineTopK | None = None
        self.name = Path(settings.model_path).name

    def start(self) -> None:
        """Blocking (~30 s on CPU): the service is not ready before it returns."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(self.settings.engine_cpu_bind))
        s = self.settings
        kv_tails = default_kv_tails(self.item_codes) if s.kv_tails is None else s.kv_tails
        args = engine_args(s.model_path, kv_tails=kv_tails, dtype=s.dtype, max_model_len=s.max_model_len,
                           max_num_seqs=s.max_num_seqs,
                           max_num_batched_tokens=s.max_num_batched_tokens, enforce_eager=s.enforce_eager,
                           block_size=s.kv_block_size, disable_log_stats=not s.engine_log_stats,
                           distributed_executor_backend="uni" if s.engine_worker_in_process else None)
        self.llm = start_engine(args)
        self.topk = EngineTopK(self.llm)

    async def search(self, prompt: list[int], view: TrieView, num_items: int, beam_width: int | None,
                     prior: ItemPrior | None) -> SearchResult:
        if self.topk is None:
            raise RuntimeError("the engine is not started")
        try:
            return await self.topk.search(prompt, view, num_items, beam_width, prior)
        except (EngineDeadError, RequestAborted) as exc:
            raise EngineFailed(str(exc)) from exc

    @property
    def started(self) -> bool:
        return self.llm is not None

    @property
    def ready(self) -> bool:
        return self.llm is not None and not self.llm.errored

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = self.topk = None
