"""Prefix caching for the partial last KV block: a vLLM KV connector that keeps prompts' block tails.

vLLM's prefix cache keeps full blocks only. A top-K search sends every beam as a new request, the prompt
plus the beam's tokens; each of them found the prompt's full blocks cached but recomputed the prompt's
last, partial block (on average half a block) before its own one or two new tokens. This connector
closes that gap through vLLM's own KV-connector interface (registered by the plugin as
``HatKVTailConnector``, enabled with ``kv_transfer_config``):

- **save**: when a request's prompt finishes prefilling and does not end on a block boundary, its last
  block is copied (whole, all layers, so the cache layout does not matter) into a tail store of
  ``max_tails`` blocks, keyed by the hash of the block before it and the tail's tokens;
- **load**: a new request whose cached full blocks end where a stored tail starts, and whose next tokens
  are that tail's, gets those tokens as an external hit: vLLM allocates its block and the tail is copied
  into it before the step's forward, so the request computes only the tokens after the tail.

The key is exact (vLLM's block hash covers every earlier token, the LoRA and the cache salt; the tail's
tokens are compared one by one), so a hit is the KV the request would have computed itself. HatLLM's
per-slot item state (``segments.SegmentTracker``) travels with the block. The store is least recently
used; a miss only costs the recompute vLLM would have done anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.config import KVTransferConfig, get_layers_from_vllm_config
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.model_executor.layers.attention import Attention

from model_patch.cpu_attention import HatCPUAttentionImpl

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

CONNECTOR_NAME = "HatKVTailConnector"
DEFAULT_MAX_TAILS = 1024


def kv_tail_transfer_config(max_tails: int = DEFAULT_MAX_TAILS) -> KVTransferConfig:
    """The engine's ``kv_transfer_config`` that turns the tail store on (``--kv-transfer-config`` takes it as JSON)."""
    return KVTransferConfig(kv_connector=CONNECTOR_NAME, kv_role="kv_both",
                            kv_connector_extra_config={"max_tails": max_tails})


@dataclass
class KVTailMetadata(KVConnectorMetadata):
    """One step's copies: tails into requests' new blocks (before the forward), blocks into the store (after)."""

    loads: list[tuple[int, int]] = field(default_factory=list)  # (store index, block id)
    saves: list[tuple[int, int]] = field(default_factory=list)  # (store index, block id)


class KVTailConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.block_size = vllm_config.cache_config.block_size
        # Prefix-cache hashes may be finer than blocks (`prefix_match_unit`): the key takes the one ending
        # exactly at the block boundary.
        self.hash_unit = getattr(kv_cache_config, "hash_block_size", None) or self.block_size
        self.max_tails = int(self._kv_transfer_config.get_from_extra_config("max_tails", DEFAULT_MAX_TAILS))
        if self.max_tails < 1:
            raise ValueError(f"{CONNECTOR_NAME}: max_tails must be >= 1, got {self.max_tails}")
        # Scheduler side: which tail sits at which store index, least recently used first.
        self._index: OrderedDict[tuple, int] = OrderedDict()
        self._requests: dict[str, Request] = {}
        self._matches: dict[str, tuple[int, int]] = {}  # request id -> (store index, block-aligned hit)
        self._meta = KVTailMetadata()
        # Worker side: the store, per layer, and HatLLM's per-slot item state.
        self._layers: dict[str, torch.Tensor] = {}
        self._store: dict[str, torch.Tensor] = {}
        self._trackers: list | None = None
        self._tracker_store: torch.Tensor | None = None

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a later miss

    # ---- scheduler side ----

    def _key(self, request: Request, aligned: int, end: int) -> tuple:
        return request.block_hashes[aligned // self.hash_unit - 1], tuple(request.all_token_ids[aligned:end])

    def _hashed(self, request: Request, aligned: int) -> bool:
        return 0 < aligned and aligned // self.hash_unit <= len(request.block_hashes)

    def on_new_request(self, request: Request) -> None:
        self._requests[request.request_id] = request

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int, bool]:
        aligned = num_computed_tokens
        # At least one token must stay to be computed (vLLM samples from the last computed one).
        last = min(aligned + self.block_size - 1, request.num_tokens - 1)
        if not self._hashed(request, aligned) or last <= aligned:
            return 0, False
        for end in range(last, aligned, -1):
            key = self._key(request, aligned, end)
            index = self._index.get(key)
            if index is not None:
                self._index.move_to_end(key)
                self._matches[request.request_id] = (index, aligned)
                return end - aligned, False
        return 0, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        match = self._matches.pop(request.request_id, None)
        if num_external_tokens == 0 or match is None:
            return
        index, aligned = match
        self._meta.loads.append((index, blocks.get_block_ids()[0][aligned // self.block_size]))

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        for req_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self._requests.get(req_id)
            if request is None:
                continue
            done = request.num_computed_tokens
            if done < request.num_prompt_tokens <= done + num_tokens:  # the prompt's prefill ends this step
                self._save_tail(request)
        meta, self._meta = self._meta, KVTailMetadata()
        return meta

    def _save_tail(self, request: Request) -> None:
        length = request.num_prompt_tokens
        aligned = length - length % self.block_size
        if aligned == length or not self._hashed(request, aligned):
            return
        key = self._key(request, aligned, length)
        if key in self._index:
            self._index.move_to_end(key)
            return
        index = len(self._index) if len(self._index) < self.max_tails else self._index.popitem(last=False)[1]
        self._index[key] = index
        block_id = self._kv_cache_manager.get_block_ids(request.request_id)[0][aligned // self.block_size]
        self._meta.saves.append((index, block_id))

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._requests.pop(request.request_id, None)
        self._matches.pop(request.request_id, None)
        return False, None

    def reset_cache(self) -> bool:
        self._index.clear()
        self._matches.clear()
        return True

    # ---- worker side ----

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        # vLLM's layouts put the block first (LBHNC): a whole block is kv_cache[block_id].
        self._layers = kv_caches
        self._store = {name: torch.empty((self.max_tails, *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
                       for name, kv in kv_caches.items()}

    def _hat_trackers(self) -> list:
        if self._trackers is None:
            layers = get_layers_from_vllm_config(self._vllm_config, Attention)
            trackers = {id(layer.impl.tracker): layer.impl.tracker for layer in layers.values()
                        if isinstance(layer.impl, HatCPUAttentionImpl)}
            self._trackers = list(trackers.values())
            if self._trackers:
                shape = (len(self._trackers), self.max_tails, self.block_size, 2)
                self._tracker_store = torch.empty(shape, dtype=torch.int32)
        return self._trackers

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        self._copy(self._get_connector_metadata().loads, into_cache=True)

    def wait_for_save(self) -> None:
        self._copy(self._get_connector_metadata().saves, into_cache=False)

    def _copy(self, pairs: list[tuple[int, int]], into_cache: bool) -> None:
        """Whole blocks between the store and the cache, every layer, with their slots' HatLLM item state."""
        if not pairs:
            return
        indexes = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        blocks = torch.tensor([b for _, b in pairs], dtype=torch.long)
        slots = (blocks[:, None] * self.block_size + torch.arange(self.block_size)).reshape(-1)
        for name, kv in self._layers.items():
            if into_cache:
                kv.index_copy_(0, blocks, self._store[name].index_select(0, indexes))
            else:
                self._store[name].index_copy_(0, indexes, kv.index_select(0, blocks))
        for t, tracker in enumerate(self._hat_trackers()):
            if into_cache:
                tracker.set_slot_state(slots, self._tracker_store[t].index_select(0, indexes).reshape(-1, 2))
            else:
                state = tracker.slot_state(slots).reshape(-1, self.block_size, 2)
                self._tracker_store[t].index_copy_(0, indexes, state)

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass  # loads are synchronous, done before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        pass  # saves happen once per step, in wait_for_save
