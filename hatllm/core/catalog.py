"""A catalog as one checkpoint sees it: titles, each item's code (for a model trained with item codes),
the decoding trie over them, and prompts built from item ids. Training, evaluation, benchmarks and the
service all build it here, so a prompt and a trie can never disagree about an item's tokens.

A catalog that changes (the service's) is built once, then patched: `with_changes` lays the items
added, retitled or removed since the full build over it (`PatchedTrie`), at a cost proportional to the
changes, not to the catalog. Whoever owns it rebuilds it in full now and then (`patch_size`), in the
background, and re-applies the changes made meanwhile.
"""

from __future__ import annotations

from collections import ChainMap, Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from hatllm.core.arrays import select_rows
from hatllm.core.item_codes import Code, ItemCodes, NearestCode
from hatllm.core.prompt import PromptBuilder
from hatllm.core.trie import PatchedTrie, TitleTrie, popularity_rank


@dataclass(frozen=True)
class ModelCatalog:
    builder: PromptBuilder
    titles: Mapping[str, str]
    codes: Mapping[str, Code] | None
    trie: TitleTrie | PatchedTrie
    item_codes: ItemCodes | None = None  # the checkpoint's own codes
    nearest: NearestCode | None = None  # codes for items the checkpoint has none for
    base: "ModelCatalog | None" = None  # the fully built catalog this one patches
    changes: Mapping[str, str | None] = field(default_factory=dict)  # since `base`: item -> title, None = removed
    popular: Sequence[str] = ()  # the full build's items, most interacted first (its trie's tie order)

    @classmethod
    def build(cls, builder: PromptBuilder, titles: Mapping[str, str], item_codes: ItemCodes | None,
              popularity: Mapping[str, float] | None = None) -> "ModelCatalog":
        titles = dict(titles)  # one copy, read from here on (a patched catalog's titles are an overlay)
        items = list(titles)
        tokens, lengths = builder.title_tokens_batch([titles[i] for i in items])
        codes = nearest = None
        if item_codes:
            coded = _has_own_code(items, item_codes)
            nearest = NearestCode(item_codes, [i for i, c in zip(items, coded) if c], *select_rows(tokens, lengths, coded))
            codes = cls._codes(items, tokens, lengths, coded, item_codes, nearest)
        rank = popularity_rank(items, popularity)
        trie = TitleTrie.from_title_tokens(items, tokens, lengths, builder.item_close_id, codes, rank)
        return cls(builder, titles, codes, trie, item_codes, nearest, popular=[items[i] for i in np.argsort(rank)])

    @staticmethod
    def _codes(items: Sequence[str], tokens: np.ndarray, lengths: np.ndarray, coded: np.ndarray, item_codes: ItemCodes,
               nearest: NearestCode) -> dict[str, Code]:
        """Each item's own code (where `coded`), or its nearest coded item's."""
        codes = {item: item_codes.codes[item] for item, own in zip(items, coded) if own}
        return codes | nearest.assign([i for i, c in zip(items, coded) if not c], *select_rows(tokens, lengths, ~coded))

    @classmethod
    def for_checkpoint(cls, path: str | Path, titles: Mapping[str, str], popularity: Counter | None = None) -> "ModelCatalog":
        return cls.build(PromptBuilder.from_checkpoint(path), titles, ItemCodes.load(path), popularity)

    @property
    def patch_size(self) -> int:
        """Items changed since the last full build."""
        return len(self.changes)

    def with_changes(self, changes: Mapping[str, str | None], popularity: Mapping[str, float] | None = None) -> "ModelCatalog":
        """This catalog with `changes` (item -> its title now, None for removed) applied, built from the full
        build's trie and every change since it. A removed trained item may still lend its code to a new
        item until the next full build."""
        base = self.base or self
        merged = {**self.changes, **changes}
        added = [item for item, title in merged.items() if title is not None and base.titles.get(item) != title]
        removed = [item for item, title in merged.items() if item in base.titles and base.titles[item] != title]
        tokens, lengths = self.builder.title_tokens_batch([merged[item] for item in added])
        added_codes = (self._codes(added, tokens, lengths, _has_own_code(added, base.item_codes), base.item_codes, base.nearest)
                       if base.item_codes else None)
        added_trie = TitleTrie.from_title_tokens(added, tokens, lengths, self.builder.item_close_id, added_codes,
                                                 popularity_rank(added, popularity))
        codes = ChainMap(added_codes, base.codes) if added_codes is not None else None
        return ModelCatalog(self.builder, PatchedTitles(base.titles, merged), codes, PatchedTrie(base.trie, removed, added_trie),
                            base.item_codes, base.nearest, base, merged, base.popular)

    def most_popular(self) -> Iterator[str]:
        """Catalog items, most interacted first; items added since the full build follow, in the order they came."""
        base = self.base or self
        added = (item for item, title in self.changes.items() if title is not None and item not in base.titles)
        return (item for item in chain(self.popular, added) if item in self.titles)

    def prompt(self, history: Sequence[str]) -> list[int]:
        """The prompt recommending the item after `history` (item ids, oldest first)."""
        return self.builder.prompt([self.titles[i] for i in history], [self.codes[i] for i in history] if self.codes else None)


class PatchedTitles(Mapping[str, str]):
    """A catalog's titles with `changes` (item -> title, None: removed) laid over the full build's `base`,
    without copying them: a copy of a million titles per change would hold the GIL for 50-80 ms."""

    def __init__(self, base: Mapping[str, str], changes: Mapping[str, str | None]):
        self.base, self.changes = base, changes
        self._len = len(base) + sum((title is not None) - (item in base) for item, title in changes.items())

    def __getitem__(self, item: str) -> str:
        title = self.changes[item] if item in self.changes else self.base[item]
        if title is None:
            raise KeyError(item)
        return title

    def __iter__(self) -> Iterator[str]:
        yield from (item for item in self.base if item not in self.changes)
        yield from (item for item, title in self.changes.items() if title is not None)

    def __len__(self) -> int:
        return self._len


def _has_own_code(items: Sequence[str], item_codes: ItemCodes) -> np.ndarray:
    return np.fromiter((item in item_codes.codes for item in items), bool, len(items))
