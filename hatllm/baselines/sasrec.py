"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation, as a baseline.

Faithful to the paper's architecture (item + learned position embeddings, pre-LN causal self-attention
blocks with point-wise feed-forward, shared item embeddings for scoring). One deliberate, common change:
training uses full softmax cross-entropy over the catalog instead of one sampled negative with binary
cross-entropy, which is known to be stronger (e.g. Klenitskiy & Vasilev, RecSys 2023). It trains on the
same windows of the same leave-one-out split as the LLM, with the same history cap, and keeps the epoch
with the best validation NDCG@10.

    python -m hatllm.baselines.sasrec --data data/ml-latest-small --out runs/ml-latest-small/sasrec
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data import Example, Split, leave_one_out, load_dataset
from ..metrics import hit_and_ndcg, target_rank


class SASRec(nn.Module):
    def __init__(self, num_items: int, max_len: int, dim: int = 64, blocks: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim, dropout, activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state per position of left-padded item index sequences [B, T]."""
        T = seqs.shape[1]
        x = self.item_emb(seqs) * self.item_emb.embedding_dim**0.5 + self.pos_emb(torch.arange(T))
        x = self.dropout(x) * (seqs != 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        return self.norm(self.blocks(x, mask=causal))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[1:].T  # index 0 is padding


def left_pad(seqs: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([[0] * (length - len(s)) + s[-length:] for s in seqs])


class SASRecRanker:
    name = "sasrec"

    def __init__(self, model: SASRec, item_ids: list[str]):
        self.model = model.eval()
        self.item_ids = item_ids
        self.index = {item: i + 1 for i, item in enumerate(item_ids)}

    @torch.no_grad()
    def score_batch(self, histories: list[tuple[str, ...]]) -> torch.Tensor:
        seqs = left_pad([[self.index[i] for i in h] for h in histories], self.model.max_len)
        return self.model.scores(self.model(seqs)[:, -1])

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        scores = self.score_batch(histories)
        out = []
        for row, exclude in zip(scores, excludes):
            excluded = [self.index[i] - 1 for i in exclude if i in self.index]
            row[excluded] = float("-inf")
            top = row.topk(min(k, len(self.item_ids) - len(excluded)))
            out.append([(self.item_ids[i], s) for s, i in zip(top.values.tolist(), top.indices.tolist())])
        return out

    def rank(self, history: tuple[str, ...], k: int, exclude: set[str]) -> list[tuple[str, float]]:
        return self.rank_batch([history], k, [exclude])[0]

    @classmethod
    def load(cls, path: str | Path) -> "SASRecRanker":
        state = torch.load(Path(path) / "sasrec.pt", weights_only=False)
        model = SASRec(len(state["item_ids"]), **state["hparams"])
        model.load_state_dict(state["model"])
        return cls(model, state["item_ids"])


def validation_ndcg(ranker: SASRecRanker, examples: list[Example], k: int = 10) -> float:
    total = 0.0
    for start in range(0, len(examples), 256):
        batch = examples[start : start + 256]
        ranked = ranker.rank_batch([ex.history for ex in batch], k, [set(ex.history) for ex in batch])
        for items, ex in zip(ranked, batch):
            total += hit_and_ndcg(target_rank([i for i, _ in items], ex.target), (k,))[f"NDCG@{k}"]
    return total / max(len(examples), 1)


def train(split: Split, item_ids: list[str], epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-3,
          dim: int = 64, blocks: int = 2, dropout: float = 0.2) -> tuple[SASRecRanker, dict]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    max_len = split.max_history
    hparams = dict(max_len=max_len, dim=dim, blocks=blocks, dropout=dropout)
    model = SASRec(len(item_ids), **hparams)
    ranker = SASRecRanker(model, item_ids)
    size = max_len + 1  # the same windows as the LLM: max_history items predict the next one
    windows = []
    for seq in split.train.values():
        idx = [ranker.index[i] for i in seq]
        windows += [idx[max(0, end - size) : end] for end in range(len(idx), 1, -size)]
    windows = [w for w in windows if len(w) > 1]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    best, best_state, log = -1.0, None, []
    for epoch in tqdm(range(1, epochs + 1), desc="sasrec", unit="epoch"):
        model.train()
        rng.shuffle(windows)
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            inputs, targets = left_pad([w[:-1] for w in batch], max_len), left_pad([w[1:] for w in batch], max_len)
            logits = model.scores(model(inputs))
            loss = F.cross_entropy(logits[targets != 0], targets[targets != 0] - 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 5 == 0 or epoch == epochs:
            ranker.model.eval()
            ndcg = validation_ndcg(ranker, split.valid)
            log.append({"epoch": epoch, "loss": loss.item(), "valid_ndcg@10": ndcg})
            if ndcg > best:
                best, best_state = ndcg, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return SASRecRanker(model, item_ids), {"hparams": hparams, "log": log, "best_valid_ndcg@10": best}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset, args.max_history)
    item_ids = sorted(dataset.catalog.titles)
    ranker, info = train(split, item_ids, args.epochs, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ranker.model.state_dict(), "item_ids": item_ids, "hparams": info["hparams"]}, out / "sasrec.pt")
    info["seconds"] = round(time.time() - started, 1)
    (out / "training.json").write_text(json.dumps(info, indent=1))
    print(f"saved {out}: best valid NDCG@10 {info['best_valid_ndcg@10']:.4f} in {info['seconds']} s")


if __name__ == "__main__":
    main()
