"""Collaborative item codes: one token per item at the start of its span, ``<item> CODE title </item>``.

A code token is an item's own embedding, learned from interaction data like SASRec's item embeddings, so
choosing the next item is one softmax over the catalog's codes; the title after the code is forced by the
trie (one child per code) and costs no model step. Titles stay in the prompt, so the HatLLM masks still
build each item's representation from its code and its title.

The checkpoint stores ``item_codes.json`` (item id -> code token ids). An item added to the catalog after
training has no code of its own: it shares the code of the trained item whose title is closest (token
Jaccard, among the items sharing its rarest title tokens). Titles are never training targets, so the
search does not let the model's title scores tell the items under a code apart: they share the code's
probability evenly (`search`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hatllm.core.arrays import ragged_positions, run_heads, run_starts

CODES_FILE = "item_codes.json"
RARE_TOKENS = 3  # a new item's title tokens whose coded items are candidates for its code
CANDIDATES_PER_TOKEN = 8  # donors per rare token: a rare token has few; a common one would cost without telling much
NEW_ITEMS_PER_CHUNK = 2048  # bounds the candidate arrays in memory
ONE_KEY_LIMIT = 1 << 62  # sort keys (item, rarity) below it fit in an int64
DENSE_MEMBERSHIP_CELLS = 1 << 30  # donors x title vocabulary up to which membership is a bit table (128 MB)
CODE_TOKEN = "<|code_{}|>"

Code = tuple[int, ...]


class ItemCodes:
    def __init__(self, codes: Mapping[str, Sequence[int]]):
        self.codes: dict[str, Code] = {item: tuple(code) for item, code in codes.items()}

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def depth(self) -> int:
        """Tokens in the longest code: with 1, the code decides the item and a search is one model step."""
        return max(map(len, self.codes.values()), default=0)

    @staticmethod
    def code_tokens(num_items: int) -> list[str]:
        return [CODE_TOKEN.format(i) for i in range(num_items)]

    def save(self, folder: str | Path) -> None:
        (Path(folder) / CODES_FILE).write_text(json.dumps({"codes": self.codes}))

    @classmethod
    def load(cls, folder: str | Path) -> "ItemCodes | None":
        """The checkpoint's codes; None for a model trained without them."""
        path = Path(folder) / CODES_FILE
        return cls(json.loads(path.read_text())["codes"]) if path.is_file() else None


