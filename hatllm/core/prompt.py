"""The item-delimited prompt, built at token level: one builder for training, evaluation and serving.

Layout (token ids):  [BOS] instruction  <item> code_1 title_1 </item> ... <item> code_n title_n </item>  <item>
The prompt ends with the open delimiter of the next item, so the model's next tokens are that item's
code, title and close delimiter. Nothing but items follows the first item (see `masks`). Codes are the
optional collaborative item tokens of `item_codes` (empty for a model trained without them).

Each title is tokenized alone, with no special tokens, and cached: a title has exactly the same tokens
in a history, in a training target, and in the decoding trie (which tokenizes a whole catalog at once,
`title_tokens_batch`, uncached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Sequence

import numpy as np

TITLE_CACHE_SIZE = 100_000
BATCH_CHUNK = 50_000  # titles tokenized per call of a batch
DEFAULT_INSTRUCTION = "A user interacted with these items in order. Predict the next item."


@dataclass
class PromptBuilder:
    tokenizer: object  # any HF tokenizer
    item_open_id: int
    item_close_id: int
    instruction: str = DEFAULT_INSTRUCTION
    _title_cache: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._special_ids = frozenset(self.tokenizer.all_special_ids)

    @classmethod
    def from_model_config(cls, tokenizer, config) -> "PromptBuilder":
        """The builder a checkpoint was trained with: delimiters and instruction come from config.json."""
        return cls(
            tokenizer,
            config.hat_item_open_token_id,
            config.hat_item_close_token_id,
            getattr(config, "hat_instruction", DEFAULT_INSTRUCTION),
        )

    @classmethod
    def from_checkpoint(cls, path) -> "PromptBuilder":
        from transformers import AutoConfig, AutoTokenizer  # tokenizer and config only, no model code

        return cls.from_model_config(AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path))

    def title_tokens(self, title: str) -> tuple[int, ...]:
        tokens = self._title_cache.get(title)
        if tokens is None:
            tokens = tuple(self.tokenizer.encode(title, add_special_tokens=False))
            self._check(title, tokens)
            if len(self._title_cache) >= TITLE_CACHE_SIZE:  # a service sees titles of a catalog without bound
                self._title_cache.clear()
            self._title_cache[title] = tokens
        return tokens

    def title_tokens_batch(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every title's tokens at once, as (tokens of all titles concatenated, tokens per title): a
        million titles in seconds, in chunks, so no Python object per token outlives its chunk."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast tokenizer: batch in Rust, no offsets
        parts, lengths = [], []
        for start in range(0, len(titles), BATCH_CHUNK):
            chunk = list(titles[start:start + BATCH_CHUNK])
            if backend is not None and hasattr(backend, "encode_batch_fast"):
                encoded = [e.ids for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                encoded = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            lengths.append(np.fromiter(map(len, encoded), np.int64, len(encoded)))
            parts.append(np.fromiter(chain.from_iterable(encoded), np.int32, int(lengths[-1].sum())))
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        bad = np.flatnonzero(lengths == 0)
        if not len(bad):
            special = np.isin(tokens, np.fromiter(self._special_ids, np.int64))
            bad = np.unique(np.repeat(np.arange(len(titles)), lengths)[special])
        if len(bad):
            self._check(titles[bad[0]], self.tokenizer.encode(titles[bad[0]], add_special_tokens=False))
        return tokens, lengths

    def _check(self, title: str, tokens: Sequence[int]) -> None:
        if not tokens:
            raise ValueError(f"title {title!r} has no tokens")
        if not self._special_ids.isdisjoint(tokens):
            raise ValueError(f"title {title!r} contains a special token (item delimiter or code)")

    def item_tokens(self, title: str, code: Sequence[int] = ()) -> list[int]:
        return [self.item_open_id, *code, *self.title_tokens(title), self.item_close_id]

    def prefix(self) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer.encode(self.instruction, add_special_tokens=False)

    def items(self, titles: Sequence[str], codes: Sequence[Sequence[int]] | None) -> list[int]:
        ids = []
        for title, code in zip(titles, codes if codes is not None else [()] * len(titles), strict=True):
            ids += self.item_tokens(title, code)
        return ids

    def prompt(self, history_titles: Sequence[str], codes: Sequence[Sequence[int]] | None = None) -> list[int]:
        """Prompt for recommending the item after `history_titles` (oldest first), with their codes."""
        return self.prefix() + self.items(history_titles, codes) + [self.item_open_id]

    def training_sequence(self, titles: Sequence[str], codes: Sequence[Sequence[int]] | None = None) -> tuple[list[int], list[bool]]:
        """Token ids of a whole sequence of items and, per position, whether its *next* token is a
        training target (codes, title tokens and close delimiters of every item; the open delimiters
        are given by the prompt, never generated)."""
        ids = self.prefix() + self.items(titles, codes)
        predicts = [nxt != self.item_open_id for nxt in ids[1:]] + [False]
        first = len(self.prefix())
        predicts[: first] = [False] * first  # positions before the first item's open token
        return ids, predicts
