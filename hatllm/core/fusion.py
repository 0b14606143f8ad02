"""Decode-time fusion (D3-style): a second recommender's item distribution steers the constrained search.

At a trie node the search scores each allowed child token by the LLM's logit plus ``weight`` times the log
of the prior's probability mass of that child's live subtree, renormalised over the allowed children
(a product of experts at every step). Where a child holds one item (an item code), that is the LLM's
logit plus ``weight`` times the prior's log-probability of the item; where a branch holds many (a shared
code, a title prefix), the prior speaks for all of them at once. Items are numbered in trie order, so
each subtree's mass is one difference of prefix sums: O(1) per child.

The same bias goes with a vLLM request (`model_patch.trie_mask`): the engine adds it before the allowed
tokens are renormalised (``processed_logprobs``), so the engine search and the reference search stay
equal. Items the prior does not know (added after it was trained) get its lowest log-probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping
from weakref import WeakKeyDictionary

import numpy as np

from hatllm.core.trie import PatchedTrie, TitleTrie, TrieView

BIAS_LIMIT = 100.0  # as vLLM clamps a request's logit_bias: a child the prior gives no mass stays reachable


@dataclass(frozen=True, eq=False)
class ItemLogProbs:
    """A prior's log-probability of each item being next: `values[i]` is `items[i]`'s. A prior hands out the
    same `items` tuple with every row, so the items' places in a trie are looked up once per trie, not per
    request (16,859 dictionary lookups on amazon-games, millions on a large catalog)."""

    items: tuple[str, ...]
    values: np.ndarray

    @classmethod
    def from_mapping(cls, log_probs: Mapping[str, float]) -> "ItemLogProbs":
        return cls(tuple(log_probs), np.fromiter(log_probs.values(), float, len(log_probs)))


_POSITIONS: WeakKeyDictionary = WeakKeyDictionary()  # trie -> (items, their positions in it): the last prior's


def _positions(trie: TitleTrie | PatchedTrie, items: tuple[str, ...]) -> np.ndarray:
    cached = _POSITIONS.get(trie)
    if cached is None or cached[0] is not items:
        cached = _POSITIONS[trie] = (items, trie.positions(items))
    return cached[1]


class ItemPrior:
    def __init__(self, view: TrieView, log_probs: ItemLogProbs | Mapping[str, float], weight: float):
        trie = view.trie
        self.trie, self.view, self.weight = trie, view, weight
        if not isinstance(log_probs, ItemLogProbs):
            log_probs = ItemLogProbs.from_mapping(log_probs)
        values = log_probs.values
        floor, top = (values.min(), values.max()) if len(values) else (0.0, 0.0)  # shift before exp: representable
        masses = np.full(len(trie.item_order), math.exp(floor - top))  # as arrays: a catalog of millions
        at = _positions(trie, log_probs.items)
        masses[at[at >= 0]] = np.exp(values[at >= 0] - top)
        masses[~view.live_positions()] = 0.0
        self._cumulative = np.r_[0.0, np.cumsum(masses)]

    def _mass(self, node: int) -> float:
        return float(sum(self._cumulative[end] - self._cumulative[start] for start, end in self.trie.spans(node)))

    def log_mass(self, node: int) -> float:
        return _log(self._mass(node))

    def logit_bias(self, node: int) -> np.ndarray:
        """The bias of each allowed child of `node`, in `view.allowed(node)` order: `weight` x the log of the
        share of the node's live mass under each child (<= 0), clamped (a child without mass stays allowed)."""
        parent = self.log_mass(node)
        children = self.view.allowed(node)[1]
        if isinstance(self.trie, TitleTrie):  # one span per node: every child's mass in one array operation
            starts, ends = self.trie.span_arrays(children)
            masses = self._cumulative[ends] - self._cumulative[starts]
        else:
            masses = np.array([self._mass(child) for child in children.tolist()])
        with np.errstate(divide="ignore"):  # a child without mass: log 0 = -inf, clamped below
            return np.maximum(-BIAS_LIMIT, self.weight * (np.log(masses) - parent))


def _log(mass: float) -> float:
    return math.log(mass) if mass > 0 else -math.inf
