"""Collect evaluation JSONs into a markdown results table and a bar plot.

    python -m hatllm.report docs/results/ml-latest-small --title "ml-latest-small (test, 610 users)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .evaluate import format_table
from .plots import plot_metric_bars


def relative_gain(a: float, b: float) -> str:
    return f"{(a - b) / b * 100:+.1f}%" if b else "n/a"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of evaluate --out JSON files")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    rows = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        rows[result["method"]] = result
    table = format_table(rows)
    if "hatllm" in rows and "causal" in rows:
        gains = ", ".join(
            f"{m} {relative_gain(rows['hatllm'][m], rows['causal'][m])}" for m in ("HR@10", "NDCG@10", "NDCG@5", "HR@1")
        )
        table += f"\n\nHatLLM vs causal (same size, data, steps, seed): {gains}"
    (folder / "table.md").write_text(table + "\n")
    plot_metric_bars(rows, ["HR@5", "HR@10", "NDCG@5", "NDCG@10"], folder / "metrics.png", args.title)
    print(table)
    return table


if __name__ == "__main__":
    main()
