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
import copy
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.core.fusion import ItemPrior
from hatllm.data import DEFAULT_MAX_HISTORY, dataset_folder, leave_one_out, load_dataset
from hatllm.evaluation.metrics import CUTOFFS, EVALUATION_BATCH, evaluate_rankers
from hatllm.evaluation.popular import PopularRanker
from hatllm.reference.modeling import load_model
from hatllm.reference.search import constrained_beam_search, prompt_logits_batch
from hatllm.sasrec import SASRecRanker, load_fusion


class SharedBatchMemo:
    """Per-input results of a batched computation (`compute`: inputs -> one result each), kept for the rankers
    that share this memo (`LLMRanker.with_weight`), so that ranking the same users again computes nothing
    (the model must not change meanwhile: training builds a new ranker per validation). Keeps `limit`
    results at most: `evaluate_rankers` hands one evaluation batch to each ranker in turn."""

    def __init__(self, compute: Callable[[list[Sequence]], Sequence], limit: int = EVALUATION_BATCH):
        self.compute, self.limit = compute, limit
        self.results: dict[tuple, object] = {}

    def __call__(self, inputs: list[Sequence]) -> list:
        missing = list({tuple(x): x for x in inputs if tuple(x) not in self.results}.values())
        if missing:
            if len(self.results) + len(missing) > self.limit:
                self.results.clear()
            self.results.update(zip(map(tuple, missing), self.compute(missing)))
        return [self.results[tuple(x)] for x in inputs]


class LLMRanker:
    """HatLLM (or causal) model over a catalog, ranked by the reference constrained beam search; the
    prompts' first step and the prior's scores run batched, once per history for all weights."""

    name = "llm"

    def __init__(self, model, catalog: ModelCatalog, beam_width: int | None = None, batch_size: int = 32,
                 prior: SASRecRanker | None = None, fusion_weight: float = 0.0):
        self.model, self.catalog = model, catalog
        self.beam_width, self.batch_size = beam_width, batch_size
        self.prior, self.fusion_weight = prior, fusion_weight
        self.model_steps = 0
        self.name = "hatllm" if set(model.config.hat_layer_types) != {"OR"} else "causal"
        pad_id = catalog.builder.tokenizer.pad_token_id
        self.first_logits = SharedBatchMemo(lambda prompts: prompt_logits_batch(model, prompts, pad_id))
        self.prior_log_probs = SharedBatchMemo(prior.log_probs_batch) if prior is not None else None

    @classmethod
    def load(cls, path: str | Path, titles: dict[str, str], popularity, beam_width: int | None = None,
             fusion: bool = True) -> "LLMRanker":
        prior, weight = (load_fusion(path) if fusion else None) or (None, 0.0)
        return cls(load_model(path), ModelCatalog.for_checkpoint(path, titles, popularity), beam_width,
                   prior=prior, fusion_weight=weight)

    def with_weight(self, fusion_weight: float) -> "LLMRanker":
        """The same model and prior at another fusion weight (0: the LLM alone), sharing the prompts' first
        step and prior scores with this ranker: `evaluate_rankers` over both costs one forward per history."""
        other = copy.copy(self)
        other.fusion_weight, other.model_steps = fusion_weight, 0
        if fusion_weight == 0:
            other.prior = None  # the LLM alone, as `--no-fusion` loads it
        return other

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        out = []
        fused = self.prior is not None and self.fusion_weight > 0
        for start in range(0, len(histories), self.batch_size):
            batch = histories[start : start + self.batch_size]
            prompts = [self.catalog.prompt(h) for h in batch]
            priors = self.prior_log_probs(batch) if fused else [None] * len(batch)
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
    p.add_argument("--data", required=True, type=dataset_folder)
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
    p.add_argument("--alone-out", help="also rank by the LLM alone in the same pass (a fused checkpoint's first step "
                                       "is shared, so this costs little) and write that result here")
    p.add_argument("--alone-name", help="row name of the --alone-out result (default: NAME alone)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small per-step batches gain little from more)")
    args = p.parse_args(argv)
    if args.alone_out and (args.method != "llm" or args.no_fusion):
        p.error("--alone-out compares an LLM checkpoint's fused pipeline with the LLM alone: it needs --method llm "
                "without --no-fusion")
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
    name = args.name or ranker.name
    rankers, names, outs = [ranker], [name], [args.out]
    if args.alone_out:
        if ranker.prior is None or ranker.fusion_weight == 0:
            p.error(f"{args.model} does not fuse a prior (no fusion.json, or weight 0): its pipeline is the LLM alone")
        rankers.append(ranker.with_weight(0.0))
        names.append(args.alone_name or f"{name} alone")
        outs.append(args.alone_out)
    results = evaluate_rankers(rankers, examples, titles, args.k, not args.keep_seen)
    for each, result, row_name, out in zip(rankers, results, names, outs):
        if isinstance(each, LLMRanker):
            result["model_steps_per_user"] = round(each.model_steps / max(len(examples), 1), 2)
            result["fusion_weight"] = each.fusion_weight if each.prior is not None else None
        result.update(method=row_name, dataset=dataset.name, split=args.split, model=args.model,
                      max_history=args.max_history, seen_excluded=not args.keep_seen)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=1))
    print(format_table(dict(zip(names, results))))
    for result in results:
        print(json.dumps(result))
    return results[0]


if __name__ == "__main__":
    main()
