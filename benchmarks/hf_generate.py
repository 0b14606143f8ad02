"""Baseline (c) of `benchmarks.topk_decoding`: HF `generate` on a HatLLM checkpoint.

`generate` calls the model on the uncached tokens only, but a token's HatLLM mask row depends on where
its item started; so the inputs for each step get the masks computed from the whole sequence, exactly as
`hatllm.reference.modeling.forward` does.
"""

from __future__ import annotations

from transformers import LlamaForCausalLM

from hatllm.core.checkpoint import check_hat_config
from hatllm.reference.modeling import HAT_ATTENTION, HatMasks


class HatGenerateModel(LlamaForCausalLM):
    @classmethod
    def load(cls, path: str) -> "HatGenerateModel":
        model = cls.from_pretrained(path, attn_implementation=HAT_ATTENTION).eval()
        check_hat_config(model.config)
        return model

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        inputs["hat_masks"] = HatMasks(self.config, input_ids, inputs["input_ids"].shape[1])
        return inputs
