"""Train SASRec (`hatllm.sasrec`) the standard way: full-softmax cross-entropy over the catalog at every
position (stronger than the paper's one sampled negative; Klenitskiy & Vasilev, RecSys 2023), Adam (1e-3,
betas 0.9/0.98), batch 128, windows of max_len + 1 items, and early stopping on validation NDCG@10 (seen
excluded) with patience 10, keeping the best epoch.

    python -m hatllm.training.sasrec --data data/ml-latest-small --out runs/ml-latest-small/sasrec
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hatllm.data import DEFAULT_MAX_HISTORY, Split, dataset_folder, leave_one_out, load_dataset
from hatllm.evaluation.metrics import evaluate_ranker
from hatllm.evaluation.plots import plot_validation
from hatllm.sasrec import SASRec, SASRecRanker, left_pad
from hatllm.training.linear_cross_entropy import linear_cross_entropy


def train(split: Split, item_ids: list[str], seed: int, max_epochs: int = 400, patience: int = 10,
          max_minutes: float | None = None, batch_size: int = 128, lr: float = 1e-3, dim: int = 64, blocks: int = 2,
          dropout: float = 0.2, device: str = "cpu") -> tuple[SASRecRanker, dict]:
    """Train until validation NDCG@10 has not improved for `patience` epochs (or the epoch / time cap);
    return the best epoch's model."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    max_len = split.max_history
    hparams = dict(max_len=max_len, dim=dim, blocks=blocks, dropout=dropout)
    model = SASRec(len(item_ids), **hparams).to(device)
    ranker = SASRecRanker(model, item_ids)
    windows = [[ranker.index[i] for i in window] for window in split.training_windows()]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    catalog = set(item_ids)
    best, best_epoch, best_state, log, started = -1.0, 0, None, [], time.time()
    bar = tqdm(range(1, max_epochs + 1), desc="sasrec", unit="epoch")
    for epoch in bar:
        model.train()
        rng.shuffle(windows)
        total = 0.0
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            inputs = left_pad([w[:-1] for w in batch], max_len).to(ranker.device)
            targets = left_pad([w[1:] for w in batch], max_len).to(ranker.device)
            real = targets != 0  # score only real positions: the full softmax is most of the cost
            loss = linear_cross_entropy(model(inputs)[real], model.item_vectors, targets[real] - 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        model.eval()
        ndcg = evaluate_ranker(ranker, split.valid, catalog, progress=False)["NDCG@10"]
        log.append({"epoch": epoch, "loss": round(total / len(windows), 4), "valid_ndcg@10": ndcg})
        if ndcg > best:
            best, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", ndcg=f"{ndcg:.4f}", best=f"{best:.4f}@{best_epoch}")
        if epoch - best_epoch >= patience or (max_minutes and time.time() - started > max_minutes * 60):
            break
    model.load_state_dict(best_state)
    info = {"hparams": hparams, "log": log, "best_epoch": best_epoch, "best_valid_ndcg@10": best,
            "epochs_run": log[-1]["epoch"], "lr": lr, "batch_size": batch_size, "seed": seed}
    return SASRecRanker(model, item_ids), info


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=dataset_folder)
    p.add_argument("--out", required=True)
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@10 before stopping")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time (the best epoch is kept)")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, args.max_history)
    item_ids = sorted(dataset.catalog.titles)
    ranker, info = train(split, item_ids, args.seed, args.max_epochs, args.patience, args.max_minutes, dropout=args.dropout,
                          device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ranker.save(out, info)
    info["seconds"] = round(time.time() - started, 1)
    (out / "training.json").write_text(json.dumps(info, indent=1))
    plot_validation(info["log"], out / "training.png", f"{dataset.name} SASRec")
    print(f"saved {out}: best valid NDCG@10 {info['best_valid_ndcg@10']:.4f} at epoch {info['best_epoch']} in {info['seconds']} s")
    return out


if __name__ == "__main__":
    main()
