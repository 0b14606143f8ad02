"""Offline evaluation: full-catalog ranking on the leave-one-out test (or validation) split.

    python -m hatllm.evaluate --data data/ml-latest-small --method llm --model runs/ml-latest-small/hat
    python -m hatllm.evaluate --data data/ml-latest-small --method popular
    python -m hatllm.evaluate --data data/ml-latest-small --method sasrec --model runs/ml-latest-small/sasrec

Every method ranks the whole catalog for every evaluated user, with the user's history items excluded
(as inside decoding for the LLM), and is scored by HR@1/5/10 and NDCG@1/5/10. Invalid outputs (not a
catalog item, or an item listed twice) are counted for every method; for the LLM they must be 0.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .baselines.popular import PopularRanker
from .baselines.sasrec import SASRecRanker
from .beam_search import constrained_beam_search
from .data import Example, leave_one_out, load_dataset
from .metrics import CUTOFFS, hit_and_ndcg, invalid_entries, target_rank
from .modeling import load_model
from .prompt import PromptBuilder
from .trie import TitleTrie


class LLMRanker:
    """HatLLM (or causal) checkpoint + catalog trie, ranked by the reference beam search."""

    name = "llm"

    def __init__(self, model_path: str | Path, titles: dict[str, str], popularity, beam_width: int | None = None):
        from transformers import AutoTokenizer

        self.model = load_model(model_path)
        self.titles = titles
        self.builder = PromptBuilder.from_model_config(AutoTokenizer.from_pretrained(model_path), self.model.config)
        self.trie = TitleTrie.from_catalog(titles, self.builder, popularity)
        self.beam_width = beam_width
        self.model_steps = 0
        self.name = "hatllm" if set(self.model.config.hat_layer_types) != {"OR"} else "causal"

    def rank(self, history: tuple[str, ...], k: int, exclude: set[str]) -> list[tuple[str, float]]:
        prompt = self.builder.prompt([self.titles[i] for i in history])
        result = constrained_beam_search(self.model, prompt, self.trie.view(deny=exclude), k, self.beam_width or k)
        self.model_steps += result.model_steps
        return result.items


def evaluate(ranker, examples: list[Example], catalog: dict, k: int = 10, exclude_history: bool = True) -> dict:
    totals = {name: 0.0 for c in CUTOFFS for name in (f"HR@{c}", f"NDCG@{c}")}
    invalid, short, started = 0, 0, time.time()
    for ex in tqdm(examples, desc=f"evaluate {ranker.name}", unit="user"):
        ranked = [item for item, _ in ranker.rank(ex.history, k, set(ex.history) if exclude_history else set())]
        invalid += invalid_entries(ranked, catalog)
        short += len(ranked) < k
        for name, value in hit_and_ndcg(target_rank(ranked, ex.target)).items():
            totals[name] += value
    n = max(len(examples), 1)
    result = {name: round(value / n, 5) for name, value in totals.items()}
    result.update(users=len(examples), invalid_outputs=invalid, short_lists=short, seconds=round(time.time() - started, 1))
    if hasattr(ranker, "model_steps"):
        result["model_steps_per_user"] = round(ranker.model_steps / n, 2)
    return result


def format_table(rows: dict[str, dict]) -> str:
    cols = [f"{m}@{c}" for m in ("HR", "NDCG") for c in CUTOFFS] + ["invalid_outputs", "seconds"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c not in ("seconds",) else str(r[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--method", choices=["llm", "popular", "sasrec"], required=True)
    p.add_argument("--model", help="checkpoint folder (llm, sasrec)")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--beam-width", type=int, help="LLM beam width (default: k)")
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--users", type=int, help="evaluate a seeded random sample of this many users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-history", action="store_true", help="do not exclude history items")
    p.add_argument("--name", help="row name in the report (default: method or schedule)")
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small per-step batches gain little from more)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, args.max_history)
    examples = split.test if args.split == "test" else split.valid
    if args.users and args.users < len(examples):
        examples = random.Random(args.seed).sample(examples, args.users)
    titles = dataset.catalog.titles
    if args.method == "popular":
        ranker = PopularRanker(split.popularity(), titles)
    elif args.method == "sasrec":
        ranker = SASRecRanker.load(args.model)
    else:
        ranker = LLMRanker(args.model, titles, split.popularity(), args.beam_width)
    result = evaluate(ranker, examples, titles, args.k, not args.keep_history)
    name = args.name or ranker.name
    result.update(method=name, dataset=dataset.name, split=args.split, model=args.model)
    print(format_table({name: result}))
    print(json.dumps(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
