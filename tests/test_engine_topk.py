"""Catalog-constrained top-K on the real (patched) vLLM engine equals the reference search.

One AsyncLLM on the tiny HatLLM checkpoint, driven from its own event loop; searches run concurrently
so that their beams share engine steps. Tolerance as in test_engine (fp32, summation order only).
"""

import asyncio
import os
from collections import Counter

import numpy as np
import pytest
import torch

from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import ItemCodes
from hatllm.core.trie import TitleTrie
from hatllm.reference.modeling import forward, load_model, logits
from hatllm.reference.search import constrained_beam_search
from tests.helpers import TITLES, require

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = require("vllm")

TOL = 1e-4
TITLE_LIST = list(TITLES.values())


@pytest.fixture(scope="module")
def engine_search(hat_checkpoint):
    """`run(coroutine)` on the engine's loop, and the `EngineTopK` bound to it."""
    from model_patch.engine_topk import EngineTopK, engine_args, start_engine
    from model_patch.kv_tail import DEFAULT_MAX_TAILS

    # As served, but with the tail store, which the service leaves off for this checkpoint (one-token codes):
    # the engine must stay exact with it, for models whose beams extend their prompts.
    args = engine_args(str(hat_checkpoint), kv_tails=DEFAULT_MAX_TAILS, dtype="float32", max_model_len=256,
                       block_size=16, enforce_eager=True, seed=0, distributed_executor_backend="uni")
    engine = start_engine(args)
    with asyncio.Runner() as runner:
        yield runner.run, EngineTopK(engine)
        runner.run(shut_down(engine))
    # Not kept alive (by this frame, or the engine's output task, which the runner's close lets finish) until
    # the interpreter's exit, where its __del__ fails on torn-down module globals.
    del engine


async def shut_down(engine) -> None:
    """Inside the loop, so the client closes its sockets now (else zmq hangs at GC)."""
    engine.shutdown()


@pytest.fixture(scope="module")
def trie(builder):
    return ModelCatalog.build(builder, TITLES, None, Counter({"5": 3, "4": 1})).trie


def requests(builder, trie):
    """(prompt, view) pairs: histories of 1..4 items excluded, plus an allow-list and a deny-list."""
    cases = []
    for i in range(6):
        history = [str(1 + (i + j) % len(TITLES)) for j in range(1 + i % 4)]
        cases.append((builder.prompt([TITLES[h] for h in history]), trie.view(deny=history)))
    cases.append((builder.prompt([TITLES["1"]]), trie.view(allow=["2", "4", "5", "6", "7"])))
    cases.append((builder.prompt([TITLES["3"], TITLES["8"]]), trie.view(deny=["4", "6"])))
    return cases


@pytest.mark.parametrize("k, beam_width", [(3, 3), (2, 2), (3, 6), (8, 8)])  # narrow, wider than k, wide
def test_concurrent_searches_equal_reference(engine_search, hat_checkpoint, builder, trie, k, beam_width):
    run, topk = engine_search
    cases = requests(builder, trie)

    async def all_searches():
        return await asyncio.gather(*(topk.search(p, v, k, beam_width) for p, v in cases))

    results = run(all_searches())
    model = load_model(hat_checkpoint)
    for (prompt, view), got in zip(cases, results):
        ref = constrained_beam_search(model, prompt, view, k, beam_width)
        assert [item for item, _ in got.items] == [item for item, _ in ref.items]
        assert [s for _, s in got.items] == pytest.approx([s for _, s in ref.items], abs=TOL)
        assert got.model_steps == ref.model_steps
        assert all(view.is_live(item) for item, _ in got.items)
        assert len({item for item, _ in got.items}) == len(got.items)


def test_each_scoring_round_is_one_engine_step(engine_search, builder):
    """A round's beams reach the engine one after another; the round scheduler holds them until the last is
    in (model_patch.round_scheduler), so each round comes back as one batch of outputs (one engine step)."""
    from model_patch.engine_topk import output_batches

    run, topk = engine_search
    sequels = {str(i): f"{title} {part}" for i, (title, part) in
               enumerate((t, p) for t in ("Toy Story", "Heat", "Emma", "Casino") for p in ("(1995)", "2 (1999)", "3 (2010)"))}
    trie = ModelCatalog.build(builder, sequels, None).trie  # every title shares its first tokens with two others
    with output_batches(topk.engine) as batches:
        results = [run(topk.search(builder.prompt([TITLES[item]]), trie.view(), 8, 8)) for item in TITLES]
    assert max(batches) > 1  # rounds of several beams were searched
    assert len(batches) == sum(result.model_steps for result in results)


