"""Scheduler side of the tail store (model_patch.kv_tail), with stand-ins for vLLM's requests and block manager.

The engine side (a beam request reusing its prompt's partial block, logprobs equal to the reference) is in
tests/test_engine_topk.py, on the real engine.
"""

from types import SimpleNamespace

import pytest

from tests.helpers import require

require("vllm")

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402

from model_patch.kv_tail import KVTailConnector, kv_tail_transfer_config  # noqa: E402

BLOCK = 4


def connector(max_tails: int, hash_unit: int = BLOCK) -> KVTailConnector:
    config = SimpleNamespace(cache_config=SimpleNamespace(block_size=BLOCK),
                             kv_transfer_config=kv_tail_transfer_config(max_tails))
    tails = KVTailConnector(config, KVConnectorRole.SCHEDULER, SimpleNamespace(hash_block_size=hash_unit))
    tails.blocks = {}
    manager = SimpleNamespace(get_block_ids=lambda request_id: (tails.blocks[request_id],), block_pool=None)
    tails.bind_kv_cache_manager(manager)
    return tails


def request(request_id: str, tokens: list[int], computed: int = 0, hash_unit: int = BLOCK) -> SimpleNamespace:
    hashes, parent = [], None
    for end in range(hash_unit, len(tokens) + 1, hash_unit):  # chained like vLLM's block hashes
        parent = hash((parent, tuple(tokens[end - hash_unit:end])))
        hashes.append(parent)
    return SimpleNamespace(request_id=request_id, all_token_ids=tokens, num_tokens=len(tokens),
                           num_prompt_tokens=len(tokens), num_computed_tokens=computed, block_hashes=hashes)


def prefill(tails: KVTailConnector, req, block_ids: list[int]):
    """The step that computes `req`'s whole prompt: its connector metadata."""
    tails.blocks[req.request_id] = block_ids
    tails.on_new_request(req)
    step = SimpleNamespace(num_scheduled_tokens={req.request_id: req.num_tokens - req.num_computed_tokens})
    return tails.build_connector_meta(step)


PROMPT = list(range(100, 110))  # two full blocks and a 2-token tail


def test_prompt_tail_is_saved_and_loaded_into_the_child_block():
    tails = connector(8)
    meta = prefill(tails, request("parent", PROMPT), [7, 8, 9])
    assert meta.saves == [(0, 9)] and meta.loads == []

    child = request("child", PROMPT + [5])
    assert tails.get_num_new_matched_tokens(child, 8) == (2, False)
    tails.update_state_after_alloc(child, SimpleNamespace(get_block_ids=lambda: ([7, 8, 11],)), 2)
    meta = prefill(tails, child, [7, 8, 11])
    assert meta.loads == [(0, 11)]
    assert meta.saves == [(1, 11)]  # the child's own tail (3 tokens), for its children


def test_no_hit_unless_the_tail_tokens_and_the_cached_blocks_match():
    tails = connector(8)
    prefill(tails, request("parent", PROMPT), [7, 8, 9])
    assert tails.get_num_new_matched_tokens(request("other", PROMPT[:-1] + [1, 5]), 8) == (0, False)
    assert tails.get_num_new_matched_tokens(request("short-hit", PROMPT + [5]), 4) == (0, False)
    # The same prompt again: the last token must still be computed, and no shorter tail is stored.
    assert tails.get_num_new_matched_tokens(request("again", PROMPT), 8) == (0, False)


def test_block_aligned_prompts_and_one_block_prompts_store_nothing():
    tails = connector(8)
    assert prefill(tails, request("aligned", PROMPT[:8]), [1, 2]).saves == []
    assert prefill(tails, request("tiny", PROMPT[:3]), [3]).saves == []


def test_least_recently_used_tail_is_evicted():
    tails = connector(2)
    for i in range(2):
        prefill(tails, request(f"p{i}", PROMPT[:-1] + [i]), [1, 2, 10 + i])
    assert tails.get_num_new_matched_tokens(request("c0", PROMPT[:-1] + [0, 5]), 8) == (2, False)  # p0 now most recent
    meta = prefill(tails, request("p2", PROMPT[:-1] + [2]), [1, 2, 12])
    assert meta.saves == [(1, 12)]  # p1's index reused
    assert tails.get_num_new_matched_tokens(request("c1", PROMPT[:-1] + [1, 5]), 8) == (0, False)
    assert tails.get_num_new_matched_tokens(request("c0", PROMPT[:-1] + [0, 5]), 8) == (2, False)


def test_reset_cache_forgets_every_tail():
    tails = connector(8)
    prefill(tails, request("parent", PROMPT), [7, 8, 9])
    assert tails.reset_cache() is True
    assert tails.get_num_new_matched_tokens(request("child", PROMPT + [5]), 8) == (0, False)


def test_hashes_finer_than_blocks_key_on_the_whole_aligned_prefix():
    # With prefix_match_unit 2 and 4-token blocks, the key must cover all 8 tokens before the tail: a prompt
    # differing only in tokens 4..7 must not get the tail.
    tails = connector(8, hash_unit=2)
    assert prefill(tails, request("parent", PROMPT, hash_unit=2), [7, 8, 9]).saves == [(0, 9)]
    assert tails.get_num_new_matched_tokens(request("child", PROMPT + [5], hash_unit=2), 8) == (2, False)
    other = PROMPT[:4] + [1, 1, 1, 1] + PROMPT[8:] + [5]
    assert tails.get_num_new_matched_tokens(request("other", other, hash_unit=2), 8) == (0, False)


def test_max_tails_must_be_positive():
    with pytest.raises(ValueError, match="max_tails"):
        connector(0)
