"""The item-delimited prompt, built at token level: one builder for training, evaluation and serving.

Layout (token ids):  [BOS] instruction  <item> title_1 </item> ... <item> title_n </item>  <item>
The prompt ends with the open delimiter of the next item, so the model's next tokens are that item's
title followed by its close delimiter. Nothing but items follows the first item (see `masks`).

Each title is tokenized alone, with no special tokens, and cached: a title has exactly the same tokens
in a history, in a training target, and in the decoding trie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

DEFAULT_INSTRUCTION = "A user interacted with these items in order. Predict the next item."


@dataclass
class PromptBuilder:
    tokenizer: object  # any HF tokenizer
    item_open_id: int
    item_close_id: int
    instruction: str = DEFAULT_INSTRUCTION
    _title_cache: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_model_config(cls, tokenizer, config) -> "PromptBuilder":
        """The builder a checkpoint was trained with: delimiters and instruction come from config.json."""
        return cls(
            tokenizer,
            config.hat_item_open_token_id,
            config.hat_item_close_token_id,
            getattr(config, "hat_instruction", DEFAULT_INSTRUCTION),
        )

    def title_tokens(self, title: str) -> tuple[int, ...]:
        tokens = self._title_cache.get(title)
        if tokens is None:
            tokens = tuple(self.tokenizer.encode(title, add_special_tokens=False))
            if not tokens:
                raise ValueError(f"title {title!r} has no tokens")
            if self.item_open_id in tokens or self.item_close_id in tokens:
                raise ValueError(f"title {title!r} contains an item delimiter token")
            self._title_cache[title] = tokens
        return tokens

    def item_tokens(self, title: str) -> list[int]:
        return [self.item_open_id, *self.title_tokens(title), self.item_close_id]

    def prefix(self) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer.encode(self.instruction, add_special_tokens=False)

    def prompt(self, history_titles: Sequence[str]) -> list[int]:
        """Prompt for recommending the item after `history_titles` (oldest first)."""
        ids = self.prefix()
        for title in history_titles:
            ids += self.item_tokens(title)
        ids.append(self.item_open_id)
        return ids

    def training_sequence(self, titles: Sequence[str]) -> tuple[list[int], list[bool]]:
        """Token ids of a whole sequence of items and, per position, whether its *next* token is a
        training target (title tokens and close delimiters of every item; the open delimiters are
        given by the prompt, never generated)."""
        ids = self.prefix()
        for title in titles:
            ids += self.item_tokens(title)
        predicts = [nxt != self.item_open_id for nxt in ids[1:]] + [False]
        first = len(self.prefix())
        predicts[: first] = [False] * first  # positions before the first item's open token
        return ids, predicts
