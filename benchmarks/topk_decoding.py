"""Catalog-constrained top-K: this project's engine search against the ways people usually do it.

    python -m benchmarks.topk_decoding                      # all methods, writes docs/results/topk_decoding.*
    python -m benchmarks.topk_decoding --requests 16 --concurrency 1 8

Methods, on the same prompts (test-split users of the default dataset), K=10, whole catalog (no
exclusions: (b) and (c) have no per-request trie, so every method ranks the same candidate set):
  engine    (a) `model_patch.engine_topk` on the patched vLLM AsyncLLM
  vllm_beam (b) vLLM's `LLM.beam_search` with a trie logits processor (renormalised scores not possible)
  hf_beam   (c) HF `generate(num_beams=K, prefix_allowed_tokens_fn=trie)` (BIGRec/D3 style), one
                request at a time: HF has no request concurrency, and batching HatLLM prompts would need
                pad-aware item masks the reference model does not have
  floor     (d) one prefill plus a greedy decode of a single title (stops at the close delimiter)
Each method runs in its own process (one engine alive at a time); concurrency c means c requests in
flight (for vllm_beam: c prompts per `beam_search` call). The prefix cache is reset between runs so
no run reuses another's prompts. Reports latency p50/p99, recommendations per second, engine steps per
request (engine), and overlap@K of the lists of (a), (b), (c) (as sets of titles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

DEFAULT_MODEL = "models/ml-latest-small-hat"
DEFAULT_DATA = "data/ml-latest-small"
K = 10
ENGINE_KWARGS = dict(max_model_len=1024, enforce_eager=True, seed=0, max_num_seqs=512,
                     max_num_batched_tokens=8192)


def load_setup(model: str, data: str, num_prompts: int):
    """Prompts of `num_prompts` seeded test users, the catalog trie and the prompt builder."""
    import random

    from transformers import AutoConfig

    from hatllm.core.catalog import ModelCatalog
    from hatllm.data import leave_one_out, load_dataset

    dataset = load_dataset(data)
    split = leave_one_out(dataset, getattr(AutoConfig.from_pretrained(model), "hat_max_history", 20))
    catalog = ModelCatalog.for_checkpoint(model, dataset.catalog.titles, split.popularity())
    users = random.Random(0).sample(split.test, num_prompts)
    return [catalog.prompt(ex.history) for ex in users], catalog.trie, catalog.builder, [ex.history for ex in users]


def summary(latencies: list[float], wall: float, extra: dict | None = None) -> dict:
    lat = sorted(latencies)
    return dict(requests=len(lat), p50_ms=round(1000 * statistics.median(lat), 1),
                p99_ms=round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
                recs_per_s=round(len(lat) / wall, 2), **(extra or {}))


async def run_async(method: str, args, prompts, trie, builder, histories) -> dict:
    from vllm import SamplingParams

    from hatllm.core.fusion import ItemPrior
    from hatllm.sasrec import load_fusion
    from model_patch.engine_topk import EngineTopK, engine_args, start_engine

    engine = start_engine(engine_args(args.model, kv_tails=args.kv_tails, dtype=args.dtype, block_size=args.block_size,
                                      distributed_executor_backend=args.executor, **ENGINE_KWARGS))
    topk = EngineTopK(engine)
    view = trie.view()
    fusion = load_fusion(args.model) if args.fusion else None
    greedy = SamplingParams(max_tokens=64, temperature=0.0, stop_token_ids=[builder.item_close_id], detokenize=False)

    async def one(i: int, prompt: list[int]):
        started = time.perf_counter()
        if method == "engine":
            prior = None
            if fusion is not None:  # as served: the SASRec prior of this user's history, in the timed path
                sasrec, weight = fusion
                prior = ItemPrior(view, (await asyncio.to_thread(sasrec.log_probs_batch, [histories[i]]))[0], weight)
            result = await topk.search(prompt, view, K, prior=prior)
            titles = [trie.leaf(item) for item, _ in result.items]
            return time.perf_counter() - started, result.model_steps, titles
        async for _ in engine.generate({"prompt_token_ids": prompt}, greedy, f"floor-{i}-{started}"):
            pass
        return time.perf_counter() - started, 0, []

    runs, lists = {}, None
    try:
        await one(-1, prompts[-1])  # warm-up (kernel load, first allocations)
        for c in args.concurrency:
            await engine.reset_prefix_cache()
            n = min(len(prompts), max(args.requests, 2 * c))
            gate = asyncio.Semaphore(c)

            async def gated(i):
                async with gate:
                    return await one(i, prompts[i])

            started = time.perf_counter()
            results = await asyncio.gather(*(gated(i) for i in range(n)))
            wall = time.perf_counter() - started
            extra = dict(steps_per_request=round(statistics.mean(r[1] for r in results), 2)) if method == "engine" else {}
            runs[c] = summary([r[0] for r in results], wall, extra)
            print(method, c, runs[c], flush=True)
            lists = lists or [r[2] for r in results]
    finally:
        engine.shutdown()
        engine = topk = None  # dropped before interpreter exit, where AsyncLLM.__del__ would fail
    return dict(runs=runs, lists=lists)


def run_vllm_beam(args, prompts, trie, builder) -> dict:
    from vllm import LLM
    from vllm.sampling_params import BeamSearchParams

    os.environ["HATLLM_BENCH_DATA"] = args.data
    llm = LLM(model=args.model, logits_processors=["benchmarks.trie_logits_processor:TrieLogitsProcessor"],
              dtype=args.dtype, block_size=args.block_size, **ENGINE_KWARGS)
    params = BeamSearchParams(beam_width=K, max_tokens=trie.longest_path + 1)  # + EOS after the title
    runs, lists = {}, None

    def titles_of(output, prompt):
        leaves = []
        for seq in output.sequences:
            generated = [t for t in seq.tokens[len(prompt):] if t != builder.tokenizer.eos_token_id]
            node = trie.node(generated)
            if node is not None and trie.is_leaf(node):
                leaves.append(node)
        return leaves

    try:
        llm.beam_search([{"prompt_token_ids": prompts[-1]}], params)  # warm-up
        for c in args.concurrency:
            llm.reset_prefix_cache()
            n = min(len(prompts), max(args.requests, 2 * c))
            latencies, got, started = [], [], time.perf_counter()
            for first in range(0, n, c):
                chunk = prompts[first:first + c]
                t0 = time.perf_counter()
                outputs = llm.beam_search([{"prompt_token_ids": p} for p in chunk], params)
                latencies += [time.perf_counter() - t0] * len(chunk)
                got += [titles_of(o, p) for o, p in zip(outputs, chunk)]
            runs[c] = summary(latencies, time.perf_counter() - started)
            print("vllm_beam", c, runs[c], flush=True)
            lists = lists or got
    finally:
        llm.llm_engine.engine_core.shutdown()
    return dict(runs=runs, lists=lists)


def run_hf_beam(args, prompts, trie, builder) -> dict:
    import torch

    from benchmarks.hf_generate import HatGenerateModel

    torch.set_num_threads(args.hf_threads)
    model = HatGenerateModel.load(args.model).to(getattr(torch, args.dtype))
    close, eos = builder.item_close_id, builder.tokenizer.eos_token_id
    n = min(len(prompts), args.requests)
    latencies, got, started = [], [], time.perf_counter()
    for prompt in prompts[:n]:
        def allowed(_batch_id, ids, prompt_len=len(prompt)):
            node = trie.node(ids[prompt_len:].tolist())
            if node is None or trie.is_leaf(node):
                return [eos]
            return [tok for tok, _ in trie.edges(node)]

        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), num_beams=K, num_return_sequences=K, do_sample=False,
                                 max_new_tokens=trie.longest_path + 1, prefix_allowed_tokens_fn=allowed, eos_token_id=close,
                                 pad_token_id=builder.tokenizer.pad_token_id, length_penalty=0.0, early_stopping=True)
        latencies.append(time.perf_counter() - t0)
        leaves = [trie.node(seq[len(prompt):].tolist()) for seq in out]
        got.append([leaf for leaf in leaves if leaf is not None and trie.is_leaf(leaf)])
    run = summary(latencies, time.perf_counter() - started)
    print("hf_beam", 1, run, flush=True)
    return dict(runs={1: run}, lists=got)


def overlap(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = list(zip(a, b))
    return round(statistics.mean(len(set(x[:K]) & set(y[:K])) / K for x, y in pairs), 3)


def report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    lists = {m: r["lists"] for m, r in results["methods"].items() if r.get("lists") and m != "floor"}
    names = list(lists)
    results["overlap_at_k"] = {f"{a} vs {b}": overlap(lists[a], lists[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    stored = {**results, "methods": {m: {"runs": r["runs"]} for m, r in results["methods"].items()}}
    out.with_suffix(".json").write_text(json.dumps(stored, indent=1))
    lines = [f"Command: `{results['command']}`  ", f"Machine: {results['machine']}", "",
             "| method | concurrency | p50 ms | p99 ms | recs/s | engine steps/request |", "|---|---|---|---|---|---|"]
    for method, r in results["methods"].items():
        for c, run in r["runs"].items():
            lines.append(f"| {method} | {c} | {run['p50_ms']} | {run['p99_ms']} | {run['recs_per_s']} | "
                         f"{run.get('steps_per_request', '')} |")
    lines += ["", "| lists compared | overlap@10 |", "|---|---|"]
    lines += [f"| {pair} | {value} |" for pair, value in results["overlap_at_k"].items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for method, r in results["methods"].items():
        runs = sorted((int(c), run) for c, run in r["runs"].items())  # keys are strings (read back from JSON)
        ax1.plot([c for c, _ in runs], [run["recs_per_s"] for _, run in runs], "o-", label=method)
        ax2.plot([c for c, _ in runs], [run["p50_ms"] for _, run in runs], "o-", label=method)
    ax1.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="recommendations / s", title="throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="p50 latency (ms)", title="latency")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


def run_method(args) -> None:
    prompts, trie, builder, histories = load_setup(args.model, args.data, args.num_prompts)
    if args.method in ("engine", "floor"):
        result = asyncio.run(run_async(args.method, args, prompts, trie, builder, histories))
    elif args.method == "vllm_beam":
        result = run_vllm_beam(args, prompts, trie, builder)
    else:
        result = run_hf_beam(args, prompts, trie, builder)
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--methods", nargs="+", default=["engine", "floor", "vllm_beam", "hf_beam"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=16, help="requests per run (at least 2x the concurrency)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--hf-threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="every method's dtype")
    p.add_argument("--block-size", type=int, default=16, help="KV block size of the vLLM engines (tokens)")
    p.add_argument("--executor", choices=["uni", "mp"], default="uni",
                   help="(a) and (d): model worker inside the engine-core process (uni, as served) or its own (mp)")
    p.add_argument("--kv-tails", type=int,
                   help="partial last KV blocks kept for beams (model_patch.kv_tail) by engine and floor; 0: off; "
                        "default: as served (off for a model with one-token item codes)")
    p.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=True,
                   help="engine: fuse the checkpoint's SASRec prior as the service does (if it has fusion.json)")
    p.add_argument("--out", default="docs/results/topk_decoding")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        return run_method(args)
    results = dict(command="python -m benchmarks.topk_decoding " + " ".join(sys.argv[1:]),
                   machine=f"{os.cpu_count()} CPU cores, VLLM_CPU_OMP_THREADS_BIND="
                           f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto (one core)')}, {args.dtype}, "
                           f"KV blocks of {args.block_size} "
                           f"tokens, executor {args.executor}, tail store "
                           f"{'as served' if args.kv_tails is None else args.kv_tails}", methods={})
    for method in args.methods:
        result_file = Path(args.out).with_name(f".{method}.json")
        result_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.topk_decoding", *sys.argv[1:], "--method", method, "--result", str(result_file)]
        subprocess.run(cmd, check=True)
        results["methods"][method] = json.loads(result_file.read_text())
        result_file.unlink()
    report(results, Path(args.out))


if __name__ == "__main__":
    main()
