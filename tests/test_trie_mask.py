"""The engine-side mask of the constrained search (`model_patch.trie_mask`) on hand-made batches: what
vLLM's `allowed_token_ids` plus `logit_bias` would give, through batch additions, removals and moves.
The real engine runs it in tests/test_engine_topk.py (searches equal the reference, fused or not)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import require

require("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from model_patch.trie_mask import TrieMask, trie_mask_args  # noqa: E402

VOCAB = 10


def mask() -> TrieMask:
    config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB))
    return TrieMask(config, torch.device("cpu"), False)


def request(allowed=None, bias=None) -> SamplingParams:
    extra = None if allowed is None else trie_mask_args(np.array(allowed), None if bias is None else np.array(bias))
    return SamplingParams(max_tokens=1, extra_args=extra)


def expected(logits: torch.Tensor, allowed, bias=None) -> torch.Tensor:
    """vLLM's way: masked_fill of the disallowed tokens, then the bias added."""
    row = torch.full_like(logits, -torch.inf)
    row[allowed] = logits[allowed] + (torch.tensor(bias, dtype=torch.float32) if bias is not None else 0)
    return row


def test_rows_are_masked_biased_or_left_alone_as_the_batch_changes():
    processor = mask()
    a, b = ([1, 3, 7], [0.5, -1.25, -100.0]), ([2],)
    processor.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, request(*a), None, []), (1, request(), None, []), (2, request(*b), None, [])]))
    logits = torch.randn(3, VOCAB)
    out = processor.apply(logits.clone())
    assert torch.equal(out[0], expected(logits[0], *a))
    assert torch.equal(out[1], logits[1])  # no extra_args: untouched
    assert torch.equal(out[2], expected(logits[2], *b))

    # row 1 leaves, rows 0 and 2 swap, a new unconstrained request takes row 1
    processor.update_state(BatchUpdate(batch_size=3, removed=[1], added=[(1, request(), None, [])],
                                       moved=[(0, 2, MoveDirectionality.SWAP)]))
    logits = torch.randn(3, VOCAB)
    out = processor.apply(logits.clone())
    assert torch.equal(out[0], expected(logits[0], *b))
    assert torch.equal(out[1], logits[1])
    assert torch.equal(out[2], expected(logits[2], *a))

    processor.update_state(BatchUpdate(batch_size=1, removed=[0, 2], added=[], moved=[]))
    logits = torch.randn(3, VOCAB)
    assert torch.equal(processor.apply(logits.clone()), logits)  # nothing constrained any more


@pytest.mark.parametrize("extra_args", [
    {"hat_bias": np.zeros(2, np.float32).tobytes()},  # a bias without tokens
    {"hat_allowed": b""},
    {"hat_allowed": b"\x01\x00\x00"},  # not whole int32s
    {"hat_allowed": [1, 2]},
    {"hat_allowed": np.array([1, 2], np.int32).tobytes(), "hat_bias": np.zeros(3, np.float32).tobytes()},
])
def test_malformed_requests_are_refused_at_admission(extra_args):
    with pytest.raises(ValueError):
        TrieMask.validate_params(SamplingParams(max_tokens=1, extra_args=extra_args))


def test_tokens_outside_the_vocabulary_are_refused():
    TrieMask.validate_params(request([0, VOCAB - 1]))
    with pytest.raises(ValueError, match="allowed token ids"):
        mask().update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, request([0, VOCAB]), None, [])]))
