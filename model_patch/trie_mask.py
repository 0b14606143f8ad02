"""A search request's allowed tokens and fusion biases, applied in the engine by one logits processor.

vLLM's own ``allowed_token_ids`` and ``logit_bias`` take a Python list and a dict per request, which vLLM
validates element by element, and writes into the batch's tensors from Python lists (the bias of every
request in the batch again whenever the batch changes). The root of a search allows every live code
(~10k tokens on the default model): that was about a third of a first-round request's time
(`benchmarks/request_overhead.py`). Here a request carries them packed in ``extra_args`` (int32 token
ids, float32 biases aligned with them), which cost one copy each way.

Effect, as vLLM's pair has it: the allowed tokens' logits plus their biases, every other token -inf.
It is not argmax-invariant, so vLLM runs it before sampling, and ``processed_logprobs`` are the
log-probabilities renormalised over the allowed tokens, as `hatllm.reference.search` computes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, process_dict_updates

ALLOWED = "hat_allowed"  # extra_args keys
BIAS = "hat_bias"
PROCESSOR = f"{__name__}:TrieMask"  # as vLLM's `logits_processors` engine argument names it


def trie_mask_args(allowed: Sequence[int] | np.ndarray, bias: Sequence[float] | np.ndarray | None = None) -> dict[str, bytes]:
    """``extra_args`` for a request that may continue with `allowed` tokens only, each `bias` added."""
    args = {ALLOWED: np.ascontiguousarray(allowed, np.int32).tobytes()}
    if bias is not None:
        args[BIAS] = np.ascontiguousarray(bias, np.float32).tobytes()
    return args


class TrieMask(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.device = device
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch row -> (tokens, biases)
        # Every constrained row's entries, concatenated when the batch changes: one gather and two scatters
        # a step, however many requests are in the batch.
        self.constrained = torch.zeros(0, dtype=torch.int64)
        self.entries = (self.constrained, self.constrained)  # (row, token) of every allowed token
        self.bias = torch.zeros(0)

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        args = params.extra_args or {}
        if ALLOWED not in args:
            if BIAS in args:
                raise ValueError(f"extra_args {BIAS!r} needs {ALLOWED!r}")
            return
        allowed, bias = args[ALLOWED], args.get(BIAS)
        if not isinstance(allowed, bytes) or not allowed or len(allowed) % 4:
            raise ValueError(f"extra_args {ALLOWED!r} must be non-empty int32 bytes")
        if bias is not None and (not isinstance(bias, bytes) or len(bias) != len(allowed)):
            raise ValueError(f"extra_args {BIAS!r} must be float32 bytes, one per allowed token")

    def is_argmax_invariant(self) -> bool:
        return False

    def _row(self, params: SamplingParams, _prompt, _output) -> tuple[np.ndarray, np.ndarray] | None:
        args = params.extra_args or {}
        if ALLOWED not in args:
            return None
        tokens = np.frombuffer(args[ALLOWED], np.int32)
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:  # an index error later would kill the engine
            raise ValueError(f"allowed token ids must be in [0, {self.vocab_size})")
        bias = np.frombuffer(args[BIAS], np.float32) if BIAS in args else np.zeros(len(tokens), np.float32)
        return tokens, bias

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not process_dict_updates(self.rows, batch_update, self._row) or not self.rows:
            return
        # numpy, not torch: torch's parallel ops here woke the OpenMP threads for a few hundred microseconds.
        rows = np.fromiter(self.rows, np.int64, len(self.rows))
        tokens, biases = zip(*self.rows.values())
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        self.constrained = torch.from_numpy(rows).to(self.device)
        self.entries = (torch.from_numpy(np.repeat(rows, lengths)).to(self.device),
                        torch.from_numpy(np.concatenate(tokens).astype(np.int64)).to(self.device))
        self.bias = torch.from_numpy(np.concatenate(biases)).to(self.device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.rows:
            kept = logits[self.entries] + self.bias  # + 0 where a request has no bias: exact
            logits[self.constrained] = -torch.inf
            logits[self.entries] = kept
        return logits
