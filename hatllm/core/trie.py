"""Token trie over catalog titles: the set of sequences constrained decoding may produce.

Each title is inserted as exactly the tokens it has inside an item of the prompt, followed by the item
close delimiter; the node reached by the close token (a leaf) holds the item ids with that title.

Duplicate titles: items sharing a title end at the same leaf and share its score. The leaf lists them
by the catalog's tie order (training popularity, most popular first, then item id); a ranked list
expands a title into its items in that order.

Storage: flat arrays, not an object per node, so a catalog of a million titles (about 12 million nodes)
fits in a few hundred MB and builds in seconds. Nodes are numbered depth-first with children in token
order, so each node's items are one range of `item_order` (prefix sums over it give any subtree's total)
and each node's children are one range of `children` (CSR). `PatchedTrie` lays the items added or
changed since a trie was built over it, so a catalog change is visible without rebuilding the trie.

A `TrieView` restricts a trie to the items one request may receive (allow-list, deny-list such as the
user's history) without copying it: it counts, for each node, the live items below it, so a branch with
no live item is never offered to the decoder and no list comes back short because of filtering.
"""

from __future__ import annotations

from itertools import chain
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from hatllm.core.arrays import in_sorted, ragged_positions

ROOT = 0
EDGE_CACHE_SIZE = 100_000  # nodes whose merged edges a patched trie keeps
WIDE_NODE = 256  # children from which a trie keeps a node's edges (the root: every request starts there)
_EXACT_PREFIX_COLUMNS = 16  # tokens compared as one matrix when finding shared prefixes; longer ties go one by one


class _Navigation:
    """What both tries derive from `edge_arrays`."""

    def edges(self, node: int) -> list[tuple[int, int]]:
        """(token, child) pairs of `node`, by token."""
        tokens, children = self.edge_arrays(node)
        return list(zip(tokens.tolist(), children.tolist()))

    def node(self, tokens: Sequence[int]) -> int | None:
        """The node reached from the root by `tokens`; None when they leave the trie."""
        node = ROOT
        for tok in tokens:
            node = dict(self.edges(node)).get(tok)
            if node is None:
                return None
        return node

    def view(self, allow: Iterable[str] | None = None, deny: Iterable[str] = ()) -> "TrieView":
        return TrieView(self, allow, deny)