def test_a_round_missing_a_request_is_released(engine_search, builder):
    """Two requests of a round of three: the engine holds them (and waits, not stepping) until MAX_HOLD_S has
    passed and its next input arrives; then it answers them with that input."""
    from model_patch.round_scheduler import MAX_HOLD_S, round_args

    run, topk = engine_search
    prompt = builder.prompt([TITLES["1"]])

    async def answer(request_id, extra_args=None):
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, extra_args=extra_args)
        async for output in topk.engine.generate({"prompt_token_ids": prompt}, params, request_id):
            final = output
        return final

    async def two_of_three_then_another():
        held = [asyncio.ensure_future(answer(f"incomplete-{i}", round_args("incomplete", 3))) for i in range(2)]
        await asyncio.sleep(2 * MAX_HOLD_S)
        assert not any(task.done() for task in held)  # held past MAX_HOLD_S: no step was taken for them
        return await asyncio.wait_for(asyncio.gather(*held, answer("next-input")), 60)

    outputs = run(two_of_three_then_another())
    assert [len(output.outputs[0].token_ids) for output in outputs] == [1, 1, 1]


def test_a_search_whose_requests_the_engine_aborts_says_so(engine_search, builder, trie):
    """An engine core that stops aborts the requests it holds: their final outputs carry no scores. The search
    fails with RequestAborted (the service answers 503), not with an IndexError (it answered 500)."""
    from model_patch.engine_topk import RequestAborted

    run, topk = engine_search

    async def aborted_search():
        search = asyncio.ensure_future(topk.search(builder.prompt([TITLES["1"]]), trie.view(), 3))
        in_flight = topk.engine.output_processor.request_states
        while not in_flight:
            await asyncio.sleep(0)
        await topk.engine.abort(list(in_flight), internal=True)
        return await search

    with pytest.raises(RequestAborted, match=r"without scoring it \(abort\)"):
        run(aborted_search())


def test_short_list_says_so_and_duplicates_resolved(engine_search, builder, trie):
    run, topk = engine_search
    result = run(topk.search(builder.prompt([TITLES["1"]]), trie.view(allow=["4", "5", "8"]), 10))
    assert sorted(item for item, _ in result.items) == ["4", "5", "8"]
    assert result.exhausted and result.available == 3
    scores = dict(result.items)
    assert scores["4"] == scores["5"]  # one title, one score; more popular item first
    ids = [item for item, _ in result.items]
    assert ids.index("5") == ids.index("4") - 1


def test_beam_width_out_of_range_is_refused(engine_search, builder, trie):
    run, topk = engine_search
    with pytest.raises(ValueError, match="beam_width"):
        run(topk.search(builder.prompt([TITLES["1"]]), trie.view(), 5, beam_width=101))


def test_tokens_beyond_the_models_vocabulary_are_refused_before_the_engine(engine_search, builder, trie):
    """A catalog tokenized with another tokenizer: a clear error, and the engine keeps serving."""
    run, topk = engine_search
    beyond = TitleTrie(["a", "b"], np.array([topk.vocab_size, 1, topk.vocab_size + 1, 1]), np.array([2, 2]))
    with pytest.raises(ValueError, match="vocabulary"):
        run(topk.search(builder.prompt([TITLES["1"]]), beyond.view(), 2))
    assert len(run(topk.search(builder.prompt([TITLES["1"]]), trie.view(), 3)).items) == 3


def test_worker_runs_inside_the_engine_core(engine_search):
    # The served configuration: vLLM's CPU platform keeps "uni" only while the start sets its flag, and the
    # flag does not outlive the start (it would turn later sync LLMs of this process in-process).
    _, topk = engine_search
    assert topk.engine.vllm_config.parallel_config.distributed_executor_backend == "uni"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ


