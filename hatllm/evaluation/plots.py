"""Plots of training curves and evaluation results (PNG, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_metric_bars(results: dict[str, dict[str, float]], metrics: list[str], path: Path, title: str,
                     errors: dict[str, dict[str, float]] | None = None) -> None:
    """Grouped bars: one group per metric, one bar per method; `errors` (per metric, for the methods it names,
    e.g. the standard deviation over seeds) draws error bars."""
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(results), 1)
    for i, (name, values) in enumerate(results.items()):
        spread = [errors[name][k] for k in metrics] if errors and name in errors else None
        ax.bar([m + i * width for m in range(len(metrics))], [values[k] for k in metrics], width, label=name,
               yerr=spread, capsize=2)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_validation(log: list[dict], path: Path, title: str) -> None:
    """Per-epoch training loss and validation NDCG@10 (the early-stopping criterion)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [row["epoch"] for row in log]
    ax.plot(epochs, [row["valid_ndcg@10"] for row in log], "o-", color="C1", label="valid NDCG@10")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10 (seen excluded)")
    loss_ax = ax.twinx()
    loss_ax.plot(epochs, [row["loss"] for row in log], alpha=0.5, label="train loss")
    loss_ax.set_ylabel("train loss")
    ax.set_title(title)
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
