"""Catalog trie and the reference constrained beam search."""

from collections import Counter

import numpy as np
import pytest
import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.core.search import TrieBeamSearch
from hatllm.core.trie import ROOT, TitleTrie
from hatllm.reference.modeling import forward, logits
from hatllm.reference.search import constrained_beam_search, renormalised
from tests.helpers import TITLES

HISTORY = ["Heat (1995)", "Casino (1995)"]


@pytest.fixture(scope="module")
def trie(builder):
    return ModelCatalog.build(builder, TITLES, None, Counter({"5": 3, "4": 1})).trie


def brute_force_scores(model, builder, view, history):
    """Each live item's renormalised log-probability, by teacher forcing its whole title."""
    prompt = builder.prompt(history)
    scores = {}
    for leaf in {view.trie.leaf(item) for item in TITLES}:
        live = view.items(leaf)
        if not live:
            continue
        path = (*builder.title_tokens(TITLES[live[0]]), builder.item_close_id)
        with torch.no_grad():
            out = logits(model, forward(model, torch.tensor([prompt + list(path)])).hidden)[0]
        node, total = ROOT, 0.0
        for i, tok in enumerate(path):
            allowed = view.allowed(node)[0].tolist()
            lp = out[len(prompt) - 1 + i, allowed].log_softmax(-1)
            total += lp[allowed.index(tok)].item()
            node = dict(view.trie.edges(node))[tok]
        for item in live:
            scores[item] = total
    return scores


def test_trie_structure(trie, builder):
    assert trie.item_count[ROOT] == len(TITLES)
    leaf = trie.leaf("4")
    assert trie.items(leaf) == ["5", "4"]  # duplicate title: more popular first
    assert trie.leaf("5") == leaf and trie.is_leaf(leaf) and not trie.is_leaf(ROOT)
    assert trie.tokens("4") == [*builder.title_tokens(TITLES["4"]), builder.item_close_id]
    path = (*builder.title_tokens(TITLES["4"]), builder.item_close_id)
    assert trie.node(path) == leaf and trie.node(path[:-1]) == trie.path("4")[1] and trie.node([-1]) is None
    assert trie.longest_path == max(len(builder.title_tokens(t)) + 1 for t in TITLES.values())


def test_view_counts(trie):
    view = trie.view(deny=["1", "4"])
    assert view.live_count(ROOT) == len(TITLES) - 2
    assert view.items(trie.leaf("4")) == ["5"]
    only = trie.view(allow=["2", "3", "99"], deny=["3"])
    assert only.live_count(ROOT) == 1
    assert only.live_count(trie.leaf("3")) == 0
    first_token = trie.path("2")[-2]  # the node under the root on item 2's path
    tokens, children = only.allowed(ROOT)
    assert list(zip(tokens.tolist(), children.tolist())) == [(tok, child) for tok, child in trie.edges(ROOT) if child == first_token]


def test_scores_match_brute_force_and_are_sorted(hat_model, builder, trie):
    view = trie.view(deny=["3", "7"])
    result = constrained_beam_search(hat_model, builder.prompt(HISTORY), view, num_items=len(TITLES), beam_width=16)
    exact = brute_force_scores(hat_model, builder, view, HISTORY)
    got = dict(result.items)
    assert set(got) == set(exact) == set(TITLES) - {"3", "7"}  # every live item, nothing denied
    for item, score in got.items():
        assert score == pytest.approx(exact[item], abs=1e-4)
    scores = [s for _, s in result.items]
    assert scores == sorted(scores, reverse=True)
    per_title = {TITLES[item]: score for item, score in exact.items()}
    assert sum(torch.tensor(list(per_title.values())).exp().tolist()) == pytest.approx(1.0, abs=1e-4)


def test_top_k_is_exact_with_wide_beam(hat_model, builder, trie):
    view = trie.view()
    exact = brute_force_scores(hat_model, builder, view, HISTORY)
    top = constrained_beam_search(hat_model, builder.prompt(HISTORY), view, num_items=3, beam_width=8).items
    assert [s for _, s in top] == pytest.approx(sorted(exact.values(), reverse=True)[:3], abs=1e-4)


def test_duplicate_titles_all_returned_with_same_score(hat_model, builder, trie):
    result = constrained_beam_search(hat_model, builder.prompt(HISTORY), trie.view(), len(TITLES), 16)
    items = [i for i, _ in result.items]
    scores = dict(result.items)
    assert len(items) == len(set(items)) == len(TITLES)
    assert scores["4"] == scores["5"] and items.index("5") == items.index("4") - 1


