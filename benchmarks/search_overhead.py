"""The search's own work per recommendation, without a model: what the gateway spends besides the engine.

    python -m benchmarks.search_overhead                                   # default model, ml-latest-small
    python -m benchmarks.search_overhead --prior models/ml-latest-small-hat/teacher --fusion-weight 1
    python -m benchmarks.search_overhead --data ../shared/datasets/ml-1m --model runs/ml-1m/student
    python -m benchmarks.search_overhead --items 1000000 --changes 5000   # a large catalog, and a patch over it

For each test user of the dataset (seen items excluded, as served): the trie view over the catalog, then
`TrieBeamSearch` (K=10) fed by a stand-in scorer that ranks the allowed tokens by a fixed random score per
token, as an engine answers with the top `beam_width` allowed tokens. With `--prior`, the search is fused
with that SASRec (`hatllm.core.fusion`): its log-probabilities are computed untimed, like the engine's,
and the fusion's own work is timed (the prior over the view, the bias of every scored node). Only the
search's calls are timed (view, prior, allowed tokens, bias, advance, result). `--items` grows the catalog
with the synthetic titles of `benchmarks.catalog_scale`; `--changes` lays that many more over the built
catalog as the service does between full builds (`ModelCatalog.with_changes`), and the first search after
it is reported on its own (it builds the patched trie's shared structures). One process, one thread;
run it on an otherwise idle machine. Runs on any commit whose `ModelCatalog.for_checkpoint` and
`TrieBeamSearch` it can import, so two commits can be compared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.catalog_scale import synthetic_items
from hatllm.core.catalog import ModelCatalog
from hatllm.core.fusion import ItemPrior
from hatllm.core.search import TrieBeamSearch
from hatllm.data import leave_one_out, load_dataset
from hatllm.sasrec import SASRecRanker

ROOT = Path(__file__).resolve().parents[1]


def time_searches(catalog: ModelCatalog, users: list[tuple[list[str], list[str]]], k: int, seed: int,
                  prior: SASRecRanker | None = None, weight: float = 0.0) -> list[float]:
    """Seconds of search work per (prompt items, seen items) pair."""
    token_score = np.random.default_rng(seed).random(len(catalog.builder.tokenizer))
    seconds = []
    for recent, seen in users:
        log_probs = prior.log_probs_batch([tuple(recent)])[0] if prior else None
        spent = 0.0
        started = time.perf_counter()
        view = catalog.trie.view(deny=seen)
        search = TrieBeamSearch(view, k, prior=ItemPrior(view, log_probs, weight) if prior else None)
        spent += time.perf_counter() - started
        while True:
            started = time.perf_counter()
            if search.done:
                search.result()
                spent += time.perf_counter() - started
                break
            requests = [(search.allowed_tokens(beam), search.logit_bias(beam)) for beam in search.active]
            spent += time.perf_counter() - started
            answers = []
            for allowed, _ in requests:  # the stand-in engine, not timed
                top = np.argsort(-token_score[allowed])[: search.beam_width]
                answers.append({int(allowed[i]): -1.0 - rank for rank, i in enumerate(top)})
            started = time.perf_counter()
            search.advance(answers)
            spent += time.perf_counter() - started
        seconds.append(spent)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "ml-latest-small"))
    p.add_argument("--model", default=str(ROOT / "models" / "ml-latest-small-hat"))
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", help="a SASRec checkpoint folder to fuse with (default: no fusion)")
    p.add_argument("--fusion-weight", type=float, default=1.0)
    p.add_argument("--items", type=int, help="grow the catalog to this many items with synthetic titles")
    p.add_argument("--changes", type=int, default=0, help="synthetic items added over the built catalog, as a patch")
    args = p.parse_args()
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, 50)
    titles = dict(dataset.catalog.titles)
    grown = max((args.items or 0) - len(titles), 0)
    added = dict(synthetic_items(grown + args.changes)) if grown + args.changes else {}
    catalog = ModelCatalog.for_checkpoint(args.model, titles | dict(list(added.items())[:grown]), split.popularity())
    users = [(list(example.history), sorted(example.seen)) for example in split.test[: args.users]]  # all seen excluded
    prior = SASRecRanker.load(args.prior) if args.prior else None
    first = ""
    if args.changes:
        changes = dict(list(added.items())[grown:])  # outside the timing: a list of every item's pair
        started = time.perf_counter()
        catalog = catalog.with_changes(changes)
        patched_s = time.perf_counter() - started
        first = (f"; {args.changes} changes laid over it in {1000 * patched_s:.1f} ms, the first search after them "
                 f"{1000 * time_searches(catalog, users[:1], args.k, args.seed, prior, args.fusion_weight)[0]:.2f} ms")
    time_searches(catalog, users[:20], args.k, args.seed, prior, args.fusion_weight)  # warm caches and imports
    seconds = time_searches(catalog, users, args.k, args.seed, prior, args.fusion_weight)
    ms = sorted(1000 * s for s in seconds)
    fused = f", fused with {args.prior} (weight {args.fusion_weight})" if prior else ""
    print(f"{len(ms)} searches over {len(catalog.titles)} items{fused}{first}: median "
          f"{statistics.median(ms):.2f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.2f} ms, mean {statistics.fmean(ms):.2f} ms")


if __name__ == "__main__":
    main()
