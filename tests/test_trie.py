"""The flat-array trie against a plain dict-of-dicts trie, on random catalogs with shared prefixes."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from hatllm.core.fusion import ItemLogProbs, ItemPrior
from hatllm.core.trie import ROOT, WIDE_NODE, PatchedTrie, TitleTrie

CLOSE = 99


def random_paths(rng: random.Random, n: int) -> dict[str, list[int]]:
    stems = [[rng.randrange(5) for _ in range(rng.randrange(1, 30))] for _ in range(8)]  # long shared prefixes
    paths = {}
    for i in range(n):
        stem = rng.choice(stems)[: rng.randrange(0, 30)]
        paths[f"i{i}"] = stem + [rng.randrange(5) for _ in range(rng.randrange(1, 4))] + [CLOSE]
    paths["dup"] = list(paths["i0"])  # a duplicate title
    return paths


def build(paths: dict[str, list[int]], rank: dict[str, int] | None = None) -> TitleTrie:
    items = list(paths)
    lengths = np.array([len(paths[i]) for i in items])
    tokens = np.array([t for i in items for t in paths[i]])
    return TitleTrie(items, tokens, lengths, np.array([rank[i] for i in items]) if rank else None)


def reference_trie(paths):
    root: dict = {}
    for item, path in paths.items():
        node = root
        for tok in path:
            node = node.setdefault(tok, {})
        node.setdefault(None, []).append(item)
    return root


@pytest.mark.parametrize("seed", range(5))
def test_flat_trie_matches_a_dict_trie(seed):
    rng = random.Random(seed)
    paths = random_paths(rng, 300)
    rank = {item: rng.randrange(1000) for item in paths}
    trie = build(paths, rank)
    expected = reference_trie(paths)

    def walk(node, ref, depth):
        edges = trie.edges(node)
        assert [tok for tok, _ in edges] == sorted(t for t in ref if t is not None)
        items = []
        for tok, child in edges:
            items += walk(child, ref[tok], depth + 1)
        if None in ref:
            assert trie.is_leaf(node) and not edges
            leaf_items = trie.items(node)
            assert leaf_items == sorted(ref[None], key=lambda i: (rank[i], list(paths).index(i)))
            items += leaf_items
        assert trie.count(node) == len(items)
        assert [trie.item_order[p] for start, end in trie.spans(node) for p in range(start, end)] == items
        return items

    assert sorted(walk(ROOT, expected, 0)) == sorted(paths)
    for item, path in paths.items():
        assert trie.tokens(item) == path and trie.node(path) == trie.leaf(item)
        assert len(trie.path(item)) == len(path) + 1
    assert trie.longest_path == max(map(len, paths.values()))


def test_a_path_that_is_a_prefix_of_another_is_refused():
    with pytest.raises(ValueError, match="prefix"):
        build({"a": [1, 2], "b": [1, 2, 3]})


def test_a_wide_nodes_edges_are_kept_and_a_narrow_nodes_rebuilt():
    # 300 one-token titles under the root (wide), two under token 1000 (narrow); 7 closes every path.
    paths = [[tok, 7] for tok in range(8, 308)] + [[1000, 1, 7], [1000, 2, 7]]
    trie = TitleTrie([str(i) for i in range(len(paths))], np.concatenate(paths), [len(p) for p in paths])
    root = trie.edge_arrays(ROOT)
    assert root[0].tolist() == [*range(8, 308), 1000] and len(root[0]) >= WIDE_NODE
    assert trie.edge_arrays(ROOT) is root  # every request starts at the root: its arrays are built once
    narrow = trie.node([1000])
    assert trie.edges(narrow) == trie.edges(narrow) and trie.edge_arrays(narrow) is not trie.edge_arrays(narrow)


def test_empty_trie():
    trie = build({})
    assert trie.count(ROOT) == 0 and trie.edges(ROOT) == [] and trie.view().live_count(ROOT) == 0


def check_same_catalog(trie, paths: dict[str, list[int]]):
    """`trie` holds exactly the items of `paths` (items at a title compared as sets)."""
    expected = reference_trie(paths)

    def walk(node, ref):
        edges = trie.edges(node)
        assert [tok for tok, _ in edges] == sorted(t for t in ref if t is not None)
        assert trie.child_counts(node).tolist() == [trie.count(child) for _, child in edges]
        items = []
        for tok, child in edges:
            items += walk(child, ref[tok])
        if None in ref:
            assert trie.is_leaf(node) and sorted(trie.items(node)) == sorted(ref[None])
            items += trie.items(node)
        assert trie.count(node) == len(items)
        in_spans = [trie.item_order[p] for start, end in trie.spans(node) for p in range(start, end)]
        assert sorted(i for i in in_spans if i is not None) == sorted(items)  # None: removed
        return items

    walk(ROOT, expected)
    for item, path in paths.items():
        assert item in trie and trie.tokens(item) == path and trie.node(path) == trie.leaf(item)
        assert trie.path(item)[0] == trie.leaf(item) and trie.path(item)[-1] == ROOT and len(trie.path(item)) == len(path) + 1


@pytest.mark.parametrize("seed", range(5))
def test_patched_trie_equals_the_patched_catalog(seed):
    rng = random.Random(seed)
    paths = random_paths(rng, 200)
    base = build(paths)
    changed = rng.sample(sorted(paths), 40)
    final = dict(paths)
    for item in changed[:15]:  # removed
        del final[item]
    for item in changed[15:30]:  # retitled, some to a title the base already has
        final[item] = list(paths[rng.choice(sorted(paths))]) if rng.random() < 0.3 else random_paths(rng, 1)["i0"]
    for k in range(10):  # new
        final[f"new{k}"] = random_paths(rng, 1)["i0"]
    added = {item: final[item] for item in final if item not in paths or final[item] != paths[item]}
    removed = [item for item in paths if item not in final or final[item] != paths[item]]
    patched = PatchedTrie(base, removed, build(added))
    check_same_catalog(patched, final)
    assert all(item not in patched for item in changed[:15])
    assert list(patched.item_order) == [None if i in removed else i for i in base.item_order] + build(added).item_order
    some = rng.sample(sorted(final), 60) + [item for item in added if rng.random() < 0.5]
    below = Counter(node for item in some for node in patched.path(item))
    assert [a.tolist() for a in patched.path_counts(some)] == [sorted(below), [below[n] for n in sorted(below)]]
    view = patched.view(deny=changed[15:20] + changed[:3])  # removed items in a deny-list change nothing
    assert view.live_count(ROOT) == len(final) - 5
    assert sum(len(view.items(patched.leaf(i))) for i in {i: 0 for i in final}) >= len(final) - 5


@pytest.mark.parametrize("seed", range(3))
def test_fusion_masses_are_the_live_items_prior_mass(seed):
    """`ItemPrior.log_mass` of every node = log of the summed prior of the live items below it, on a
    patched trie, with a deny-list and with an allow-list."""
    rng = random.Random(seed)
    paths = random_paths(rng, 150)
    changed = rng.sample(sorted(paths), 20)
    final = {item: path for item, path in paths.items() if item not in changed[:8]}
    final |= {item: random_paths(rng, 1)["i0"] for item in changed[8:]} | {"new": random_paths(rng, 1)["i0"]}
    added = {item: final[item] for item in final if item not in paths or final[item] != paths[item]}
    trie = PatchedTrie(build(paths), [i for i in paths if i not in final or final[i] != paths[i]], build(added))
    log_probs = {item: -rng.uniform(0, 8) for item in rng.sample(sorted(final), 100)} | {changed[0]: 0.0}  # a removed one too
    for view in (trie.view(deny=rng.sample(sorted(final), 30)), trie.view(allow=rng.sample(sorted(final), 40))):
        prior = ItemPrior(view, log_probs, 1.0)
        floor, top = min(log_probs.values()), max(log_probs.values())

        def below(node):
            items = [i for i in trie.items(node) if view.is_live(i)] if trie.is_leaf(node) else []
            return items + [i for _, child in trie.edges(node) for i in below(child)]

        for node in {n for item in final for n in trie.path(item)}:
            expected = sum(math.exp(log_probs.get(i, floor) - top) for i in below(node))
            assert prior.log_mass(node) == (pytest.approx(math.log(expected)) if expected else -math.inf)


@pytest.mark.parametrize("seed", range(3))
def test_allowed_children_and_fusion_bias_equal_their_per_child_definitions(seed):
    """The array shortcuts (a view's dead nodes, every child's mass at once on a flat trie, the children's
    live counts, a subtree's items in tie order) give what counting and summing each child gives (the logarithm up to its last bit), on a flat and a patched trie,
    with deny- and allow-lists."""
    rng = random.Random(seed)
    paths = random_paths(rng, 150)
    flat = build(paths)
    gone = rng.sample(sorted(paths), 10)
    patched = PatchedTrie(flat, gone, build({"new": random_paths(rng, 1)["i0"]}))
    tie_order = {item: k for k, item in enumerate([*paths, "new"])}
    for trie in (flat, patched):
        items = sorted(i for i in [*paths, "new"] if i in trie)
        log_probs = {item: -rng.uniform(0, 8) for item in rng.sample(items, 100)}
        subtree = trie.path(items[0])[-2]  # deny every item under one child of the root: a dead node
        below = [i for i in items if subtree in trie.path(i)]
        denied = trie.view(deny=below + rng.sample(items, 20))
        assert subtree not in denied.allowed(ROOT)[1]
        for view in (denied, trie.view(allow=rng.sample(items, 40))):
            prior = ItemPrior(view, log_probs, 1.5)
            for node in {n for item in items for n in trie.path(item) if not trie.is_leaf(n)}:
                expected = [(tok, child) for tok, child in trie.edges(node) if view.live_count(child) > 0]
                tokens, children = view.allowed(node)
                assert list(zip(tokens.tolist(), children.tolist())) == expected
                if expected:
                    assert view.child_nodes(node, [tok for tok, _ in expected]) == [child for _, child in expected]
                    with pytest.raises(ValueError):  # an answer with a token the view does not allow there
                        view.child_nodes(node, [max(tok for tok, _ in trie.edges(node)) + 1])
                assert view.allowed_counts(node).tolist() == [view.live_count(child) for _, child in expected]
                live_below = [i for i in items if node in trie.path(i) and view.is_live(i)]
                assert list(view.items_below(node)) == sorted(live_below, key=tie_order.get)  # the catalog's, added items last
                if expected:
                    parent = prior.log_mass(node)
                    bias = prior.logit_bias(node)  # one per allowed child, in order
                    assert bias.tolist() == pytest.approx(  # numpy's and math's log may differ in the last bit
                        [max(-100.0, 1.5 * (prior.log_mass(child) - parent)) for _, child in expected], rel=1e-12)


def test_a_priors_item_positions_follow_the_trie_they_are_used_on():
    """Positions of a prior's shared item tuple are cached per trie: alternating tries (whose positions
    differ) and a fresh tuple of the same items give the masses a plain mapping gives."""
    rng = random.Random(0)
    paths = random_paths(rng, 100)
    flat = build(paths)
    patched = PatchedTrie(flat, rng.sample(sorted(paths), 10), build({"new": random_paths(rng, 1)["i0"]}))
    items = tuple(sorted(paths)) + ("new",)
    shared = ItemLogProbs(items, np.array([-rng.uniform(0, 8) for _ in items]))
    for trie in (flat, patched, flat, patched):
        view = trie.view(deny=rng.sample(sorted(paths), 15))
        nodes = {n for item in items if item in trie for n in trie.path(item)}
        for log_probs in (shared, ItemLogProbs(tuple(items), shared.values)):
            prior = ItemPrior(view, log_probs, 1.0)
            expected = ItemPrior(view, dict(zip(items, shared.values.tolist())), 1.0)
            assert all(prior.log_mass(n) == expected.log_mass(n) for n in nodes)
