"""Cost of the HatLLM mask plugin: patched vLLM (HatLLM schedule) vs stock vLLM, same weights.

    python benchmarks/engine_overhead.py --out docs/results/engine_overhead.json

For each model (the default one and a randomly initialised one 4x larger in compute), dtype (fp32, bf16)
and engine (patched: the checkpoint's IN/OR/CR schedule; stock: vLLM's own Llama with causal attention,
via an architecture override), it measures on real prompts of the default dataset:
  - prefill throughput (prompt tokens/s, max_tokens=1),
  - decode throughput (generated tokens/s, 64 tokens per request, after the prefill),
  - per-request latency of a prefill + 16-token decode,
at batch 1 and batch 16. Each engine runs in its own process. Everything targets this machine only and
stops by itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODE_TOKENS = 64


def prompts_from_dataset(model_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoConfig

    from hatllm.core.catalog import ModelCatalog
    from hatllm.data import leave_one_out, load_dataset

    dataset = load_dataset(ROOT / "data" / "ml-latest-small")
    split = leave_one_out(dataset, getattr(AutoConfig.from_pretrained(model_dir), "hat_max_history", 20))
    catalog = ModelCatalog.for_checkpoint(model_dir, dataset.catalog.titles)
    return [catalog.prompt(ex.history) for ex in split.test[:count]]


def larger_model(default: Path, out: Path) -> Path:
    """Same tokenizer and schedule, hidden size x2 (about 4x the compute per token), random weights."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from hatllm.reference.modeling import HAT_ATTENTION, save_model

    config = AutoConfig.from_pretrained(default)
    config.hidden_size *= 2
    config.intermediate_size *= 2
    config.num_attention_heads *= 2
    config.num_key_value_heads *= 2
    config._attn_implementation = HAT_ATTENTION
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(config), AutoTokenizer.from_pretrained(default), out)
    return out


def start_llm(model: str, dtype: str, stock: bool):
    """The patched engine, or stock vLLM (its own Llama, causal attention) on the same weights."""
    from vllm import LLM

    overrides = {"architectures": ["LlamaForCausalLM"]} if stock else None
    return LLM(model=model, dtype=dtype, max_model_len=1024, block_size=32, hf_overrides=overrides,
               enable_prefix_caching=False, seed=0)


def run_engine(model: str, dtype: str, stock: bool, prompts: list[list[int]], queue) -> None:
    from vllm import SamplingParams

    llm = start_llm(model, dtype, stock)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    prefill = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    decode = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0, ignore_eos=True)
    short = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    llm.generate(inputs[:4], decode, use_tqdm=False)  # warm-up
    result = {}
    for batch in (1, 16):
        chunk = inputs[:batch]
        tokens = sum(len(p) for p in prompts[:batch])
        t = time.perf_counter()
        for _ in range(3):
            llm.generate(chunk, prefill, use_tqdm=False)
        prefill_s = (time.perf_counter() - t) / 3
        t = time.perf_counter()
        llm.generate(chunk, decode, use_tqdm=False)
        total_s = time.perf_counter() - t
        latencies = []
        for request in inputs[16 : 16 + (8 if batch == 1 else 2)]:
            t = time.perf_counter()
            llm.generate([request] * batch, short, use_tqdm=False)
            latencies.append(time.perf_counter() - t)
        result[f"batch{batch}"] = {
            "prefill_tokens_per_s": round(tokens / prefill_s, 1),
            "decode_tokens_per_s": round(batch * (DECODE_TOKENS - 1) / max(total_s - prefill_s, 1e-9), 1),
            "latency_s_p50": round(statistics.median(latencies), 4),
        }
    # Stop the engine's processes before reporting: a leftover worker would load the next measurement.
    llm.llm_engine.engine_core.shutdown()
    queue.put(result)


def median_result(results: list[dict]) -> dict:
    """Per batch and metric, the median over repeated runs."""
    return {batch: {metric: round(statistics.median(r[batch][metric] for r in results), 4) for metric in results[0][batch]}
            for batch in results[0]}


def in_own_process(target, *args):
    """What `target(*args, queue)` puts on its queue, run in a fresh process (an engine per measurement)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=900)
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "ml-latest-small-hat"))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--models", default="default,4x", help="which of: default, 4x (a larger random model)")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "engine_overhead.json"))
    p.add_argument("--repeats", type=int, default=1, help="runs per engine; metrics are medians over them")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    default = Path(args.model)
    prompts = prompts_from_dataset(default, 32)
    tmp = Path(tempfile.mkdtemp())
    wanted = args.models.split(",")
    models = {"default": default} if "default" in wanted else {}
    if "4x" in wanted:
        models["4x"] = larger_model(default, tmp / "larger")
    results = []
    for name, path in models.items():
        for dtype in args.dtypes.split(","):
            # Alternate the two engines and keep each metric's median: one run on a shared machine is noise.
            runs = {False: [], True: []}
            for _ in range(args.repeats):
                for stock_engine in (False, True):
                    runs[stock_engine].append(in_own_process(run_engine, str(path), dtype, stock_engine, prompts))
            patched, stock = median_result(runs[False]), median_result(runs[True])
            for batch in patched:
                row = {"model": name, "dtype": dtype, "batch": batch, "patched": patched[batch], "stock": stock[batch]}
                row["overhead"] = {
                    "prefill": round(stock[batch]["prefill_tokens_per_s"] / patched[batch]["prefill_tokens_per_s"] - 1, 3),
                    "decode": round(stock[batch]["decode_tokens_per_s"] / patched[batch]["decode_tokens_per_s"] - 1, 3),
                    "latency": round(patched[batch]["latency_s_p50"] / stock[batch]["latency_s_p50"] - 1, 3),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    shutil.rmtree(tmp)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).with_suffix(".md").write_text(format_table(results) + "\n")
    print(format_table(results))


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | dtype | batch | prefill tok/s patched / stock | decode tok/s patched / stock | latency p50 s patched / stock | overhead prefill / decode / latency |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pa, st, o = r["patched"], r["stock"], r["overhead"]
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {pa['prefill_tokens_per_s']} / {st['prefill_tokens_per_s']} | "
            f"{pa['decode_tokens_per_s']} / {st['decode_tokens_per_s']} | {pa['latency_s_p50']} / {st['latency_s_p50']} | "
            f"{o['prefill']:+.0%} / {o['decode']:+.0%} / {o['latency']:+.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