def test_short_list_when_few_items_allowed(hat_model, builder, trie):
    result = constrained_beam_search(hat_model, builder.prompt(HISTORY), trie.view(allow=["2", "6"]), 10, 10)
    assert sorted(i for i, _ in result.items) == ["2", "6"]


def test_forced_tokens_take_no_model_step(hat_model, builder, trie):
    # Only items 1 and 6 ("Toy Story (1995)", "Toy Story 2 (1999)") are live: their shared title prefix is
    # forced, so the model is asked once where they part and once per branch that still has a choice.
    view = trie.view(allow=["1", "6"])
    result = constrained_beam_search(hat_model, builder.prompt(HISTORY), view, 2, 2)
    assert sorted(i for i, _ in result.items) == ["1", "6"]
    assert result.model_steps == 1
    assert result.exhausted
    single = constrained_beam_search(hat_model, builder.prompt(HISTORY), trie.view(allow=["3"]), 5, 5)
    assert single.items == [("3", 0.0)] and single.model_steps == 0


def test_nothing_allowed_gives_empty_result(hat_model, builder, trie):
    result = constrained_beam_search(hat_model, builder.prompt(HISTORY), trie.view(allow=[]), 5, 5)
    assert result.items == [] and result.available == 0 and result.model_steps == 0


def test_renormalised_best_keeps_every_token_tied_with_the_last_kept():
    logits_ = torch.tensor([0.0, 3.0, 1.0, 3.0, 2.0, 1.0, -1.0])
    allowed = [6, 5, 4, 3, 2, 1]
    bias = np.array([0.5 * tok for tok in allowed])  # in allowed order
    full = renormalised(logits_, allowed, bias)
    assert abs(sum(torch.tensor(list(full.values())).exp().tolist()) - 1) < 1e-6  # over the allowed tokens only
    for best in range(1, len(allowed) + 2):
        kept = renormalised(logits_, allowed, bias, best)
        threshold = sorted(full.values(), reverse=True)[min(best, len(full)) - 1]
        assert kept == {tok: lp for tok, lp in full.items() if lp >= threshold}  # same values, ties included


def test_a_beam_below_the_full_list_is_dropped_and_the_list_is_unchanged():
    # Paths end with the close token 9. At the root: item "a" (token 1) and item "f" (token 8) finish at
    # once, "b"/"c" (token 2) and "d"/"e" (token 5) stay open. With two items asked, the list is full after
    # the first round; the beam at token 5 scores below its last item and can never enter it.
    paths = {"a": [1, 9], "b": [2, 3, 9], "c": [2, 4, 9], "d": [5, 6, 9], "e": [5, 7, 9], "f": [8, 9]}
    trie = TitleTrie(list(paths), np.concatenate(list(paths.values())), [len(p) for p in paths.values()])
    log = np.log
    scores = {(): {1: log(0.4), 2: log(0.35), 8: log(0.15), 5: log(0.1)},
              (2,): {3: log(0.9), 4: log(0.1)}, (5,): {6: log(0.5), 7: log(0.5)}}
    search = TrieBeamSearch(trie.view(), num_items=2, beam_width=4)
    asked = []
    while not search.done:
        asked.append([beam.tokens for beam in search.active])
        search.advance([scores[beam.tokens] for beam in search.active])
    assert asked == [[()], [(2,)]]  # the beam at token 5 (score log 0.1 < log 0.15) is never scored
    best = sorted(((sum(scores[tuple(path[:i])][tok] for i, tok in enumerate(path[:-1])), item)
                   for item, path in paths.items()), reverse=True)[:2]
    assert [item for item, _ in search.result().items] == [item for _, item in best] == ["a", "b"]
    assert [s for _, s in search.result().items] == pytest.approx([s for s, _ in best])


def test_a_beam_narrower_than_the_list_is_refused(trie):
    # One beam of width 2 could finish only 2 items of the 5 asked for: refused, not answered short.
    with pytest.raises(ValueError, match="beam_width must be in 5..100"):
        TrieBeamSearch(trie.view(), num_items=5, beam_width=2)
    assert TrieBeamSearch(trie.view(), num_items=5).beam_width == 5
