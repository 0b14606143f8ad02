"""Catalog-constrained top-K on the (patched) vLLM engine: `hatllm.core.search` driven by vLLM requests.

Each scoring round of a search sends every active beam to the engine as one request of one token:
the prompt plus the beam's tokens, the trie's live children at the beam's node as its allowed tokens
(with their fusion biases, if any; packed for `model_patch.trie_mask`, the engine's logits processor),
and `logprobs = beam_width`. The engine runs with `logprobs_mode="processed_logprobs"`, so the returned
log-probabilities are taken after the mask, i.e. renormalised over the allowed tokens exactly as the
reference search does.

Why this is fast on vLLM 0.32 although each beam step is a new request:
- the tokens the trie forces cost no request at all (`TrieBeamSearch` appends them);
- automatic prefix caching keeps the prompt (and every beam's earlier tokens) prefilled in full KV blocks,
  and the tail store (`model_patch.kv_tail`, a vLLM KV connector) keeps each request's partial last
  block: a beam request computes only its new tokens;
- all beams of a round, and the rounds of all concurrent searches, are submitted together, so the engine
  batches them into the same steps; the engine's scheduler holds a round until all of its requests are
  in (`model_patch.round_scheduler`), so a round is one engine step, not one for its first request and
  another for the rest;
- a request carries only what the sampler needs (no detokenization, final output only), its allowed
  tokens and biases as packed arrays, and its sampling parameters are not deep-copied by vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs.engine import TokensInput, tokens_input
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from hatllm.core.fusion import ItemPrior
from hatllm.core.item_codes import ItemCodes
from hatllm.core.search import MAX_BEAM_WIDTH, Beam, SearchResult, TrieBeamSearch
from hatllm.core.trie import TrieView
from model_patch.kernels import hat_attention_ops
from model_patch.kv_tail import DEFAULT_MAX_TAILS, kv_tail_transfer_config
from model_patch.round_scheduler import SCHEDULER, round_args
from model_patch.trie_mask import PROCESSOR, trie_mask_args

# Engine settings the search depends on; everything else (dtype, KV cache, parallelism) is the caller's.
REQUIRED_ENGINE_ARGS = dict(
    logprobs_mode="processed_logprobs",
    max_logprobs=MAX_BEAM_WIDTH,
    enable_prefix_caching=True,
    logits_processors=[PROCESSOR],
    scheduler_cls=SCHEDULER,
)


def default_kv_tails(codes: ItemCodes | None) -> int:
    """The tail store's size for a model with item `codes` (None: titles only): none where every search is one
    request (one-token item codes), since then no beam extends a prompt, the store never hits, and keeping
    tails costs ~5% (docs/topk_decoding.md)."""
    return 0 if codes is not None and codes.depth == 1 else DEFAULT_MAX_TAILS


def engine_args(model: str, kv_tails: int | None = None, **overrides: Any) -> AsyncEngineArgs:
    """Engine arguments for top-K serving of `model` (any HatLLM or plain checkpoint vLLM can load).

    `kv_tails` > 0 keeps that many prompts' partial last KV blocks for the beams that extend them
    (`model_patch.kv_tail`); 0 leaves vLLM's full-block prefix caching alone; None: `default_kv_tails`.
    """
    conflicts = {k: v for k, v in overrides.items() if k in REQUIRED_ENGINE_ARGS and v != REQUIRED_ENGINE_ARGS[k]}
    if conflicts:
        raise ValueError(f"constrained top-K needs the engine settings {REQUIRED_ENGINE_ARGS}, got {conflicts}")
    if kv_tails is None:
        kv_tails = default_kv_tails(ItemCodes.load(model))
    if kv_tails:
        overrides["kv_transfer_config"] = kv_tail_transfer_config(kv_tails)
    return AsyncEngineArgs(model=model, **{**overrides, **REQUIRED_ENGINE_ARGS})


def start_engine(args: AsyncEngineArgs) -> AsyncLLM:
    """An `AsyncLLM` for `args`.

    With `distributed_executor_backend="uni"` the model worker runs inside the engine-core process, as vLLM
    does for one GPU; on CPU that saves the hop to a separate worker process, whose waiting engine core spins
    on a core the worker's threads need (+20-30% top-K throughput at low concurrency on 2 cores,
    docs/topk_decoding.md). vLLM's CPU platform turns "uni" into "mp" while it builds the config (unless
    multiprocessing is off process-wide); the executor is chosen from the finished config, so asking for
    "uni" again there is enough. AsyncLLM runs its engine core in its own process either way.
    """
    hat_attention_ops()  # built (or loaded) here, before the engine: no request ever waits for a compile
    config = args.create_engine_config()
    if args.distributed_executor_backend == "uni":
        config.parallel_config.distributed_executor_backend = "uni"
    return AsyncLLM.from_vllm_config(config, enable_log_requests=args.enable_log_requests,
                                     disable_log_stats=args.disable_log_stats)


@contextmanager
def output_batches(engine: AsyncLLM) -> Iterator[list[int]]:
    """The sizes of the engine's output batches while the block runs, one per engine step that had outputs:
    how the tests and benchmarks see whether a round took one step (an instance attribute over the output
    processor's method: counts, then calls it)."""
    processor = engine.output_processor
    process_outputs = processor.process_outputs
    batches: list[int] = []

    def counted(outputs, *args, **kwargs):
        if outputs:
            batches.append(len(outputs))
        return process_outputs(outputs, *args, **kwargs)

    processor.process_outputs = counted
    try:
        yield batches
    finally:
        del processor.process_outputs


class RequestAborted(RuntimeError):
    """The engine ended a request of a search without scoring it: its core stopping, or an abort."""


class EngineTopK:
    """Runs constrained beam searches on an `AsyncLLM`; safe to call from many tasks at once."""

    def __init__(self, engine: AsyncLLM):
        self.engine = engine
        self.vocab_size = engine.model_config.get_vocab_size()
        self._ids = itertools.count()
        self._rounds = itertools.count()

    async def search(self, prompt: list[int], view: TrieView, num_items: int, beam_width: int | None = None,
                     prior: ItemPrior | None = None) -> SearchResult:
        search = TrieBeamSearch(view, num_items, beam_width, prior)
        while not search.done:
            # Every request of the round is built (and checked) before the first is sent: the engine holds
            # a round until all of it is in (`model_patch.round_scheduler`).
            round_tag = round_args(f"r{next(self._rounds)}", len(search.active)) if len(search.active) > 1 else {}
            requests = [self._request(prompt, beam, search, round_tag) for beam in search.active]
            search.advance(await self._score_round(requests))
        return search.result()

    def _request(self, prompt: list[int], beam: Beam, search: TrieBeamSearch, round_tag: dict) -> tuple[TokensInput, SamplingParams]:
        allowed = search.allowed_tokens(beam)
        if allowed.max() >= self.vocab_size:  # checked here: in the engine's logits processor it would stop the engine
            raise ValueError(f"the catalog's tokens reach {allowed.max()}, beyond the model's vocabulary of {self.vocab_size}: "
                             "is the tokenizer the checkpoint's?")
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=search.beam_width,
            extra_args=trie_mask_args(allowed, search.logit_bias(beam)) | round_tag,
            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY,
            skip_clone=True,  # built per request and never reused: vLLM's deep copy of it costs 1-3 ms a request
        )
        # A rendered input is processed on the event loop, not in vLLM's tokenizer thread: the round's
        # requests leave together.
        return tokens_input(prompt + list(beam.tokens)), params

    async def _score_round(self, requests: list[tuple[TokensInput, SamplingParams]]) -> list[dict[int, float]]:
        tasks = [asyncio.ensure_future(self._score(*request)) for request in requests]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:  # one request failed: abort the rest, so that the engine does not hold their round
            for task in tasks:
                task.cancel()
            raise

    async def _score(self, prompt: TokensInput, params: SamplingParams) -> dict[int, float]:
        final = None
        request_id = f"topk-{next(self._ids)}"
        async for output in self.engine.generate(prompt, params, request_id):
            final = output
        if final is None or not final.outputs[0].logprobs:  # an engine core that stops aborts what it holds
            reason = final.outputs[0].finish_reason if final is not None else "no output"
            raise RequestAborted(f"the engine ended {request_id} without scoring it ({reason})")
        # With fewer allowed tokens than `logprobs`, the top list also holds masked tokens (-inf): drop them.
        return {tok: lp.logprob for tok, lp in final.outputs[0].logprobs[0].items() if lp.logprob > -np.inf}