class TitleTrie(_Navigation):
    def __init__(self, item_ids: Sequence[str], tokens: np.ndarray, lengths: np.ndarray,
                 tie_rank: np.ndarray | None = None, code_depth: int = 0):
        """Items `item_ids[i]` with token path ``tokens[offset_i : offset_i + lengths[i]]`` (its title's
        tokens and the close delimiter, paths concatenated in item order). `tie_rank`: order among items
        sharing a path (lower first); default the item order. `code_depth`: tokens of an item code at the
        start of every path (0: none)."""
        n = len(item_ids)
        lengths = np.asarray(lengths, np.int64)
        tokens = np.asarray(tokens).astype(np.int32, copy=False)  # int32 throughout: a million titles, ~16M positions
        if n and lengths.min() < 1:
            raise ValueError("every item needs at least one token")
        tie_rank = np.arange(n) if tie_rank is None else np.asarray(tie_rank)
        offsets = np.concatenate([[0], np.cumsum(lengths)])

        # Sort the paths lexicographically (ties by rank): every prefix becomes one run of rows.
        words = (tokens + 1).astype(">u4").tobytes()  # big-endian, so bytes order is token order
        dense_rank = np.argsort(np.argsort(tie_rank, kind="stable"), kind="stable")
        ranks = dense_rank.astype(">u4").tobytes()
        keys = [words[4 * offsets[i]: 4 * offsets[i + 1]] + b"\0\0\0\0" + ranks[4 * i: 4 * i + 4] for i in range(n)]
        order = np.array(sorted(range(n), key=keys.__getitem__), np.int64)
        del keys
        lengths = lengths[order]
        row_start = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        paths = tokens[ragged_positions(offsets[:-1][order], lengths)]  # the sorted paths, concatenated
        depth = (np.arange(len(paths)) - np.repeat(row_start, lengths)).astype(np.int32)

        # A row's nodes below its shared prefix with the row before are new nodes; numbered in row
        # order, they are numbered depth-first.
        shared = _shared_prefix_lengths(paths, row_start, lengths)
        is_new = depth >= np.repeat(shared, lengths)
        node_at = np.zeros(len(paths), np.int32)  # the node each path position reaches
        node_at[is_new] = np.arange(1, int(is_new.sum()) + 1)
        rows = np.arange(n)
        for d in range(int(lengths.max(initial=0))):  # a position that is not new repeats the row above's node
            rows = rows[lengths[rows] > d]
            at = row_start[rows] + d
            node_at[at] = np.maximum.accumulate(node_at[at])
        num_nodes = int(is_new.sum()) + 1
        new = np.flatnonzero(is_new)
        self.token = np.full(num_nodes, -1, np.int32)
        self.token[1:] = paths[new]
        self.parent = np.full(num_nodes, -1, np.int32)
        self.parent[1:] = np.where(depth[new] > 0, node_at[new - 1], ROOT)
        self.item_count = np.bincount(node_at, minlength=num_nodes).astype(np.int32)
        self.item_count[ROOT] = n
        self.span_start = np.zeros(num_nodes, np.int32)
        self.span_start[1:] = np.repeat(np.arange(n), lengths)[new]  # the row that opens the node (its items follow)
        self.child_start = np.concatenate([[0], np.cumsum(np.bincount(self.parent[1:], minlength=num_nodes))]).astype(np.int32)
        self.children = (np.argsort(self.parent[1:], kind="stable") + 1).astype(np.int32)

        self.item_order: list[str] = [item_ids[i] for i in order]
        self.tie_order = dense_rank[order].astype(np.int32)  # each `item_order` entry's place in the tie order
        self.code_depth = code_depth
        self.leaf_at = node_at[row_start + lengths - 1].astype(np.int32) if n else np.zeros(0, np.int32)
        self.position = {item: pos for pos, item in enumerate(self.item_order)}
        self.removed_positions = np.zeros(0, np.int64)  # entries of `item_order` no longer in the catalog (`PatchedTrie`)
        if len(self.position) != n:
            raise ValueError("item ids must be unique")
        self.longest_path = int(lengths.max(initial=0))  # tokens of the longest title path (close delimiter included)
        self._wide_edges: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        inner = self.child_start[self.leaf_at + 1] > self.child_start[self.leaf_at]
        if inner.any():
            item = self.item_order[int(np.argmax(inner))]
            raise ValueError(f"item {item}: its token path is a prefix of another title's path")

    @classmethod
    def from_title_tokens(cls, items: Sequence[str], title_tokens: np.ndarray, title_lengths: np.ndarray, close: int,
                          codes: Mapping[str, Sequence[int]] | None = None, tie_rank: np.ndarray | None = None) -> "TitleTrie":
        """Paths ``code + title + close`` from titles tokenized as a batch (`PromptBuilder.title_tokens_batch`).
        `codes`: every item's code (`ModelCatalog.build`), for a model trained with item codes."""
        n = len(items)
        code_lengths = np.fromiter((len(codes[i]) for i in items), np.int64, n) if codes else np.zeros(n, np.int64)
        lengths = code_lengths + title_lengths + 1
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        tokens = np.empty(int(lengths.sum()), np.int64)
        if codes:
            tokens[ragged_positions(starts, code_lengths)] = np.fromiter(chain.from_iterable(codes[i] for i in items), np.int64,
                                                                int(code_lengths.sum()))
        tokens[ragged_positions(starts + code_lengths, title_lengths)] = title_tokens
        tokens[starts + lengths - 1] = close
        return cls(items, tokens, lengths, tie_rank, int(code_lengths.min()) if n else 0)

    # Structure

    @property
    def num_nodes(self) -> int:
        return len(self.token)

    def edge_arrays(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, children) of `node` (children that hold items), by token (a wide node's are kept and
        shared: do not modify them)."""
        arrays = self._wide_edges.get(node)
        if arrays is None:
            kids = self.children[self.child_start[node]: self.child_start[node + 1]]
            arrays = self.token[kids], kids
            if len(kids) >= WIDE_NODE:
                self._wide_edges[node] = arrays
        return arrays

    def is_leaf(self, node: int) -> bool:
        return node != ROOT and self.child_start[node] == self.child_start[node + 1]

    def count(self, node: int) -> int:
        return int(self.item_count[node])

    def counts(self, nodes: Sequence[int]) -> np.ndarray:
        return self.item_count[np.asarray(nodes, np.int64)]

    def child_counts(self, node: int) -> np.ndarray:
        """The item count of each of `edge_arrays(node)`'s children."""
        return self.item_count[self.edge_arrays(node)[1]]

    def items(self, leaf: int) -> list[str]:
        """The items at a leaf, in tie order."""
        return self.item_order[self.span_start[leaf]: self.span_start[leaf] + self.item_count[leaf]]

    def spans(self, node: int) -> list[tuple[int, int]]:
        """The ranges of `item_order` that hold the node's items."""
        start = int(self.span_start[node])
        return [(start, start + int(self.item_count[node]))]

    def span_arrays(self, nodes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`spans` of many nodes at once, as (starts, ends): a node of this trie has one span."""
        nodes = np.asarray(nodes, np.int64)
        starts = self.span_start[nodes]
        return starts, starts + self.item_count[nodes]

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.position

    def leaf(self, item_id: str) -> int:
        return int(self.leaf_at[self.position[item_id]])

    def positions(self, item_ids: Iterable[str]) -> np.ndarray:
        """Each item's place in `item_order`; -1 for an item not in the trie."""
        return np.fromiter((self.position.get(item, -1) for item in item_ids), np.int64)

    def path(self, item_id: str) -> list[int]:
        """Nodes from the item's leaf up to the root (both included)."""
        node, nodes = self.leaf(item_id), []
        while node != -1:
            nodes.append(node)
            node = int(self.parent[node])
        return nodes

    def path_counts(self, item_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """The nodes on the paths of `item_ids` (items of the trie), by node, and how many of them lie below each."""
        # All paths walked up together, one level per array step: a user's history is hundreds of items.
        nodes, visited = self.leaf_at[self.positions(item_ids)].astype(np.int64), []
        while len(nodes):
            visited.append(nodes)
            nodes = self.parent[nodes]
            nodes = nodes[nodes >= 0]
        return np.unique(np.concatenate([nodes, *visited]), return_counts=True)

    def tokens(self, item_id: str) -> list[int]:
        """The item's token path (title tokens and close delimiter), read back from the trie."""
        return [int(self.token[node]) for node in reversed(self.path(item_id)[:-1])]


class _PatchedItemOrder(Sequence[str | None]):
    """A patched trie's `item_order`: the base's entries (None where removed), then the added trie's. An
    overlay, not a copy: copying a million entries per change held the GIL for 50-75 ms."""

    def __init__(self, base: Sequence[str], added: Sequence[str], removed: set[str]):
        self.base, self.added, self.removed = base, added, removed

    def __len__(self) -> int:
        return len(self.base) + len(self.added)

    def __getitem__(self, position: int) -> str | None:
        if not 0 <= position < len(self):
            raise IndexError(position)
        if position >= len(self.base):
            return self.added[position - len(self.base)]
        item = self.base[position]
        return None if item in self.removed else item


class PatchedTrie(_Navigation):
    """A trie with items removed and added since it was built, without rebuilding it: `base` minus
    `removed`, plus the items of `added` (a small trie of the added and retitled items). Node ids: the
    base's own, and ``base.num_nodes + node`` for an added node whose prefix the base lacks. Items added
    at a title the base already holds follow the base's items there, until the next full build. Same
    interface as `TitleTrie`; the cost of building one is the size of the patch, not of the catalog."""

    def __init__(self, base: TitleTrie, removed: Iterable[str], added: TitleTrie):
        self.base, self.added = base, added
        self.removed = {item for item in removed if item in base}
        self._offset = base.num_nodes
        self._removed_below = dict(zip(*(a.tolist() for a in base.path_counts(self.removed))))
        # Added nodes whose prefix the base also has, in both directions.
        self._to_base: dict[int, int] = dict(zip(*(nodes.tolist() for nodes in _shared_nodes(added, base))))
        self._from_base = {b: a for a, b in self._to_base.items()}
        self.removed_positions = np.array([base.position[item] for item in self.removed], np.int64)
        self.item_order = _PatchedItemOrder(base.item_order, added.item_order, self.removed)
        self.longest_path = max(base.longest_path, added.longest_path)
        self.code_depth = base.code_depth
        self.tie_order = np.r_[base.tie_order, added.tie_order + len(base.item_order)]  # added items follow
        # Nodes whose count differs from the base's (the patch's, and the base's above removed items).
        self._patched_nodes = np.array(sorted(set(self._removed_below) | set(self._from_base)), np.int64)
        self._edges: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _node(self, added_node: int) -> int:
        base_node = self._to_base.get(added_node)
        return base_node if base_node is not None else self._offset + added_node

    def _added_node(self, node: int) -> int | None:
        return node - self._offset if node >= self._offset else self._from_base.get(node)

    def edge_arrays(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, children) of `node` that hold items, by token (kept and shared: do not modify them)."""
        return self._child_arrays(node)[:2]

    def child_counts(self, node: int) -> np.ndarray:
        """The item count of each of `edge_arrays(node)`'s children."""
        return self._child_arrays(node)[2]

    def _child_arrays(self, node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, children, counts) of `node`'s children that hold items. Kept (the trie never changes):
        every request asks again for the root's and the popular nodes'."""
        arrays = self._edges.get(node)
        if arrays is None:
            tokens, kids = self.base.edge_arrays(node) if node < self._offset else (np.zeros(0, np.int32),) * 2
            tokens, kids = tokens.astype(np.int64), kids.astype(np.int64)
            added_node = self._added_node(node)
            if added_node is not None:  # the added children at tokens the base lacks here are new nodes
                added_tokens, added_kids = self.added.edge_arrays(added_node)
                new = ~in_sorted(added_tokens, tokens)
                tokens = np.r_[tokens, added_tokens[new]]
                kids = np.r_[kids, added_kids[new] + self._offset]
                order = np.argsort(tokens, kind="stable")
                tokens, kids = tokens[order], kids[order]
            counts = self.counts(kids)
            live = counts > 0
            arrays = tokens[live], kids[live], counts[live]
            if len(self._edges) >= EDGE_CACHE_SIZE:
                self._edges.clear()
            self._edges[node] = arrays
        return arrays

    def is_leaf(self, node: int) -> bool:
        return self.base.is_leaf(node) if node < self._offset else self.added.is_leaf(node - self._offset)

    def count(self, node: int) -> int:
        total = self.base.count(node) - self._removed_below.get(node, 0) if node < self._offset else 0
        added_node = self._added_node(node)
        return total + (self.added.count(added_node) if added_node is not None else 0)

    def counts(self, nodes: Sequence[int]) -> np.ndarray:
        nodes = np.asarray(nodes, np.int64)
        counts = np.zeros(len(nodes), np.int64)
        in_base = nodes < self._offset
        counts[in_base] = self.base.item_count[nodes[in_base]]
        for at in np.flatnonzero(~in_base | in_sorted(nodes, self._patched_nodes)).tolist():  # a patch's size, not the catalog's
            counts[at] = self.count(int(nodes[at]))
        return counts

    def items(self, leaf: int) -> list[str]:
        items = [i for i in self.base.items(leaf) if i not in self.removed] if leaf < self._offset else []
        added_leaf = self._added_node(leaf)
        return items + (self.added.items(added_leaf) if added_leaf is not None else [])

    def spans(self, node: int) -> list[tuple[int, int]]:
        spans = self.base.spans(node) if node < self._offset else []
        added_node = self._added_node(node)
        if added_node is not None:
            spans += [(start + len(self.base.item_order), end + len(self.base.item_order))
                      for start, end in self.added.spans(added_node)]
        return spans

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.added or (item_id in self.base and item_id not in self.removed)

    def leaf(self, item_id: str) -> int:
        return self._node(self.added.leaf(item_id)) if item_id in self.added else self.base.leaf(item_id)

    def positions(self, item_ids: Iterable[str]) -> np.ndarray:
        """Each item's place in `item_order`; -1 for an item not in the trie (or removed)."""
        offset = len(self.base.item_order)
        return np.fromiter((offset + self.added.position[item] if item in self.added
                            else -1 if item in self.removed else self.base.position.get(item, -1)
                            for item in item_ids), np.int64)

    def path(self, item_id: str) -> list[int]:
        if item_id in self.added:
            return [self._node(node) for node in self.added.path(item_id)]
        return self.base.path(item_id)

    def path_counts(self, item_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """As `TitleTrie.path_counts`: each part's items counted by its own trie, then merged."""
        item_ids = list(item_ids)
        nodes, below = self.base.path_counts([item for item in item_ids if item not in self.added])
        added_nodes, added_below = self.added.path_counts([item for item in item_ids if item in self.added])
        if len(added_nodes):
            added_nodes = np.fromiter((self._node(node) for node in added_nodes.tolist()), np.int64, len(added_nodes))
            nodes, at = np.unique(np.r_[nodes, added_nodes], return_inverse=True)
            below = np.bincount(at, weights=np.r_[below, added_below]).astype(np.int64)
        return nodes, below

    def tokens(self, item_id: str) -> list[int]:
        return (self.added if item_id in self.added else self.base).tokens(item_id)


def _shared_nodes(added: TitleTrie, base: TitleTrie) -> tuple[np.ndarray, np.ndarray]:
    """The nodes of `added` whose token path `base` also has, and `base`'s node for each (roots included).
    Walked level by level, one array step per level: a patch of thousands of items meets the base at the
    root's thousands of children."""
    added_nodes = base_nodes = np.array([ROOT], np.int64)
    found = [(added_nodes, base_nodes)]
    vocab = int(max(added.token.max(initial=0), base.token.max(initial=0))) + 1
    while len(added_nodes):
        (added_kids, added_keys), (base_kids, base_keys) = (_child_keys(trie, nodes, vocab) for trie, nodes
                                                            in ((added, added_nodes), (base, base_nodes)))
        shared = np.flatnonzero(in_sorted(added_keys, base_keys))
        added_nodes, base_nodes = added_kids[shared], base_kids[np.searchsorted(base_keys, added_keys[shared])]
        found.append((added_nodes, base_nodes))
    return np.concatenate([a for a, _ in found]), np.concatenate([b for _, b in found])


def _child_keys(trie: TitleTrie, nodes: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The children of `nodes`, and for each ``(its parent's index in nodes) * vocab + token``: sorted, since a
    node's children are stored by token."""
    starts = trie.child_start[nodes].astype(np.int64)
    lengths = trie.child_start[nodes + 1] - starts
    kids = trie.children[ragged_positions(starts, lengths)].astype(np.int64)
    return kids, np.repeat(np.arange(len(nodes)), lengths) * vocab + trie.token[kids]


def popularity_rank(items: Sequence[str], popularity: Mapping[str, float] | None) -> np.ndarray:
    """Each item's place in the tie order: most popular first, then by item id."""
    popularity = popularity or {}
    ranked = sorted(range(len(items)), key=lambda i: (-popularity.get(items[i], 0), items[i]))
    rank = np.empty(len(items), np.int64)
    rank[ranked] = np.arange(len(items))
    return rank


def _shared_prefix_lengths(paths: np.ndarray, row_start: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For each row of the sorted paths, the length of its common prefix with the row before (0 for the first)."""
    n = len(lengths)
    shared = np.zeros(n, np.int64)
    if n < 2:
        return shared
    width = min(_EXACT_PREFIX_COLUMNS, int(lengths.max()))
    columns = np.arange(width)
    matrix = np.where(columns < lengths[:, None], paths[np.minimum(row_start[:, None] + columns, len(paths) - 1)], -1)
    common = np.minimum(lengths[1:], lengths[:-1])
    differs = matrix[1:] != matrix[:-1]
    first_difference = np.where(differs.any(1), differs.argmax(1), width)
    shared[1:] = np.minimum(first_difference, common)
    for row in np.flatnonzero((shared[1:] == width) & (common > width)) + 1:  # rare: compare past the matrix
        a = paths[row_start[row - 1]: row_start[row - 1] + lengths[row - 1]]
        b = paths[row_start[row]: row_start[row] + lengths[row]]
        m = int(min(len(a), len(b)))
        mismatch = np.flatnonzero(a[:m] != b[:m])
        shared[row] = mismatch[0] if len(mismatch) else m
    return shared


class TrieView:
    """The trie restricted to allowed items: live item counts per node, as an overlay."""

    def __init__(self, trie, allow: Iterable[str] | None, deny: Iterable[str]):
        self.trie = trie
        deny = {item for item in deny if item in trie}
        if allow is None:  # everything but the denied items: subtract them from the trie's counts
            self._counted, sign, changed = True, -1, deny
            self.is_live = lambda item: item not in deny
        else:  # only the allowed items: count them from zero
            live = {item for item in allow if item in trie} - deny
            self._counted, sign, changed = False, 1, live
            self.is_live = live.__contains__
        self._changed = changed  # the denied items, or the live ones
        self._allowed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | slice]] = {}
        nodes, below = trie.path_counts(changed)
        self._delta = dict(zip(nodes.tolist(), (sign * below).tolist()))
        self._delta_nodes = nodes  # ascending, as path_counts gives them
        self._allowed_counts: dict[int, np.ndarray] = {}
        # Every node of the trie holds an item, so with denied items only the nodes above them can be dead,
        # and with allowed items only the nodes above them are live: a node's allowed children are its edges
        # less (or among) these, found without counting each child.
        self._marked = nodes[trie.counts(nodes) <= below] if self._counted else nodes

    def live_count(self, node: int) -> int:
        return (self.trie.count(node) if self._counted else 0) + self._delta.get(node, 0)

    def allowed(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, children) of the children that lead to at least one live item, by token, as arrays
        (kept and shared, do not modify them: a view never changes, and the search asks again for the
        tokens, the fusion bias and forced chains; the root of a coded catalog has a child per item)."""
        return self._allowed_children(node)[:2]

    def _allowed_children(self, node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | slice]:
        """`allowed(node)`, and which of the trie's edges of `node` they are."""
        arrays = self._allowed.get(node)
        if arrays is None:
            tokens, kids = self.trie.edge_arrays(node)
            live = slice(None)
            # Items sit at leaves only, so the one child of a live node is live.
            if len(kids) > 1 or self.live_count(node) <= 0:
                live = in_sorted(kids, self._marked) != self._counted
            arrays = self._allowed[node] = tokens[live], kids[live], live
        return arrays

    def child_nodes(self, node: int, tokens: Sequence[int]) -> list[int]:
        """The children of `node` that `tokens` lead to; ValueError if one is not allowed there."""
        allowed, kids = self.allowed(node)
        tokens = np.asarray(tokens, np.int64)
        if not in_sorted(tokens, allowed).all():
            raise ValueError(f"tokens {tokens.tolist()} are not all allowed at node {node}")
        return kids[np.searchsorted(allowed, tokens)].tolist()

    def items(self, leaf: int) -> list[str]:
        """Live items at a leaf, in tie order."""
        return [i for i in self.trie.items(leaf) if self.is_live(i)]

    def items_below(self, node: int) -> Iterator[str]:
        """Live items of the node's subtree, in tie order (a leaf's: `items`), as they are read: a ranked
        list takes the first few of a node that may hold thousands (an item code shared by new items)."""
        if self.is_leaf(node):
            yield from self.items(node)
            return
        positions = np.concatenate([np.arange(start, end) for start, end in self.trie.spans(node)])
        positions = positions[np.argsort(self.trie.tie_order[positions], kind="stable")]
        order = self.trie.item_order
        yield from (item for item in map(order.__getitem__, positions.tolist()) if item is not None and self.is_live(item))

    def allowed_counts(self, node: int) -> np.ndarray:
        """Live items below each of `allowed(node)`'s children, as an array."""
        counts = self._allowed_counts.get(node)
        if counts is None:
            _, kids, live = self._allowed_children(node)
            counts = self.trie.child_counts(node)[live].astype(np.int64) if self._counted else np.zeros(len(kids), np.int64)
            for at in np.flatnonzero(in_sorted(kids, self._delta_nodes)).tolist():  # the children above changed items
                counts[at] += self._delta[int(kids[at])]
            self._allowed_counts[node] = counts
        return counts

    def live_positions(self) -> np.ndarray:
        """A mask over the trie's `item_order`: which entries are live items."""
        if self._counted:
            mask, value = np.ones(len(self.trie.item_order), bool), False
            mask[self.trie.removed_positions] = False
        else:
            mask, value = np.zeros(len(self.trie.item_order), bool), True
        changed = self.trie.positions(self._changed)
        mask[changed[changed >= 0]] = value
        return mask

    def is_leaf(self, node: int) -> bool:
        return self.trie.is_leaf(node)
