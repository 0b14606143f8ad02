"""The HatLLM reference model: any HF decoder (Llama here, Qwen alike) run with per-layer masks.

The checkpoint format is `hatllm.core.checkpoint`; this module builds, trains and runs such models in
PyTorch, as the ground truth the vLLM plugin is tested against.

The masks enter through transformers' attention-function registry: `hat_attention` looks up its
layer's type and applies `masks.layer_mask`; the model class itself is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hatllm.core.checkpoint import check_hat_config, hat_architecture
from hatllm.core.layers import validate_schedule
from hatllm.core.masks import first_item_position, item_starts, layer_mask

HAT_ATTENTION = "hat"

# Model sizes trainable on a CPU. "base" is ~4x "small" in compute, for benchmarks.
MODEL_SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=2),
    "mini": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4),
    "base": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8),
}


class HatMasks:
    """Per-forward mask state: item segments of the full token sequence, masks built once per type."""

    def __init__(self, config, token_ids: torch.Tensor, num_queries: int):
        self.schedule = config.hat_layer_types
        self.starts = item_starts(token_ids, config.hat_item_open_token_id, config.hat_item_close_token_id)
        self.first_item = first_item_position(token_ids, config.hat_item_open_token_id)
        total = token_ids.shape[-1]
        self.key_pos = torch.arange(total, device=token_ids.device)
        self.query_pos = self.key_pos[total - num_queries :]
        self._by_type: dict[str, torch.Tensor] = {}

    def for_layer(self, layer_idx: int) -> torch.Tensor:
        kind = self.schedule[layer_idx]
        mask = self._by_type.get(kind)
        if mask is None:
            q_starts = self.starts[:, self.query_pos[0] :]
            mask = layer_mask(kind, q_starts, self.query_pos, self.key_pos, self.first_item)[:, None]
            self._by_type[kind] = mask
        return mask


def hat_attention(module, query, key, value, attention_mask, hat_masks: HatMasks | None = None, **kwargs):
    if hat_masks is None:
        raise RuntimeError("HatLLM attention needs hat_masks: call the model through hatllm.reference.modeling.forward")
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(
        module, query, key, value, hat_masks.for_layer(module.layer_idx), is_causal=False, **kwargs
    )


AttentionInterface.register(HAT_ATTENTION, hat_attention)


def make_config(
    vocab_size: int,
    size: str,
    schedule: list[str],
    item_open_id: int,
    item_close_id: int,
    instruction: str,
    bos_id: int | None,
    pad_id: int | None,
    num_layers: int | None = None,
    max_positions: int = 2048,
) -> LlamaConfig:
    size_args = dict(MODEL_SIZES[size])
    if num_layers:
        size_args["num_hidden_layers"] = num_layers
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=item_close_id,  # generation of one item ends at its close delimiter
        pad_token_id=pad_id,
        **size_args,
    )
    config.num_key_value_heads = config.num_attention_heads
    config.architectures = [hat_architecture("LlamaForCausalLM")]
    config.hat_layer_types = validate_schedule(schedule, config.num_hidden_layers)
    config.hat_item_open_token_id = item_open_id
    config.hat_item_close_token_id = item_close_id
    config.hat_instruction = instruction
    return config


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=HAT_ATTENTION, dtype=dtype)
    check_hat_config(model.config)
    return model.eval()


def save_model(model: PreTrainedModel, tokenizer, path: str | Path) -> None:
    """Save in HF format under the Hat architecture name (save_pretrained writes the class name)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config_path = Path(path) / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [hat_architecture(type(model).__name__)]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class ForwardOutput:
    hidden: torch.Tensor  # [B, new tokens, hidden]
    cache: object | None


def forward(model: PreTrainedModel, token_ids: torch.Tensor, cache=None, use_cache: bool = False) -> ForwardOutput:
    """Run the decoder over `token_ids` ([B, T], right-padded) with the HatLLM masks.

    With a `cache` holding the first L tokens, only tokens L.. are computed; `token_ids` is always the
    whole sequence, because a new token's mask row depends on where its item started.
    """
    past = cache.get_seq_length() if cache is not None else 0
    new_ids = token_ids[:, past:]
    masks = HatMasks(model.config, token_ids, new_ids.shape[1])
    out = model.model(
        input_ids=new_ids,
        past_key_values=cache,
        use_cache=use_cache or cache is not None,
        hat_masks=masks,
    )
    return ForwardOutput(out.last_hidden_state, out.past_key_values)


def logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    return model.lm_head(hidden).float()
