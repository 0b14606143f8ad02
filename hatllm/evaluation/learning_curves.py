"""Validation NDCG@10 by epoch and by training minute for several runs (LLM recipes and SASRec), one plot.
Each run is a run folder or a copy of its training.json (named after the run, as scripts/experiments.sh keeps them).

    python -m hatllm.evaluation.learning_curves docs/results/ml-latest-small/recipes.png runs/ml-latest-small/{sasrec,recipe}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load_log(run: Path) -> list[dict]:
    info = json.loads((run if run.is_file() else run / "training.json").read_text())
    log = info["log"]
    if log and "minutes" not in log[0]:  # SASRec logs epochs only: spread its wall time evenly
        per_epoch = info["seconds"] / 60 / max(info["epochs_run"], 1)
        log = [dict(row, minutes=row["epoch"] * per_epoch) for row in log]
    return log


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding a training.json, or copies of one")
    p.add_argument("--title", default="validation NDCG@10 (seen excluded)")
    args = p.parse_args(argv)
    fig, (by_epoch, by_minute) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in args.runs:
        log = load_log(run)
        ndcg, label = [row["valid_ndcg@10"] for row in log], run.stem if run.is_file() else run.name
        by_epoch.plot([row["epoch"] for row in log], ndcg, ".-", label=label)
        by_minute.plot([row["minutes"] for row in log], ndcg, ".-", label=label)
    by_epoch.set(xlabel="epoch", ylabel="NDCG@10", title=args.title)
    by_minute.set(xlabel="training minutes (2-core CPU)")
    by_epoch.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
