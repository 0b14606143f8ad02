"""Collaborative item codes: resolution for new items, the trie and search over coded titles."""

import random

import pytest
import torch

from hatllm.core import item_codes
from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import CANDIDATES_PER_TOKEN, RARE_TOKENS, ItemCodes
from hatllm.core.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from hatllm.core.search import TrieBeamSearch
from hatllm.core.trie import ROOT
from hatllm.reference.modeling import HAT_ATTENTION, make_config
from hatllm.reference.search import constrained_beam_search, prompt_logits_batch, renormalised
from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN, train_tokenizer
from tests.helpers import TITLES
from tests.test_trie import check_same_catalog


def coded_setup():
    code_tokens = ItemCodes.code_tokens(len(TITLES))
    tokenizer = train_tokenizer([*TITLES.values(), DEFAULT_INSTRUCTION], 300, code_tokens)
    open_id, close_id = tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE])
    builder = PromptBuilder(tokenizer, open_id, close_id, DEFAULT_INSTRUCTION)
    codes = ItemCodes({item: (tok,) for item, tok in zip(sorted(TITLES), tokenizer.convert_tokens_to_ids(code_tokens))})
    return tokenizer, builder, codes


def tiny_coded_model(tokenizer, builder):
    """An untrained tiny HatLLM over the coded tokenizer: its scores are arbitrary but fixed (seed 0)."""
    from transformers import LlamaForCausalLM

    config = make_config(len(tokenizer), "tiny", ["IN", "OR", "CR"], builder.item_open_id, builder.item_close_id,
                         DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id)
    config._attn_implementation = HAT_ATTENTION
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_codes_are_special_tokens_that_no_title_produces(tmp_path):
    tokenizer, builder, codes = coded_setup()
    code_ids = {c[0] for c in codes.codes.values()}
    assert len(code_ids) == len(TITLES)
    for title in TITLES.values():
        assert code_ids.isdisjoint(builder.title_tokens(title))
    codes.save(tmp_path)
    assert ItemCodes.load(tmp_path).codes == codes.codes
    assert ItemCodes.load(tmp_path / "missing") is None


def test_new_item_shares_the_code_of_its_nearest_titled_item():
    tokenizer, builder, codes = coded_setup()
    catalog = dict(TITLES, new1="Toy Story 3 (2010)", new2="Zzyzx Qqq")
    resolved = ModelCatalog.build(builder, catalog, codes).codes
    assert {i: resolved[i] for i in TITLES} == codes.codes  # trained items keep their own code
    assert resolved["new1"] in (codes.codes["1"], codes.codes["6"])  # a Toy Story
    assert resolved["new2"] in codes.codes.values()
    # The shared code branches on the title: both items stay reachable and distinct.
    trie = ModelCatalog.build(builder, catalog, codes).trie  # the codes resolved above
    assert trie.leaf("new1") != trie.leaf([i for i, c in codes.codes.items() if c == resolved["new1"]][0])


def nearest_code_by_loops(codes: ItemCodes, titles: dict[str, str], title_tokens, per_token: int) -> dict:
    """The rule `NearestCode` implements with arrays, written as plain loops."""
    resolved = {item: codes.codes[item] for item in titles if item in codes.codes}
    donors = list(resolved)
    donor_tokens = [set(title_tokens(titles[d])) for d in donors]
    by_token: dict[int, list[int]] = {}
    for index, tokens in enumerate(donor_tokens):
        for tok in tokens:
            by_token.setdefault(tok, []).append(index)
    for item in (i for i in titles if i not in codes.codes):
        tokens = set(title_tokens(titles[item]))
        rarest = sorted((t for t in tokens if t in by_token), key=lambda t: (len(by_token[t]), t))[:RARE_TOKENS]
        candidates = {i for t in rarest for i in by_token[t][:per_token]}
        best = max(candidates, default=None, key=lambda i: (len(tokens & donor_tokens[i]) / len(tokens | donor_tokens[i]), -i))
        resolved[item] = resolved[donors[best]] if best is not None else min(codes.codes.values())
    return resolved


@pytest.mark.parametrize("seed,per_token,table,one_key", [(0, CANDIDATES_PER_TOKEN, True, True), (1, CANDIDATES_PER_TOKEN, False, False),
                                                          (2, 2, True, False), (3, 1000, False, True)])
