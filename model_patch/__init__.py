"""vLLM plugin serving HatLLM checkpoints with their per-layer IN / OR / CR attention masks.

Loaded by vLLM itself in every process through the ``vllm.general_plugins`` entry point (see
pyproject.toml); it registers ``Hat<Base>`` architectures with vLLM's ModelRegistry. See README.md.
"""

# Base architectures a HatLLM checkpoint may be fine-tuned from: vLLM module and class of each.
BASE_MODELS = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3",
    "MistralForCausalLM": "vllm.model_executor.models.mistral",
}


def register() -> None:
    """Entry point: idempotent, cheap (classes are imported lazily by vLLM)."""
    from vllm import ModelRegistry

    from hatllm.modeling import hat_architecture

    for base in BASE_MODELS:
        ModelRegistry.register_model(hat_architecture(base), f"model_patch.hat_models:{hat_architecture(base)}")
