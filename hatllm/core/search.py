"""Catalog-constrained beam search: one algorithm, driven by any scorer (HF reference or vLLM engine).

Scores. At each step the model's next-token distribution is renormalised over the tokens the trie
allows at that node (for this request's view); an item's score is the sum of those log-probabilities
along its title and close delimiter, i.e. its log-probability under the model *restricted to the allowed
items*. A token the trie forces (one allowed child) therefore adds exactly 0 and needs no model step:
chains of forced tokens are appended at once. Scores are not length normalised.

Search. Active beams start at the trie root. Each model step scores every active beam; each beam proposes
its `beam_width` best allowed tokens (standard beam search: a candidate outside its beam's top never
survives against a full beam set). Candidates that reach a leaf (the close delimiter) are finished; the
best `beam_width` unfinished ones stay active. The search stops when no beam is active, or when the
finished leaves hold at least `num_items` live items that all score at least as high as the best active
beam (scores only decrease); before that, an active beam scoring below the `num_items`-th finished item
is dropped, since nothing below it can enter the list. The result is the finished leaves by score (ties
by leaf id), expanded into their items in the trie's tie order. It comes back shorter than `num_items`
only when the view holds fewer live items (`SearchResult.available`).

Item codes. A model trained with item codes (`item_codes`) decides the item with its code: only the code
is ever a training target, never the title after it, so the model's scores for title tokens say nothing.
A beam is therefore finished once it has its code (`TitleTrie.code_depth` tokens), for every live item
under it, and the items sharing a code (items added after training take their nearest trained item's)
share its probability evenly: each child of a node within the code is scored with the bias ``log 1/n``
for its n live items, so a code shared by n items ranks as each of them would, 1/n of the model's
probability for the code. A search is one model step at any catalog size. Where every item has a code
of its own (the catalog the model was trained on) this adds nothing, and titles stay forced as before.

`TrieBeamSearch` holds the state and never calls a model: a driver asks `active` beams to be scored,
passes the answers to `advance`, and repeats until `done`. `hatllm.reference.search` drives it with
the HF reference model; `model_patch.engine_topk` drives it with the vLLM engine, batching many searches.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import islice
from typing import Mapping, Sequence

import numpy as np

from hatllm.core.fusion import ItemPrior
from hatllm.core.trie import ROOT, TrieView

MAX_BEAM_WIDTH = 100  # the widest search the service and the engine accept (the engine's max_logprobs)


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]
    node: int
    score: float


@dataclass
class SearchResult:
    items: list[tuple[str, float]]  # (item id, score), best first
    model_steps: int  # scoring rounds; each scores all active beams at once
    available: int  # live items in the request's view: fewer than asked means the list is complete

    @property
    def exhausted(self) -> bool:
        """True when fewer items could be returned than asked because fewer exist."""
        return len(self.items) == self.available


class TrieBeamSearch:
    def __init__(self, view: TrieView, num_items: int, beam_width: int | None = None, prior: ItemPrior | None = None):
        """`beam_width`: default `num_items`, and never below it: a narrower beam could finish fewer items
        than the list asks for (the rule of HF's `num_return_sequences <= num_beams`). `prior`: a second
        recommender fused into every step's scores (`fusion`); None for the LLM alone."""
        beam_width = beam_width or num_items
        if num_items < 1:
            raise ValueError("num_items must be at least 1")
        if not num_items <= beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in {num_items}..{MAX_BEAM_WIDTH} for {num_items} items, got {beam_width}")
        self.view, self.num_items, self.beam_width, self.prior = view, num_items, beam_width, prior
        self.finished: list[tuple[float, int]] = []  # (score, leaf)
        self.active: list[Beam] = []
        self.model_steps = 0
        if view.live_count(ROOT) > 0:
            self._admit([Beam((), ROOT, 0.0)])

    @property
    def done(self) -> bool:
        return not self.active

    def allowed_tokens(self, beam: Beam) -> np.ndarray:
        """The tokens the trie allows after `beam`, by token (shared: do not modify)."""
        return self.view.allowed(beam.node)[0]

    def logit_bias(self, beam: Beam) -> np.ndarray | None:
        """What to add to the model's logits of the allowed tokens (in `allowed_tokens` order) before
        renormalising: the fusion prior's, and within an item code, each child's share of the items that
        share it (`log 1/n` for a child whose items will share its score n ways)."""
        bias = self.prior.logit_bias(beam.node) if self.prior is not None else None
        if len(beam.tokens) < self.view.trie.code_depth:
            counts = self.view.allowed_counts(beam.node)
            if counts.max(initial=1) > 1:  # a code of its own for every item (a trained catalog): nothing to add
                bias = -np.log(counts) if bias is None else bias - np.log(counts)
        return bias

    def advance(self, logprobs: Sequence[Mapping[int, float]]) -> None:
        """`logprobs[i]`: allowed next tokens of `active[i]` -> log-probability renormalised over the
        allowed tokens; at least the beam's `beam_width` best (more are ignored)."""
        if len(logprobs) != len(self.active):
            raise ValueError(f"{len(logprobs)} answers for {len(self.active)} active beams")
        self.model_steps += 1
        candidates = []
        for b, (beam, scored) in enumerate(zip(self.active, logprobs)):
            best = heapq.nsmallest(self.beam_width, scored.items(), key=lambda t: (-t[1], t[0]))
            children = self.view.child_nodes(beam.node, [tok for tok, _ in best])
            candidates += [(beam.score + lp, b, tok, child) for (tok, lp), child in zip(best, children)]
        candidates.sort(key=lambda c: (-c[0], c[2], c[1]))
        self.finished += [(score, child) for score, _, _, child in candidates if self.view.is_leaf(child)]
        unfinished = [c for c in candidates if not self.view.is_leaf(c[3])][: self.beam_width]
        parents = self.active
        self._admit([Beam(parents[b].tokens + (tok,), child, score) for score, b, tok, child in unfinished])

    def _admit(self, beams: list[Beam]) -> None:
        """Make `beams` (best first) active, after appending the tokens the trie forces; a beam that has
        chosen its item code is finished, for all the items that share the code."""
        self.active = []
        for beam in beams:
            beam = self._follow_forced(beam)
            if self.view.is_leaf(beam.node) or len(beam.tokens) >= self.view.trie.code_depth > 0:
                self.finished.append((beam.score, beam.node))
            else:
                self.active.append(beam)
        ranked = self.ranked()
        if self.active and len(ranked) == self.num_items:
            # Scores only decrease, so a beam below the list's last item can never enter the list, and
            # dropping it frees no slot for a beam that could (any beam it displaced scores lower still).
            last = ranked[-1][1]
            self.active = [] if last >= self.active[0].score else [beam for beam in self.active if beam.score >= last]

    def _follow_forced(self, beam: Beam) -> Beam:
        while not self.view.is_leaf(beam.node):
            tokens, children = self.view.allowed(beam.node)
            if len(tokens) != 1:
                break
            beam = Beam(beam.tokens + (int(tokens[0]),), int(children[0]), beam.score)
        return beam

    def ranked(self) -> list[tuple[str, float]]:
        items = []
        for score, node in sorted(self.finished, key=lambda f: (-f[0], f[1])):
            items += [(item, score) for item in islice(self.view.items_below(node), self.num_items - len(items))]
            if len(items) >= self.num_items:
                break
        return items[: self.num_items]

    def result(self) -> SearchResult:
        return SearchResult(self.ranked(), self.model_steps, self.view.live_count(ROOT))
