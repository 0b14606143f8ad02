"""Collaborative item codes: one token per item at the start of its span, ``<item> CODE title </item>``.

A code token is an item's own embedding, learned from interaction data like SASRec's item embeddings, so
choosing the next item is one softmax over the catalog's codes; the title after the code is forced by the
trie (one child per code) and costs no model step. Titles stay in the prompt, so the HatLLM masks still
build each item's representation from its code and its title.

The checkpoint stores ``item_codes.json`` (item id -> code token ids). An item added to the catalog after
training has no code of its own: it shares the code of the trained item whose title is closest (token
Jaccard, among the items sharing its rarest title tokens), and the title tokens after the shared code
tell the two apart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

CODES_FILE = "item_codes.json"
RARE_TOKENS = 3  # a new item's title tokens whose coded items are candidates for its code
CANDIDATES_PER_TOKEN = 256
CODE_TOKEN = "<|code_{}|>"

Code = tuple[int, ...]


class ItemCodes:
    def __init__(self, codes: Mapping[str, Sequence[int]]):
        self.codes: dict[str, Code] = {item: tuple(code) for item, code in codes.items()}

    def __len__(self) -> int:
        return len(self.codes)

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

    def for_catalog(self, titles: Mapping[str, str], title_tokens: Callable[[str], Sequence[int]]) -> dict[str, Code]:
        """A code for every catalog item: its own, or that of the coded item with the most similar title
        (token Jaccard) among those sharing one of its rarest title tokens. Looking only there keeps
        the cost per new item bounded however large the catalog (common tokens such as "(" or "The"
        would make every coded item a candidate)."""
        resolved = {item: self.codes[item] for item in titles if item in self.codes}
        new = [item for item in titles if item not in self.codes]
        if new:
            donors = list(resolved)  # coded items still in the catalog
            by_token: dict[int, list[int]] = defaultdict(list)
            donor_tokens = [set(title_tokens(titles[d])) for d in donors]
            for index, tokens in enumerate(donor_tokens):
                for tok in tokens:
                    by_token[tok].append(index)
            fallback = min(self.codes.values())  # no coded item shares a token: the first code
            for item in new:
                tokens = set(title_tokens(titles[item]))
                rarest = sorted((tok for tok in tokens if tok in by_token), key=lambda tok: (len(by_token[tok]), tok))
                candidates = {i for tok in rarest[:RARE_TOKENS] for i in by_token[tok][:CANDIDATES_PER_TOKEN]}
                best = max(candidates, default=None,
                           key=lambda i: (len(tokens & donor_tokens[i]) / len(tokens | donor_tokens[i]), -i))
                resolved[item] = resolved[donors[best]] if best is not None else fallback
        return resolved
