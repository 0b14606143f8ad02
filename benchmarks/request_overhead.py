"""What one engine request costs by its shape: where a scoring round's time goes at concurrency 1.

    python -m benchmarks.request_overhead                    # default model and dataset
    python -m benchmarks.request_overhead --model runs/ml-1m/student --data ../shared/datasets/ml-1m

One patched vLLM engine, as served (fp32, worker in the engine-core process, both cores). Each test-split
prompt (20 history items, seen excluded as served) is prefilled once, then every request shape runs
on it in turn, the order rotating per prompt so that the machine's drift falls on every shape alike:
  plain                  the cached prompt, one token, nothing else
  logprobs               + the top `k` log-probabilities
  root                   + the trie root's children allowed (every live code: the first round of every
                         recommendation), packed for `model_patch.trie_mask`, as `EngineTopK` sends it
  root, vLLM list        the same as vLLM's own `allowed_token_ids`
  root, vLLM deep-copied the same with vLLM's deep copy of the sampling parameters (`skip_clone=False`,
                         vLLM's default, which `EngineTopK` turns off)
  root fused             root + a fusion bias per allowed token, packed
  root fused, vLLM dict  the same as vLLM's `allowed_token_ids` and `logit_bias`
  10 beams               ten requests at once, the prompt plus one root token each, 50 allowed tokens: a
                         later round of a search with beam width 10
Reports each shape's median and p90 round-trip time. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from hatllm.core.catalog import ModelCatalog
from hatllm.core.trie import ROOT
from hatllm.data import leave_one_out, load_dataset
from model_patch.engine_topk import engine_args, start_engine
from model_patch.trie_mask import trie_mask_args
from service.engine import cpu_bind

REPO = Path(__file__).resolve().parents[1]
HISTORY = 20  # the service's default max_history


def params(k: int | None, skip_clone: bool = True, **constraint) -> SamplingParams:
    return SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False,
                          output_kind=RequestOutputKind.FINAL_ONLY, skip_clone=skip_clone, **constraint)


def packed(allowed: list[int], bias: list[float] | None = None) -> dict:
    return {"extra_args": trie_mask_args(allowed, bias)}


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, 50)
    catalog = ModelCatalog.for_checkpoint(args.model, dataset.catalog.titles, split.popularity())
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind("all"))
    engine = start_engine(engine_args(args.model, dtype="float32", max_model_len=2048, block_size=16, enforce_eager=True,
                                      distributed_executor_backend="uni", disable_log_stats=True))
    request_ids = iter(range(1 << 62))
    rng = random.Random(0)

    async def send(prompt: list[int], sampling: SamplingParams) -> None:
        async for _ in engine.generate({"prompt_token_ids": prompt}, sampling, f"r{next(request_ids)}"):
            pass

    def shapes(prompt: list[int], root: list[int]):
        k = args.k
        bias = [-rng.uniform(0, 10) for _ in root]
        yield "plain", lambda: send(prompt, params(None))
        yield "logprobs", lambda: send(prompt, params(k))
        yield "root", lambda: send(prompt, params(k, **packed(root)))
        yield "root, vLLM list", lambda: send(prompt, params(k, allowed_token_ids=root))
        yield "root, vLLM deep-copied", lambda: send(prompt, params(k, skip_clone=False, allowed_token_ids=root))
        yield "root fused", lambda: send(prompt, params(k, **packed(root, bias)))
        yield "root fused, vLLM dict", lambda: send(prompt, params(k, allowed_token_ids=root, logit_bias=dict(zip(root, bias))))
        yield "10 beams", lambda: asyncio.gather(*(send(prompt + [token], params(k, **packed(root[:50]))) for token in root[:10]))

    times: dict[str, list[float]] = {}
    try:
        for n, example in enumerate(split.test[: args.prompts]):
            prompt = catalog.prompt(list(example.history)[-HISTORY:])
            root = catalog.trie.view(deny=sorted(example.seen)).allowed(ROOT)[0].tolist()
            await send(prompt, params(None))  # prefilled, so every shape below finds it cached
            order = list(shapes(prompt, root))
            for name, run in order[n % len(order):] + order[: n % len(order)]:
                started = time.perf_counter()
                await run()
                times.setdefault(name, []).append(1000 * (time.perf_counter() - started))
    finally:
        engine.shutdown()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "ml-latest-small-hat"))
    p.add_argument("--data", default=str(REPO / "data" / "ml-latest-small"))
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    times = asyncio.run(measure(args))
    warm = 10  # the first prompts warm the engine's allocations
    print("| request shape | requests | median ms | p90 ms |\n|---|---|---|---|")
    for name, ms in times.items():
        ms = sorted(ms[warm:])
        print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {ms[int(0.9 * (len(ms) - 1))]:.1f} |")


if __name__ == "__main__":
    main()
