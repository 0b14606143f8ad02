"""Baseline (b) of `benchmarks.topk_decoding`: a trie logits processor for vLLM's own `beam_search`.

vLLM's beam search resubmits each beam as a new request whose prompt holds the beam's tokens, and
`BeamSearchParams` cannot pass per-request arguments; so the processor finds the item being generated
from the prompt itself (the tokens after its last item-open delimiter) and allows only the trie's
children there (EOS once a title is closed). The catalog comes from `HATLLM_BENCH_DATA`.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from hatllm.core.catalog import ModelCatalog
from hatllm.data import load_dataset


class TrieLogitsProcessor(AdapterLogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        model = vllm_config.model_config.model
        tokenizer = AutoTokenizer.from_pretrained(model)
        catalog = ModelCatalog.for_checkpoint(model, load_dataset(os.environ["HATLLM_BENCH_DATA"]).catalog.titles)
        self.builder, self.trie = catalog.builder, catalog.trie
        self.eos = tokenizer.eos_token_id

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        return self.mask

    def mask(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        ids = list(prompt_ids) + list(output_ids)
        last_open = len(ids) - 1 - ids[::-1].index(self.builder.item_open_id)
        node = self.trie.node(ids[last_open + 1:])
        allowed = [self.eos] if node is None or self.trie.is_leaf(node) else [tok for tok, _ in self.trie.edges(node)]
        masked = torch.full_like(logits, float("-inf"))
        masked[allowed] = logits[allowed]
        return masked
