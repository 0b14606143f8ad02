"""Batch-1 decode speed, patched vs stock vLLM: a direct check of engine_overhead.py's decode column.

    python -m benchmarks.long_decode --model models/ml-latest-small-hat --dtype bfloat16 --repeats 2
    python -m benchmarks.long_decode --model 4x --dtype bfloat16 --repeats 2   # engine_overhead's larger model

engine_overhead.py derives decode throughput from a 64-token generation minus a separately timed
prefill, which is noisy at batch 1; here one request generates 400 tokens after a 240-token prompt, so
the prefill is a few percent of the time. Engines alternate, each in its own process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.engine_overhead import in_own_process, larger_model, start_llm

TOKENS = 400


def run(model: str, dtype: str, stock: bool, queue) -> None:
    from vllm import SamplingParams

    llm = start_llm(model, dtype, stock)
    prompt = {"prompt_token_ids": list(range(10, 250))}
    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    llm.generate([prompt], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    llm.generate([prompt], params, use_tqdm=False)
    queue.put(TOKENS / (time.perf_counter() - started))
    llm.llm_engine.engine_core.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/ml-latest-small-hat", help="a checkpoint, or 4x: the default one "
                                                                           "made 4x larger (random weights)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = args.model
    if model == "4x":
        model = str(larger_model(Path("models/ml-latest-small-hat"), Path(tempfile.mkdtemp()) / "larger"))
    speeds = {"patched": [], "stock": []}
    for _ in range(args.repeats):
        for name in speeds:
            speeds[name].append(in_own_process(run, model, args.dtype, name == "stock"))
    patched, stock = statistics.median(speeds["patched"]), statistics.median(speeds["stock"])
    print(f"{args.model} {args.dtype}: decode tok/s patched {patched:.1f} / stock {stock:.1f} "
          f"(runs {speeds}), overhead {stock / patched - 1:+.0%}")


if __name__ == "__main__":
    main()
