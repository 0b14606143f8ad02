"""Offline evaluation: full-catalog ranking on the leave-one-out test (or validation) split.

    python -m hatllm.evaluation.evaluate --data data/ml-latest-small --method llm --model runs/ml-latest-small/hat
    python -m hatllm.evaluation.evaluate --data data/ml-latest-small --method popular
    python -m hatllm.evaluation.evaluate --data data/ml-latest-small --method sasrec --model runs/ml-latest-small/sasrec

Every method ranks the whole catalog for every evaluated user, with every earlier item of the user
excluded but the target (as inside decoding for the LLM; `--keep-seen` turns it off), and is scored by HR@1/5/10 and NDCG@1/5/10. Invalid outputs (not a
catalog item, or an item listed twice) are counted for every method; for the LLM they must be 0.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.core.fusion import ItemPrior
from hatllm.data import DEFAULT_MAX_HISTORY, leave_one_out, load_dataset
from hatllm.evaluation.metrics import CUTOFFS, evaluate_ranker
from hatllm.evaluation.popular import PopularRanker
from hatllm.reference.modeling import load_model
from hatllm.reference.search import constrained_beam_search, prompt_logits_batch
from hatllm.sasrec import SASRecRanker, load_fusion


class LLMRanker:
    """HatLLM (or causal) model over a catalog, ranked by the reference constrained beam search; the
    prompts' first step runs batched."""

    name = "llm"

    def __init__(self, model, catalog: ModelCatalog, beam_width: int | None = None, batch_size: int = 32,
                 prior: SASRecRanker | None = None, fusion_weight: float = 0.0, cache_first_logits: bool = False):
        """`cache_first_logits`: keep each prompt's first-step logits (one vocabulary row per user), for
        rankings repeated over the same users with other fusion weights."""
        self.model, self.catalog = model, catalog
        self.beam_width, self.batch_size = beam_width, batch_size
        self.prior, self.fusion_weight = prior, fusion_weight
        self.model_steps = 0
        self.name = "hatllm" if set(model.config.hat_layer_types) != {"OR"} else "causal"
        self._first_logits: dict[tuple[int, ...], torch.Tensor] | None = {} if cache_first_logits else None

    @classmethod
    def load(cls, path: str | Path, titles: dict[str, str], popularity, beam_width: int | None = None,
             fusion: bool = True) -> "LLMRanker":
        prior, weight = (load_fusion(path) if fusion else None) or (None, 0.0)
        return cls(load_model(path), ModelCatalog.for_checkpoint(path, titles, popularity), beam_width,
                   prior=prior, fusion_weight=weight)

    def first_logits(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        pad_id = self.catalog.builder.tokenizer.pad_token_id
        if self._first_logits is None:
            return prompt_logits_batch(self.model, prompts, pad_id)
        missing = [p for p in prompts if tuple(p) not in self._first_logits]
        if missing:
            self._first_logits.update(zip(map(tuple, missing), prompt_logits_batch(self.model, missing, pad_id)))
        return [self._first_logits[tuple(p)] for p in prompts]

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        out = []
        fused = self.prior is not None and self.fusion_weight > 0
        for start in range(0, len(histories), self.batch_size):
            batch = histories[start : start + self.batch_size]
            prompts = [self.catalog.prompt(h) for h in batch]
            priors = self.prior.log_probs_batch(batch) if fused else [None] * len(batch)
            for prompt, first, exclude, log_probs in zip(prompts, self.first_logits(prompts),
                                                         excludes[start : start + self.batch_size], priors):
                view = self.catalog.trie.view(deny=exclude)
                prior = ItemPrior(view, log_probs, self.fusion_weight) if fused else None
                result = constrained_beam_search(self.model, prompt, view, k, self.beam_width,
                                                 prompt_logits=first, prior=prior)
                self.model_steps += result.model_steps
                out.append(result.items)
        return out


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
    p.add_argument("--beam-width", type=int, help="LLM beam width, at least k (default: k)")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--users", type=int, help="evaluate a seeded random sample of this many users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-seen", action="store_true", help="do not exclude the user's earlier items")
    p.add_argument("--no-fusion", action="store_true", help="rank by the LLM alone, even if the checkpoint fuses a prior")
    p.add_argument("--name", help="row name in the report (default: method or schedule)")
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small per-step batches gain little from more)")
    args = p.parse_args(argv)
    if args.beam_width is not None and args.beam_width < args.k:
        p.error(f"--beam-width {args.beam_width} is below --k {args.k}: the lists would come back short")
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
        ranker = LLMRanker.load(args.model, titles, split.popularity(), args.beam_width, fusion=not args.no_fusion)
    result = evaluate_ranker(ranker, examples, titles, args.k, not args.keep_seen)
    if isinstance(ranker, LLMRanker):
        result["model_steps_per_user"] = round(ranker.model_steps / max(len(examples), 1), 2)
        result["fusion_weight"] = ranker.fusion_weight if ranker.prior is not None else None
    name = args.name or ranker.name
    result.update(method=name, dataset=dataset.name, split=args.split, model=args.model, max_history=args.max_history,
                  seen_excluded=not args.keep_seen)
    print(format_table({name: result}))
    print(json.dumps(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
