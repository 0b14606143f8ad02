"""Collaborative item codes: resolution for new items, the trie and search over coded titles."""

from collections import Counter

import pytest
import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import ItemCodes
from hatllm.core.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from hatllm.core.search import TrieBeamSearch
from hatllm.core.trie import ROOT, TitleTrie
from hatllm.reference.modeling import HAT_ATTENTION, make_config
from hatllm.reference.search import constrained_beam_search, prompt_logits_batch, renormalised
from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN, train_tokenizer
from tests.helpers import TITLES


def coded_setup():
    code_tokens = ItemCodes.code_tokens(len(TITLES))
    tokenizer = train_tokenizer([*TITLES.values(), DEFAULT_INSTRUCTION], 300, code_tokens)
    open_id, close_id = tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE])
    builder = PromptBuilder(tokenizer, open_id, close_id, DEFAULT_INSTRUCTION)
    codes = ItemCodes({item: (tok,) for item, tok in zip(sorted(TITLES), tokenizer.convert_tokens_to_ids(code_tokens))})
    return tokenizer, builder, codes


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
    resolved = codes.for_catalog(catalog, builder.title_tokens)
    assert {i: resolved[i] for i in TITLES} == codes.codes  # trained items keep their own code
    assert resolved["new1"] in (codes.codes["1"], codes.codes["6"])  # a Toy Story
    assert resolved["new2"] in codes.codes.values()
    # The shared code branches on the title: both items stay reachable and distinct.
    trie = TitleTrie.from_catalog(catalog, builder, Counter(), resolved)
    assert trie.leaf_of["new1"] != trie.leaf_of[[i for i, c in codes.codes.items() if c == resolved["new1"]][0]]


def test_prompt_puts_the_code_first_in_each_item():
    tokenizer, builder, codes = coded_setup()
    ids = ModelCatalog.build(builder, TITLES, codes).prompt(["3", "7"])
    start = len(builder.prefix())
    assert ids[start : start + 2] == [builder.item_open_id, codes.codes["3"][0]]
    assert ids == builder.prompt([TITLES["3"], TITLES["7"]], [codes.codes["3"], codes.codes["7"]])
    assert ids[-1] == builder.item_open_id


def test_search_over_codes_is_one_model_step_and_ranks_by_the_code_softmax():
    tokenizer, builder, codes = coded_setup()
    config = make_config(len(tokenizer), "tiny", ["IN", "OR", "CR"], builder.item_open_id, builder.item_close_id,
                         DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id)
    config._attn_implementation = HAT_ATTENTION
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config).eval()
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
        allowed = [tok for tok, _ in view.allowed(ROOT)]
        scores = renormalised(first, allowed)
        by_code = sorted((i for i in TITLES if i not in deny), key=lambda i: -scores[resolved[i][0]])
        assert [i for i, _ in result.items] == by_code[:4]
        search = TrieBeamSearch(view, 4, 4)
        assert len(search.allowed_tokens(search.active[0])) == len(TITLES) - len(deny)  # a full-catalog softmax
