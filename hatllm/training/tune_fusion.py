"""Choose the decode-time fusion weight of a SASRec prior for an LLM checkpoint, on the validation split.

    python -m hatllm.training.tune_fusion --data data/ml-latest-small --model runs/x/recipe --prior runs/x/recipe/teacher

Ranks the validation users with the LLM alone (weight 0) and fused with the prior at each weight, by the
same constrained search as the service, and writes the best weight into the checkpoint's fusion.json
(served as is; weight 0 wins only if the prior does not help). One pass over the users ranks them at every
weight, so the LLM's first step is computed once per user.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.data import dataset_folder, leave_one_out, load_dataset
from hatllm.evaluation.evaluate import LLMRanker
from hatllm.evaluation.metrics import evaluate_rankers
from hatllm.reference.modeling import load_model
from hatllm.sasrec import SASRecRanker, save_fusion


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=dataset_folder)
    p.add_argument("--model", required=True, help="LLM checkpoint folder (fusion.json is written here)")
    p.add_argument("--prior", required=True, help="SASRec checkpoint folder (recorded relative to the LLM's folder)")
    p.add_argument("--weights", default="0,0.25,0.5,1,1.5,2,3", help="comma-separated fusion weights to try")
    p.add_argument("--users", type=int, help="a seeded sample of validation users (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, getattr(model.config, "hat_max_history", 20))
    valid = split.valid
    if args.users and args.users < len(valid):
        valid = random.Random(args.seed).sample(valid, args.users)
    titles = dataset.catalog.titles
    ranker = LLMRanker(model, ModelCatalog.for_checkpoint(args.model, titles, split.popularity()),
                       prior=SASRecRanker.load(args.prior))
    weights = [float(w) for w in args.weights.split(",")]
    results = evaluate_rankers([ranker.with_weight(w) for w in weights], valid, titles)
    scores = {weight: result["NDCG@10"] for weight, result in zip(weights, results)}
    for weight, score in scores.items():
        print(f"fusion weight {weight}: valid NDCG@10 {score:.4f}", flush=True)
    best = max(scores, key=lambda w: (scores[w], -w))
    save_fusion(args.model, args.prior, best)
    (Path(args.model) / "fusion_sweep.json").write_text(json.dumps({str(w): s for w, s in scores.items()}, indent=1))
    print(f"chose weight {best} (valid NDCG@10 {scores[best]:.4f}; LLM alone {scores.get(0.0, float('nan')):.4f})")
    return best


if __name__ == "__main__":
    main()
