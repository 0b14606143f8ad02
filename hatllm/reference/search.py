"""The reference driver of the constrained search (`hatllm.core.search`): the HF model, one beam at a time.

Training validation, evaluation and the tests use it; the service drives the same search with the vLLM
engine (`model_patch.engine_topk`), and the tests check that both give the same items and scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from hatllm.core.fusion import ItemPrior
from hatllm.core.search import SearchResult, TrieBeamSearch
from hatllm.core.trie import TrieView
from hatllm.reference.modeling import forward, logits


def renormalised(next_logits: torch.Tensor, allowed: Sequence[int] | np.ndarray, bias: np.ndarray | None = None,
                 best: int | None = None) -> dict[int, float]:
    """Log-probabilities of the allowed tokens under the distribution restricted to them (after `bias`,
    one value per allowed token);
    with `best`, only the tokens that score at least the `best`-th highest (ties kept: the search breaks
    them by token), as many as the search reads, not every code of a large catalog."""
    allowed = np.asarray(allowed, np.int64)
    scores = next_logits[torch.from_numpy(allowed).to(next_logits.device)]
    allowed = allowed.tolist()
    if bias is not None:
        scores = scores + torch.as_tensor(bias, device=scores.device).to(scores.dtype)
    log_probs = scores.log_softmax(-1)
    if best is None or best >= len(allowed):
        return dict(zip(allowed, log_probs.tolist()))
    kept = (log_probs >= log_probs.topk(best).values[-1]).nonzero()[:, 0]
    return dict(zip([allowed[i] for i in kept.tolist()], log_probs[kept].tolist()))


@torch.no_grad()
def prompt_logits_batch(model, prompts: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """Next-token logits after each prompt, from one right-padded forward (the first step of many
    searches at once; padding after a prompt never reaches its positions, all masks being causal)."""
    length = max(len(p) for p in prompts)
    ids = torch.tensor([p + [pad_id] * (length - len(p)) for p in prompts], device=model.device)
    hidden = forward(model, ids).hidden
    last = hidden[torch.arange(len(prompts), device=hidden.device),
                  torch.tensor([len(p) - 1 for p in prompts], device=hidden.device)]
    return list(logits(model, last))


@torch.no_grad()
def constrained_beam_search(model, prompt: list[int], view: TrieView, num_items: int, beam_width: int | None,
                            prompt_logits: torch.Tensor | None = None, prior: ItemPrior | None = None) -> SearchResult:
    """The reference driver: the HF model, one beam at a time on top of the prompt's KV cache.
    `prompt_logits` (from `prompt_logits_batch`) saves the prompt's forward when no beam goes deeper."""
    cache = None
    search = TrieBeamSearch(view, num_items, beam_width, prior)
    while not search.done:
        answers = []
        for beam in search.active:
            if cache is None and (beam.tokens or prompt_logits is None):
                cache = DynamicCache(config=model.config)
                prompt_logits = logits(model, forward(model, torch.tensor([prompt], device=model.device), cache=cache).hidden[0, -1])
            next_logits = prompt_logits
            if beam.tokens:
                hidden = forward(model, torch.tensor([prompt + list(beam.tokens)], device=model.device), cache=cache).hidden
                next_logits = logits(model, hidden[0, -1])
                cache.crop(len(prompt))
            answers.append(renormalised(next_logits, search.allowed_tokens(beam), search.logit_bias(beam), search.beam_width))
        search.advance(answers)
    return search.result()
