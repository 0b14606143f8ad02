"""Sensitivity table: evaluation JSONs of models that differ in their IN/OR/CR schedule, seed or size.

    python -m hatllm.evaluation.sensitivity docs/results/ml-latest-small/sensitivity docs/results/ml-latest-small/hatllm.json

Each row reads the checkpoint's own `training.json` (schedule, seed, best epoch and its validation NDCG@10)
beside the test metrics, so rows are only comparable when size, data and recipe match
(`scripts/experiments.sh` with several schedules keeps them equal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METRICS = ("HR@5", "HR@10", "NDCG@10")


def load_rows(paths: list[Path]) -> list[dict]:
    files = [f for p in paths for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    rows = []
    for f in files:
        result = json.loads(f.read_text())
        if not result.get("model") or not (Path(result["model"]) / "training.json").is_file() or "fusion_weight" not in result:
            continue  # not an LLM row (SASRec, most popular)
        training = json.loads((Path(result["model"]) / "training.json").read_text())
        schedule = training["schedule"]
        rows.append(dict(result, schedule=schedule, seed=training["args"]["seed"], size=training["args"]["size"],
                         epoch=training["best_epoch"], valid_ndcg=training["best_valid_ndcg"],
                         counts={t: schedule.count(t) for t in ("IN", "OR", "CR")}))
    return sorted(rows, key=lambda r: (r["size"], r["counts"]["IN"] + r["counts"]["CR"], r["counts"]["IN"], r["seed"]))


def format_table(rows: list[dict]) -> str:
    lines = ["| size | schedule | IN | OR | CR | seed | best epoch | valid NDCG@10 | " + " | ".join(METRICS) + " | hits@10 |",
             "|---" * (9 + len(METRICS)) + "|"]
    for r in rows:
        c = r["counts"]
        lines.append(f"| {r['size']} | {','.join(r['schedule'])} | {c['IN']} | {c['OR']} | {c['CR']} | {r['seed']} | "
                     f"{r['epoch']} | {r['valid_ndcg']:.4f} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS)
                     + f" | {round(r['HR@10'] * r['users'])}/{r['users']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    labels = [f"{r['size']} " + ",".join(t[0] for t in r["schedule"]) + f" s{r['seed']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(labels, [r["valid_ndcg"] for r in rows])
    ax1.set(ylabel="NDCG@10", title="validation (best epoch)")
    ax2.bar(labels, [r["NDCG@10"] for r in rows])
    ax2.set(ylabel="NDCG@10", title="full-catalog ranking (test)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="evaluation JSONs or folders of them; the first folder "
                                                         "(or the first file's folder) receives table.md and plot")
    p.add_argument("--title", default="layer-split sensitivity")
    args = p.parse_args(argv)
    rows = load_rows(args.paths)
    out = args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent
    table = format_table(rows)
    (out / "table.md").write_text(table + "\n")
    plot(rows, out / "sensitivity.png", args.title)
    print(table)
    return table


if __name__ == "__main__":
    main()
