"""What makes a checkpoint a HatLLM checkpoint: its architecture name and the mask fields of its config.

A checkpoint is a plain `transformers` checkpoint whose config.json also carries
  - ``hat_layer_types``: one of IN / OR / CR per layer (`layers`),
  - ``hat_item_open_token_id`` / ``hat_item_close_token_id``: the item delimiters,
  - ``hat_instruction``: the prompt's instruction text,
and whose ``architectures`` is the base one prefixed with ``Hat`` (``HatLlamaForCausalLM``). The prefix
makes a stock vLLM refuse the checkpoint instead of silently serving it with causal attention; the
`model_patch` plugin registers those names. Training writes such configs (`hatllm.reference.modeling`),
the vLLM plugin reads them: both through these helpers.
"""

from __future__ import annotations

from hatllm.core.layers import validate_schedule

HAT_ARCHITECTURE_PREFIX = "Hat"


def hat_architecture(base_architecture: str) -> str:
    return HAT_ARCHITECTURE_PREFIX + base_architecture


def check_hat_config(config) -> None:
    """Refuse a config that does not fully describe its masks."""
    for attr in ("hat_layer_types", "hat_item_open_token_id", "hat_item_close_token_id"):
        if getattr(config, attr, None) is None:
            raise ValueError(f"config has no {attr}: not a HatLLM checkpoint")
    validate_schedule(config.hat_layer_types, config.num_hidden_layers)
