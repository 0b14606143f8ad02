"""A catalog as one checkpoint sees it: titles, each item's code (for a model trained with item codes),
the decoding trie over them, and prompts built from item ids. Training, evaluation, benchmarks and the
service all build it here, so a prompt and a trie can never disagree about an item's tokens."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hatllm.core.item_codes import Code, ItemCodes
from hatllm.core.prompt import PromptBuilder
from hatllm.core.trie import TitleTrie


@dataclass(frozen=True)
class ModelCatalog:
    builder: PromptBuilder
    titles: dict[str, str]
    codes: dict[str, Code] | None
    trie: TitleTrie

    @classmethod
    def build(cls, builder: PromptBuilder, titles: dict[str, str], item_codes: ItemCodes | None,
              popularity: Counter | None = None) -> "ModelCatalog":
        codes = item_codes.for_catalog(titles, builder.title_tokens) if item_codes else None
        return cls(builder, titles, codes, TitleTrie.from_catalog(titles, builder, popularity, codes))

    @classmethod
    def for_checkpoint(cls, path: str | Path, titles: dict[str, str], popularity: Counter | None = None) -> "ModelCatalog":
        return cls.build(PromptBuilder.from_checkpoint(path), titles, ItemCodes.load(path), popularity)

    def prompt(self, history: Sequence[str]) -> list[int]:
        """The prompt recommending the item after `history` (item ids, oldest first)."""
        return self.builder.prompt([self.titles[i] for i in history], [self.codes[i] for i in history] if self.codes else None)