def test_the_tail_store_is_left_off_where_every_search_is_one_request(hat_checkpoint, tmp_path):
    from model_patch.engine_topk import default_kv_tails, engine_args
    from model_patch.kv_tail import DEFAULT_MAX_TAILS

    assert default_kv_tails(ItemCodes.load(hat_checkpoint)) == 0  # one-token codes: no beam extends a prompt
    assert engine_args(str(hat_checkpoint)).kv_transfer_config is None
    assert default_kv_tails(ItemCodes.load(tmp_path)) == DEFAULT_MAX_TAILS  # titles only: beams extend the prompt
    ItemCodes({"1": (300, 301), "2": (300, 302)}).save(tmp_path)
    assert default_kv_tails(ItemCodes.load(tmp_path)) == DEFAULT_MAX_TAILS  # two-token codes: a second round
    assert engine_args(str(tmp_path)).kv_transfer_config.kv_connector == "HatKVTailConnector"


def test_beam_request_reuses_the_prompts_partial_block(engine_search, hat_checkpoint, builder):
    # The prompt's last, partial KV block comes from the tail store (model_patch.kv_tail): the beam request
    # computes only its own tokens, with the logprobs of a full forward; a tail whose tokens differ is not used.
    run, topk = engine_search
    prompt = next(p for p in (builder.prompt([TITLES[h] for h in hs]) for hs in (["1", "2"], ["3", "1", "2"], ["8"]))
                  if len(p) % 16 > 1)
    aligned = len(prompt) - len(prompt) % 16
    beam = list(builder.title_tokens(TITLES["5"]))[:2]  # the prompt ends with an item opening
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=5, detokenize=False)

    async def generate(tokens, request_id):
        async for output in topk.engine.generate({"prompt_token_ids": tokens}, params, request_id):
            final = output
        return final

    run(generate(prompt, "tail-parent"))
    child = run(generate(prompt + beam, "tail-child"))
    assert child.num_cached_tokens == len(prompt)
    with torch.no_grad():
        model = load_model(hat_checkpoint)
        ref = logits(model, forward(model, torch.tensor([prompt + beam])).hidden[:, -1]).log_softmax(-1)[0]
    for token, logprob in child.outputs[0].logprobs[0].items():
        assert logprob.logprob == pytest.approx(ref[token].item(), abs=TOL)

    other = prompt[:-1] + [builder.title_tokens(TITLES["6"])[0]]
    assert run(generate(other + beam, "tail-mismatch")).num_cached_tokens == aligned


@pytest.mark.parametrize("fused,patched", [(False, False), (True, False), (False, True), (True, True)])
def test_coded_catalog_on_the_engine_equals_reference(engine_search, hat_checkpoint, fused, patched):
    """The recipe's prompts and trie: codes first, titles forced after them; an item added after training
    shares a code, and the items sharing it share its probability (one step still); built in full, or as the service patches a
    catalog change (a new item, a retitled one); with the checkpoint's SASRec prior fused in (sent
    to the engine as logit_bias) or not. Same items and scores as the reference search."""
    from hatllm.core.fusion import ItemPrior
    from hatllm.sasrec import load_fusion

    run, topk = engine_search
    changes = {"new": "Toy Story 3 (2010)", "3": TITLES["3"] + " Redux"}
    if patched:
        catalog = ModelCatalog.for_checkpoint(hat_checkpoint, TITLES, Counter({"5": 3})).with_changes(changes)
        assert catalog.base is not None
    else:
        catalog = ModelCatalog.for_checkpoint(hat_checkpoint, TITLES | changes, Counter({"5": 3}))
    assert sum(code == catalog.codes["new"] for code in catalog.codes.values()) == 2
    sasrec, weight = load_fusion(hat_checkpoint)
    cases = []
    for history in (["1", "2"], ["3", "new"], ["8"], ["7", "4", "2"]):
        view = catalog.trie.view(deny=history)
        prior = ItemPrior(view, sasrec.log_probs_batch([tuple(history)])[0], weight) if fused else None
        cases.append((catalog.prompt(history), view, prior))

    async def all_searches():
        return await asyncio.gather(*(topk.search(p, v, 5, 5, prior) for p, v, prior in cases))

    model = load_model(hat_checkpoint)
    steps = []
    for (prompt, view, prior), got in zip(cases, run(all_searches())):
        ref = constrained_beam_search(model, prompt, view, 5, 5, prior=prior)
        assert [item for item, _ in got.items] == [item for item, _ in ref.items]
        assert [s for _, s in got.items] == pytest.approx([s for _, s in ref.items], abs=TOL)
        assert all(view.is_live(item) for item, _ in got.items) and got.model_steps == ref.model_steps
        steps.append(got.model_steps)
    assert steps == [1] * len(cases)