def test_nearest_code_matches_the_rule_written_as_loops(seed, per_token, table, one_key, monkeypatch):
    monkeypatch.setattr(item_codes, "CANDIDATES_PER_TOKEN", per_token)
    monkeypatch.setattr(item_codes, "DENSE_MEMBERSHIP_CELLS", 1 << 27 if table else 0)  # membership: table or sorted keys
    monkeypatch.setattr(item_codes, "ONE_KEY_LIMIT", 1 << 62 if one_key else 0)  # rarest tokens: one sort key or two
    tokenizer, builder, codes = coded_setup()
    rng = random.Random(seed)
    words = " ".join(TITLES.values()).split() + ["Zzyzx", "Qq"]
    catalog = {item: title for item, title in TITLES.items() if rng.random() < 0.8}  # some trained items gone
    catalog |= {f"new{k}": " ".join(rng.choices(words, k=rng.randrange(1, 6))) for k in range(200)}
    resolved = ModelCatalog.build(builder, catalog, codes).codes
    assert resolved == nearest_code_by_loops(codes, catalog, builder.title_tokens, per_token)


def test_prompt_puts_the_code_first_in_each_item():
    tokenizer, builder, codes = coded_setup()
    ids = ModelCatalog.build(builder, TITLES, codes).prompt(["3", "7"])
    start = len(builder.prefix())
    assert ids[start : start + 2] == [builder.item_open_id, codes.codes["3"][0]]
    assert ids == builder.prompt([TITLES["3"], TITLES["7"]], [codes.codes["3"], codes.codes["7"]])
    assert ids[-1] == builder.item_open_id


def test_search_over_codes_is_one_model_step_and_ranks_by_the_code_softmax():
    tokenizer, builder, codes = coded_setup()
    model = tiny_coded_model(tokenizer, builder)
    catalog = ModelCatalog.build(builder, TITLES, codes)
    resolved, trie = catalog.codes, catalog.trie
    prompts = [catalog.prompt(h) for h in (["1", "2"], ["3"], ["8", "1", "6"])]
    firsts = prompt_logits_batch(model, prompts, tokenizer.pad_token_id)
    for prompt, first, deny in zip(prompts, firsts, (["1", "2"], ["3"], ["8"])):
        view = trie.view(deny=deny)
        result = constrained_beam_search(model, prompt, view, 4, 4, prompt_logits=first)
        assert result.model_steps == 1  # titles after a code are forced
        alone = constrained_beam_search(model, prompt, view, 4, 4).items  # batched first step == alone
        assert [i for i, _ in result.items] == [i for i, _ in alone]
        assert [s for _, s in result.items] == pytest.approx([s for _, s in alone], abs=1e-5)
        allowed = view.allowed(ROOT)[0].tolist()
        scores = renormalised(first, allowed)
        by_code = sorted((i for i in TITLES if i not in deny), key=lambda i: -scores[resolved[i][0]])
        assert [i for i, _ in result.items] == by_code[:4]
        search = TrieBeamSearch(view, 4, 4)
        assert len(search.allowed_tokens(search.active[0])) == len(TITLES) - len(deny)  # a full-catalog softmax


def test_a_patched_catalog_equals_a_full_build_of_the_same_titles():
    tokenizer, builder, codes = coded_setup()
    first = {"3": None, "5": "Toy Story 4 (2019)", "new": "Heat Casino", "new2": TITLES["2"]}
    then = {"new3": "Jumanji Heat", "new": None, "2": TITLES["8"]}
    patched = ModelCatalog.build(builder, TITLES, codes).with_changes(first).with_changes(then)
    final = {item: title for item, title in {**TITLES, **first, **then}.items() if title is not None}
    assert patched.titles == final and patched.patch_size == 6
    assert len(patched.titles) == len(final) and sorted(patched.titles) == sorted(final) and "3" not in patched.titles
    assert all(patched.codes[item] == code for item, code in codes.codes.items() if item in final)
    assert {patched.codes[item] for item in ("new2", "new3")} <= set(codes.codes.values())  # a donor's code
    close = builder.item_close_id
    check_same_catalog(patched.trie, {i: [*patched.codes[i], *builder.title_tokens(t), close] for i, t in final.items()})
    assert patched.prompt(["5", "new3"]) == builder.prompt([final["5"], final["new3"]], [patched.codes["5"], patched.codes["new3"]])


