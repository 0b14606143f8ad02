"""Engine searches on a synthetic catalog, one at a time: time, scoring rounds and engine steps each.

    python -m benchmarks.search_rounds --size 1000000        # ~3 minutes (the catalog build is most of it)
    python -m benchmarks.search_rounds --size 10000 --users 300

The catalog is `benchmarks.catalog_scale`'s (ml-latest-small plus synthetic titles up to `--size` items),
built once in this process; the engine is the served one (fp32, worker in the engine core, both cores,
tail store). For `--users` ml-latest-small users (their last 50 items as the prompt, every seen item
excluded, as served): `EngineTopK.search` at k = beam width = 10, timed alone, with its scoring rounds
and the engine steps it took (vLLM's output batches, counted in the frontend; one per round when every
round is one step). Only the search is timed: no HTTP, Redis or prompt building. Prints the medians and
writes every search's figures and items to `--out` (so that two commits' lists can be compared item for
item). Run it on an otherwise idle machine, commits in alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from benchmarks.catalog_scale import BASE_DATA, DEFAULT_MODEL, synthetic_items
from hatllm.core.catalog import ModelCatalog
from hatllm.data import load_dataset
from model_patch.engine_topk import EngineTopK, engine_args, output_batches, start_engine
from service.engine import cpu_bind

HISTORY = 50  # the default model's hat_max_history, as the service uses it


async def measure(args: argparse.Namespace) -> list[dict]:
    dataset = load_dataset(BASE_DATA)
    titles = dict(dataset.catalog.titles)
    titles |= synthetic_items(max(0, args.size - len(titles)))
    catalog = ModelCatalog.for_checkpoint(args.model, titles)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind("all"))
    engine = start_engine(engine_args(args.model, dtype="float32", max_model_len=2048, block_size=16, enforce_eager=True,
                                      distributed_executor_backend="uni", disable_log_stats=True))
    topk = EngineTopK(engine)
    users = sorted(dataset.sequences)
    random.Random(0).shuffle(users)
    rows = []
    try:
        with output_batches(engine) as batches:
            for user in users[: args.users]:
                history = list(dataset.sequences[user])
                prompt, view = catalog.prompt(history[-HISTORY:]), catalog.trie.view(deny=history)
                steps_before, started = len(batches), time.perf_counter()
                result = await topk.search(prompt, view, 10)
                rows.append(dict(user=user, ms=1000 * (time.perf_counter() - started), rounds=result.model_steps,
                                 engine_steps=len(batches) - steps_before, items=[item for item, _ in result.items]))
    finally:
        engine.shutdown()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1_000_000, help="catalog items (ml-latest-small's plus synthetic ones)")
    p.add_argument("--users", type=int, default=150)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--out", type=Path, default=Path("search_rounds.json"))
    args = p.parse_args()
    rows = asyncio.run(measure(args))
    args.out.write_text(json.dumps(rows))
    warm = rows[2:]  # the first searches warm the engine's allocations
    print(f"{args.size:,} items, {len(warm)} searches: p50 {statistics.median(r['ms'] for r in warm):.1f} ms, "
          f"rounds {statistics.mean(r['rounds'] for r in rows):.2f}, engine steps {statistics.mean(r['engine_steps'] for r in rows):.2f} "
          f"per recommendation")


if __name__ == "__main__":
    main()
