"""vLLM plugin serving HatLLM checkpoints with their per-layer IN / OR / CR attention masks.

Loaded by vLLM itself in every process through the ``vllm.general_plugins`` entry point (see
pyproject.toml); it registers ``Hat<Base>`` architectures with vLLM's ModelRegistry, and vLLM's CPU attention backend with
16-token KV blocks allowed (``cpu_attention.HatCPUAttentionBackend``), and the ``HatKVTailConnector`` that
extends prefix caching to partial last blocks (``kv_tail``); in vLLM's own processes (the engine core), it
makes them exit when their parent dies (``parent_watch``). See README.md.
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
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from hatllm.core.checkpoint import hat_architecture
    from model_patch.parent_watch import exit_with_parent

    for base in BASE_MODELS:
        ModelRegistry.register_model(hat_architecture(base), f"model_patch.hat_models:{hat_architecture(base)}")
    register_backend(AttentionBackendEnum.CPU_ATTN, "model_patch.cpu_attention.HatCPUAttentionBackend")
    try:
        KVConnectorFactory.register_connector("HatKVTailConnector", "model_patch.kv_tail", "KVTailConnector")
    except ValueError:  # registered already: the factory refuses a second registration
        pass
    exit_with_parent()
