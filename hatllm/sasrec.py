"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation, the baseline and the
LLM's teacher and decode-time prior (`hatllm.core.fusion`); trained by `hatllm.training.sasrec`.

The standard architecture of `../shared/notes/reference-results.md`: item embedding x sqrt(d) plus a
learned position embedding (the last item gets the last position), 2 pre-LN causal blocks (1 head,
point-wise FFN d -> d -> d), a final LayerNorm, scores by dot product with the shared item embedding,
xavier-normal weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hatllm.core.fusion import ItemLogProbs

NO_OPINION = ItemLogProbs((), np.empty(0))


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
        # nn.Embedding's default N(0, 1), scaled by sqrt(d), drowns the position signal and stalls training
        # (validation NDCG@10 on ml-1m 0.015 vs 0.108 after 5 epochs): xavier-normal, as the reference.
        for name, weight in self.named_parameters():
            if weight.dim() > 1:
                nn.init.xavier_normal_(weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state per position of left-padded item index sequences [B, T]."""
        T = seqs.shape[1]
        positions = torch.arange(self.max_len - T, self.max_len, device=seqs.device)
        x = self.item_emb(seqs) * self.item_emb.embedding_dim**0.5 + self.pos_emb(positions)
        x = self.dropout(x) * (seqs != 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=seqs.device), 1)
        return self.norm(self.blocks(x, mask=causal))

    @property
    def item_vectors(self) -> torch.Tensor:
        """The output embedding of every item, in item-index order (the input embeddings, tied; 0 is padding)."""
        return self.item_emb.weight[1:]

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_vectors.T


def left_pad(seqs: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([[0] * (length - len(s)) + s[-length:] for s in seqs])


class SASRecRanker:
    name = "sasrec"

    def __init__(self, model: SASRec, item_ids: list[str]):
        self.model = model.eval()
        self.device = model.item_emb.weight.device
        self.item_ids = item_ids
        self._items = tuple(item_ids)  # one tuple for every prior row: see ItemLogProbs
        self.index = {item: i + 1 for i, item in enumerate(item_ids)}

    @torch.no_grad()
    def score_batch(self, histories: list[tuple[str, ...]]) -> torch.Tensor:
        """Scores [B, num_items] (column i is item_ids[i]) of the item after each history."""
        seqs = left_pad([[self.index[i] for i in h] for h in histories], self.model.max_len)
        return self.model.scores(self.model(seqs.to(self.device))[:, -1])

    def log_probs_batch(self, histories: list[tuple[str, ...]]) -> list[ItemLogProbs]:
        """Each item's log-probability of being next, per history (a fusion prior, `hatllm.core.fusion`). Items
        it was not trained on are left out of the histories; with none left it has no opinion (no items)."""
        known = [tuple(i for i in h if i in self.index) for h in histories]
        rows = self.score_batch([h for h in known if h]).log_softmax(-1).double().cpu().numpy() if any(known) else []
        rows = iter(rows)
        return [ItemLogProbs(self._items, next(rows)) if h else NO_OPINION for h in known]

    def rank_batch(self, histories: list[tuple[str, ...]], k: int, excludes: list[set[str]]) -> list[list[tuple[str, float]]]:
        scores = self.score_batch(histories)
        out = []
        for row, exclude in zip(scores, excludes):
            excluded = [self.index[i] - 1 for i in exclude if i in self.index]
            row[excluded] = float("-inf")
            top = row.topk(min(k, len(self.item_ids) - len(excluded)))
            out.append([(self.item_ids[i], s) for s, i in zip(top.values.tolist(), top.indices.tolist())])
        return out

    def save(self, path: str | Path, info: dict) -> None:
        torch.save({"model": self.model.state_dict(), "item_ids": self.item_ids, "hparams": info["hparams"]}, Path(path) / "sasrec.pt")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "SASRecRanker":
        state = torch.load(Path(path) / "sasrec.pt", map_location="cpu", weights_only=False)
        model = SASRec(len(state["item_ids"]), **state["hparams"])
        model.load_state_dict(state["model"])
        return cls(model.to(device), state["item_ids"])


FUSION_FILE = "fusion.json"


def save_fusion(model_dir: str | Path, prior_dir: str | Path, weight: float) -> None:
    """Record in an LLM checkpoint that its search fuses this SASRec with this weight."""
    prior = os.path.relpath(Path(prior_dir).resolve(), Path(model_dir).resolve())
    (Path(model_dir) / FUSION_FILE).write_text(json.dumps({"prior": str(prior), "weight": weight}) + "\n")


def load_fusion(model_dir: str | Path) -> tuple[SASRecRanker, float] | None:
    """The SASRec prior and weight an LLM checkpoint is served with; None if it has none (or weight 0:
    tuning found that the LLM alone ranks best)."""
    path = Path(model_dir) / FUSION_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    if not config["weight"]:
        return None
    return SASRecRanker.load(Path(model_dir) / config["prior"]), float(config["weight"])