def test_most_popular_keeps_the_full_builds_order_then_new_items_once_each():
    tokenizer, builder, codes = coded_setup()
    popularity = {"7": 5, "2": 3, "5": 3, "1": 1}
    built = ModelCatalog.build(builder, TITLES, codes, popularity)
    assert list(built.most_popular()) == ["7", "2", "5", "1", "3", "4", "6", "8"]  # ties by item id
    patched = built.with_changes({"2": None, "new": "Heat Casino", "5": "Emma 2"}).with_changes({"2": TITLES["2"], "new": None})
    patched = patched.with_changes({"new": "Heat Casino", "newer": "Jumanji Heat"})
    assert list(patched.most_popular()) == ["7", "2", "5", "1", "3", "4", "6", "8", "new", "newer"]
    assert list(patched.with_changes({"7": None}).most_popular())[:2] == ["2", "5"]


def test_run_heads():
    import numpy as np

    from hatllm.core.arrays import run_heads

    assert run_heads(np.array([3, 3, 5, 7, 7, 7, 3])).tolist() == [True, False, True, True, False, False, True]
    assert run_heads(np.zeros(0, np.int64)).tolist() == []


def test_in_sorted_is_isin():
    import numpy as np

    from hatllm.core.arrays import in_sorted

    rng = np.random.default_rng(0)
    for size in (0, 1, 50):
        sorted_values = np.unique(rng.integers(0, 100, size))
        values = rng.integers(-5, 110, 200)
        assert in_sorted(values, sorted_values).tolist() == np.isin(values, sorted_values).tolist()


@pytest.mark.parametrize("patched", [False, True])
def test_items_sharing_a_code_share_its_probability_in_one_model_step(patched):
    """Items added after training take a trained item's code; titles were never training targets, so the
    search does not rank them by title scores: they share the code's probability evenly, in tie order (the
    trained item first), and a search stays one model step however many items share the codes."""
    import math
    from collections import Counter

    tokenizer, builder, codes = coded_setup()
    model = tiny_coded_model(tokenizer, builder)
    added = {f"new{k}": f"{TITLES[str(1 + k % 3)]} Part {k}" for k in range(7)}  # the titles of items 1-3, extended
    popularity = Counter({item: 10 for item in TITLES})
    if patched:
        catalog = ModelCatalog.build(builder, TITLES, codes, popularity).with_changes(added)
    else:
        catalog = ModelCatalog.build(builder, TITLES | added, codes, popularity)
    shared = Counter(catalog.codes[item] for item in catalog.titles)
    assert max(shared.values()) > 1
    history = ["4", "new1", "2"]
    view = catalog.trie.view(deny=history)
    prompt = catalog.prompt(history)
    result = constrained_beam_search(model, prompt, view, 10, 10)
    assert result.model_steps == 1
    live = [item for item in catalog.titles if item not in history]
    members = {code: [item for item in live if catalog.codes[item] == code] for code in shared}
    allowed = view.allowed(ROOT)[0].tolist()
    logits = prompt_logits_batch(model, [prompt], tokenizer.pad_token_id)[0]
    code_logprob = renormalised(logits, allowed)
    # Each live item: its code's probability over n live items sharing it, renormalised over the items.
    weight = {item: math.exp(code_logprob[catalog.codes[item][0]]) / len(members[catalog.codes[item]]) for item in live}
    expected = {item: math.log(w / sum(weight.values()) * len(live)) for item, w in weight.items()}
    got = dict(result.items)
    assert len(got) == 10 and set(got) <= set(live)
    for item, score in got.items():  # the log of each item's share, up to one constant over all items
        assert score - expected[item] == pytest.approx(next(iter(got.values())) - expected[next(iter(got))], abs=1e-4)
    for code, items in members.items():  # a code's items together, the trained one (most popular) first, then by id
        listed = [item for item in got if catalog.codes[item] == code]
        assert listed == sorted(items, key=lambda i: (i not in TITLES, i))[: len(listed)]
    assert max(Counter(catalog.codes[item] for item in got).values()) > 1  # a shared code was listed
