"""Reference catalog-constrained beam search with the HF model (exact, simple, not fast).

Scores. At each step the model's next-token distribution is renormalised over the tokens the trie
allows at that node (for this request's view); an item's score is the sum of those log-probabilities
along its title and close delimiter, i.e. its log-probability under the model *restricted to the allowed
items*. A token the trie forces (one allowed child) therefore adds exactly 0. Scores are not length
normalised.

Search. Active beams start at the trie root. Each step expands every active beam by every allowed token.
Candidates that reach a leaf (the close delimiter) are finished; the best `beam_width` unfinished ones
stay active. The search stops when no beam is active, or when the finished leaves hold at least
`num_items` live items that all score at least as high as the best active beam (scores only decrease).
The result is the finished leaves by score (ties by leaf id), expanded into their items in tie order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .modeling import forward, logits
from .trie import ROOT, TrieView


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]
    node: int
    score: float


@dataclass
class SearchResult:
    items: list[tuple[str, float]]  # (item id, score), best first
    model_steps: int


def finished_items(finished: list[tuple[float, int]], view: TrieView, num_items: int) -> list[tuple[str, float]]:
    ranked = []
    for score, leaf in sorted(finished, key=lambda f: (-f[0], f[1])):
        ranked += [(item, score) for item in view.items(leaf)]
    return ranked[:num_items]


def expand(beams: list[Beam], next_logits: torch.Tensor, view: TrieView) -> list[tuple[float, int, int, int]]:
    """(score, beam index, token, child) for every allowed continuation, scores renormalised."""
    candidates = []
    for b, beam in enumerate(beams):
        allowed = view.allowed(beam.node)
        tokens = torch.tensor([tok for tok, _ in allowed])
        logp = next_logits[b, tokens].log_softmax(-1).tolist()
        candidates += [(beam.score + lp, b, tok, child) for (tok, child), lp in zip(allowed, logp)]
    return candidates


@torch.no_grad()
def constrained_beam_search(model, prompt: list[int], view: TrieView, num_items: int, beam_width: int) -> SearchResult:
    ids = torch.tensor([prompt])
    out = forward(model, ids, cache=DynamicCache(config=model.config))
    cache, next_logits = out.cache, logits(model, out.hidden[:, -1])
    beams, finished, steps = [Beam((), ROOT, 0.0)], [], 1
    while beams:
        candidates = expand(beams, next_logits, view)
        finished += [(score, child) for score, _, _, child in candidates if view.is_leaf(child)]
        active = sorted((c for c in candidates if not view.is_leaf(c[3])), key=lambda c: (-c[0], c[2], c[1]))
        active = active[:beam_width]
        done = finished_items(finished, view, num_items)
        if active and len(done) == num_items and done[-1][1] >= active[0][0]:
            break
        if not active:
            break
        parents = torch.tensor([b for _, b, _, _ in active])
        beams = [Beam(beams[b].tokens + (tok,), child, score) for score, b, tok, child in active]
        cache.reorder_cache(parents)
        full = torch.tensor([prompt + list(beam.tokens) for beam in beams])
        out = forward(model, full, cache=cache)
        next_logits = logits(model, out.hidden[:, -1])
        steps += 1
    return SearchResult(finished_items(finished, view, num_items), steps)
