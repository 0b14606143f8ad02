"""Helpers the tests import (`from tests.helpers import ...`): the tiny catalog, the tiny model, `require`."""

import os

import pytest
import torch
from transformers import LlamaForCausalLM

from hatllm.core.item_codes import ItemCodes
from hatllm.core.layers import parse_schedule
from hatllm.core.prompt import DEFAULT_INSTRUCTION
from hatllm.reference.modeling import HAT_ATTENTION, make_config

# CI sets this: a dependency a test needs (vLLM) missing is then a failure, not a silent skip.
REQUIRE_ALL = os.environ.get("HATREC_TESTS_REQUIRE_ALL") == "1"


def require(module: str):
    """Import `module` for a test module; skip it when missing, unless HATREC_TESTS_REQUIRE_ALL=1."""
    if REQUIRE_ALL:
        return __import__(module)
    return pytest.importorskip(module)


TITLES = {
    "1": "Toy Story (1995)",
    "2": "Jumanji (1995)",
    "3": "Heat (1995)",
    "4": "Emma (1996)",
    "5": "Emma (1996)",  # duplicate title, another item
    "6": "Toy Story 2 (1999)",
    "7": "Casino (1995)",
    "8": "Sabrina (1995)",
}

CODE_TOKENS = ItemCodes.code_tokens(len(TITLES))


def tiny_model(tokenizer, builder, schedule: str, layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    config = make_config(
        len(tokenizer), "tiny", parse_schedule(schedule, layers), builder.item_open_id, builder.item_close_id,
        DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id, layers,
    )
    config._attn_implementation = HAT_ATTENTION
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
