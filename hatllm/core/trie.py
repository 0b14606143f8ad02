"""Token trie over catalog titles: the set of sequences constrained decoding may produce.

Each title is inserted as exactly the tokens it has inside an item of the prompt, followed by the item
close delimiter; the node reached by the close token holds the item ids with that title.

Duplicate titles: items sharing a title end at the same leaf and share its score. The leaf lists them
by the catalog's tie order (training popularity, most popular first, then item id); a ranked list
expands a title into its items in that order.

A `TrieView` restricts a trie to the items one request may receive (allow-list, deny-list such as the
user's history) without copying it: it counts, for each node, the live items below it, so a branch with
no live item is never offered to the decoder and no list comes back short because of filtering.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Mapping, Sequence

ROOT = 0


class TitleTrie:
    def __init__(self, item_tokens: Mapping[str, Sequence[int]], tie_order: Callable[[str], object] | None = None):
        """`item_tokens`: item id -> its title's tokens followed by the close delimiter."""
        self.children: list[dict[int, int]] = [{}]
        self.items_at: dict[int, list[str]] = {}
        self.item_count: list[int] = [0]
        self.leaf_of: dict[str, int] = {}
        self._parent: list[int] = [-1]
        self.longest_path = 0  # tokens of the longest title path (close delimiter included)
        for item_id, tokens in item_tokens.items():
            self.longest_path = max(self.longest_path, len(tokens))
            node = ROOT
            self.item_count[ROOT] += 1
            for tok in tokens:
                child = self.children[node].get(tok)
                if child is None:
                    child = len(self.children)
                    self.children[node][tok] = child
                    self.children.append({})
                    self.item_count.append(0)
                    self._parent.append(node)
                node = child
                self.item_count[node] += 1
            if self.children[node]:
                raise ValueError(f"item {item_id}: its token path is a prefix of another title's path")
            self.items_at.setdefault(node, []).append(item_id)
            self.leaf_of[item_id] = node
        key = tie_order or (lambda item: item)
        for items in self.items_at.values():
            items.sort(key=key)
        self._index_subtrees()

    def _index_subtrees(self) -> None:
        """Number items in depth-first order, so that every node's items are one range
        ``item_order[span_start[node]:span_end[node]]`` (prefix sums over it give any subtree's total)."""
        self.item_order: list[str] = []
        self.span_start = [0] * len(self.children)
        self.span_end = [0] * len(self.children)
        stack = [(ROOT, False)]
        while stack:
            node, done = stack.pop()
            if done:
                self.span_end[node] = len(self.item_order)
                continue
            self.span_start[node] = len(self.item_order)
            self.item_order += self.items_at.get(node, [])
            stack.append((node, True))
            stack += [(child, False) for child in reversed(self.children[node].values())]

    @classmethod
    def from_catalog(cls, titles: Mapping[str, str], builder, popularity: Counter | None = None,
                     codes: Mapping[str, Sequence[int]] | None = None) -> "TitleTrie":
        """`codes`: every item's code (`ItemCodes.for_catalog`), for a model trained with item codes."""
        close = builder.item_close_id
        popularity = popularity or Counter()
        codes = codes or {}
        return cls(
            {item: (*codes.get(item, ()), *builder.title_tokens(title), close) for item, title in titles.items()},
            tie_order=lambda item: (-popularity[item], item),
        )

    def node(self, tokens: Sequence[int]) -> int | None:
        """The node reached from the root by `tokens`; None when they leave the trie."""
        node = ROOT
        for tok in tokens:
            node = self.children[node].get(tok)
            if node is None:
                return None
        return node

    def path(self, item_id: str) -> list[int]:
        """Nodes from the item's leaf up to the root (both included)."""
        node, nodes = self.leaf_of[item_id], []
        while node != -1:
            nodes.append(node)
            node = self._parent[node]
        return nodes

    def view(self, allow: Iterable[str] | None = None, deny: Iterable[str] = ()) -> "TrieView":
        return TrieView(self, allow, deny)


class TrieView:
    """The trie restricted to allowed items: live item counts per node, as an overlay."""

    def __init__(self, trie: TitleTrie, allow: Iterable[str] | None, deny: Iterable[str]):
        self.trie = trie
        deny = set(deny) & trie.leaf_of.keys()
        if allow is None:  # everything but the denied items: subtract them from the trie's counts
            self._base, sign, changed = trie.item_count, -1, deny
            self.is_live = lambda item: item not in deny
        else:  # only the allowed items: count them from zero
            live = (set(allow) & trie.leaf_of.keys()) - deny
            self._base, sign, changed = None, 1, live
            self.is_live = live.__contains__
        self._allowed: dict[int, list[tuple[int, int]]] = {}
        self._delta: Counter = Counter()
        for item in changed:
            for node in trie.path(item):
                self._delta[node] += sign

    def live_count(self, node: int) -> int:
        base = self._base[node] if self._base is not None else 0
        return base + self._delta[node]

    def allowed(self, node: int) -> list[tuple[int, int]]:
        """(token, child) pairs that lead to at least one live item (kept: a view never changes, and the
        search asks again for the tokens, the fusion bias and forced chains)."""
        pairs = self._allowed.get(node)
        if pairs is None:
            pairs = self._allowed[node] = [(tok, child) for tok, child in self.trie.children[node].items()
                                           if self.live_count(child) > 0]
        return pairs

    def items(self, leaf: int) -> list[str]:
        """Live items at a leaf, in tie order."""
        return [i for i in self.trie.items_at.get(leaf, []) if self.is_live(i)]

    def is_leaf(self, node: int) -> bool:
        return node in self.trie.items_at
