"""Collect evaluation JSONs into a markdown results table and a bar plot (error bars: sd over seeds).

    python -m hatllm.evaluation.report docs/results/ml-latest-small --title "ml-latest-small (test, 610 users)"

Rows named "<method> s<seed>" are runs of one method with different seeds: they become one row with the
mean ± sample standard deviation of each metric, and the seed count.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from hatllm.evaluation.metrics import CUTOFFS
from hatllm.evaluation.plots import plot_metric_bars

METRICS = [f"{m}@{c}" for m in ("HR", "NDCG") for c in CUTOFFS]
SEED_SUFFIX = re.compile(r"^(.*) s(\d+)$")


def group_seeds(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        match = SEED_SUFFIX.match(result["method"])
        groups[match.group(1) if match else result["method"]].append(result)
    return groups


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def format_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| method | seeds | " + " | ".join(METRICS) + " | users |", "|---" * (len(METRICS) + 3) + "|"]
    for name, runs in groups.items():
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cell([r[m] for r in runs]) for m in METRICS)
                     + f" | {runs[0]['users']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of evaluate --out JSON files")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    groups = group_seeds([json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))])
    table = format_table(groups)
    (folder / "table.md").write_text(table + "\n")
    labels = {name: f"{name} ({len(runs)} seeds)" if len(runs) > 1 else name for name, runs in groups.items()}
    means = {labels[name]: {m: statistics.mean(r[m] for r in runs) for m in METRICS} for name, runs in groups.items()}
    sds = {labels[name]: {m: statistics.stdev(r[m] for r in runs) for m in METRICS}
           for name, runs in groups.items() if len(runs) > 1}
    plot_metric_bars(means, ["HR@5", "HR@10", "NDCG@5", "NDCG@10"], folder / "metrics.png",
                     f"{args.title} (mean; error bars: sd over seeds)" if sds else args.title, errors=sds)
    print(table)
    return table


if __name__ == "__main__":
    main()