class NearestCode:
    """Codes for items the model was not trained on: the code of the coded item ("donor") with the most
    similar title (token Jaccard, ties to the earlier donor) among those sharing one of the item's rarest
    title tokens. Looking only there keeps the cost per new item bounded however large the catalog
    (common tokens such as "(" or "The" would make every donor a candidate). Built once per set of donors,
    it assigns any number of new items as array operations, in chunks: a million take seconds."""

    def __init__(self, codes: ItemCodes, donors: Sequence[str], tokens: np.ndarray, lengths: np.ndarray):
        """`donors`: coded items, with their titles' tokens as a batch (`PromptBuilder.title_tokens_batch`)."""
        self.codes = [codes.codes[d] for d in donors]
        self.fallback = min(codes.codes.values())  # no donor shares a token: the first code
        owner, word_ids = distinct_tokens(tokens, lengths)
        self.size = np.bincount(owner, minlength=len(donors))  # distinct tokens per donor title
        by_token = np.lexsort((owner, word_ids))
        self.token_donors = owner[by_token]  # donors holding each token, by token then donor order (CSR)
        self.vocabulary, self.first, self.frequency = np.unique(word_ids[by_token], return_index=True, return_counts=True)
        word = np.searchsorted(self.vocabulary, word_ids)
        if len(donors) * len(self.vocabulary) <= DENSE_MEMBERSHIP_CELLS:  # which donor holds which word: a bit table
            # One bit per cell: the lookups are random, and a table 8x smaller than bytes stays in the CPU's caches.
            self._holds = np.zeros((len(donors), (len(self.vocabulary) + 7) // 8), np.uint8)
            np.bitwise_or.at(self._holds, (owner, word >> 3), (1 << (word & 7)).astype(np.uint8))
        else:  # or sorted (donor, word) keys, for a catalog of many trained items
            self._holds = np.sort(owner * len(self.vocabulary) + word)

    def _donor_holds(self, donor: np.ndarray, word: np.ndarray) -> np.ndarray:
        if self._holds.ndim == 2:
            return ((self._holds[donor, word >> 3] >> (word & 7).astype(np.uint8)) & 1).astype(bool)
        keys = donor * len(self.vocabulary) + word
        return self._holds[np.minimum(np.searchsorted(self._holds, keys), len(self._holds) - 1)] == keys

    def assign(self, items: Sequence[str], tokens: np.ndarray, lengths: np.ndarray) -> dict[str, Code]:
        """`items` with their titles' tokens as a batch -> each one's code."""
        resolved = dict.fromkeys(items, self.fallback)
        if not len(self.vocabulary):
            return resolved
        owner, word_ids = distinct_tokens(tokens, lengths)
        size = np.bincount(owner, minlength=len(items))
        word = np.searchsorted(self.vocabulary, word_ids)
        known = (word < len(self.vocabulary)) & (self.vocabulary[np.minimum(word, len(self.vocabulary) - 1)] == word_ids)
        owner, word = owner[known], word[known]
        # Each item's rarest tokens first (then by token id: `vocabulary` is sorted), as one integer key when it
        # fits: a radix sort, several times faster than a lexsort of three keys.
        span = (int(self.frequency.max()) + 1) * len(self.vocabulary)
        rarity = self.frequency[word] * len(self.vocabulary) + word
        order = (np.argsort(owner * span + rarity, kind="stable") if len(items) * span < ONE_KEY_LIMIT
                 else np.lexsort((rarity, owner)))
        owner, word = owner[order], word[order]
        starts = np.flatnonzero(run_heads(owner))
        rare = np.arange(len(owner)) - np.repeat(starts, np.diff(np.r_[starts, len(owner)])) < RARE_TOKENS
        bounds = np.searchsorted(owner, np.arange(0, len(items) + NEW_ITEMS_PER_CHUNK, NEW_ITEMS_PER_CHUNK))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo == hi:
                continue
            o, w, r = owner[lo:hi], word[lo:hi], rare[lo:hi]
            per_rare = np.minimum(self.frequency[w[r]], CANDIDATES_PER_TOKEN)
            candidate_item = np.repeat(o[r], per_rare)
            candidate = self.token_donors[ragged_positions(self.first[w[r]], per_rare)]
            # |title ∩ candidate|: the item's known tokens looked up in the candidate's set.
            item_start = np.searchsorted(o, candidate_item)
            item_words = np.searchsorted(o, candidate_item, side="right") - item_start
            found = self._donor_holds(np.repeat(candidate, item_words), w[ragged_positions(item_start, item_words)])
            shared = np.add.reduceat(found, run_starts(item_words))
            jaccard = shared / (size[candidate_item] + self.size[candidate] - shared)
            # Per item (candidates are grouped by item): the best Jaccard, then the earliest donor with it.
            groups = np.flatnonzero(run_heads(candidate_item))
            counts = np.diff(np.r_[groups, len(candidate_item)])
            top = jaccard == np.repeat(np.maximum.reduceat(jaccard, groups), counts)
            best = np.minimum.reduceat(np.where(top, candidate, len(self.codes)), groups)
            for item, donor in zip(candidate_item[groups].tolist(), best.tolist()):
                resolved[items[item]] = self.codes[donor]
        return resolved


def distinct_tokens(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, token) pairs of each row's distinct tokens, by row then token."""
    width = int(tokens.max(initial=0)) + 1
    pairs = np.sort(np.repeat(np.arange(len(lengths)), lengths) * width + tokens)  # a sort: np.unique hashes, slower here
    pairs = pairs[run_heads(pairs)]
    return pairs // width, pairs % width

