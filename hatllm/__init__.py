"""HatLLM recommendation: the model-independent core, and the offline work on top of it.

Layers, each importing only the ones above it (tests/test_layering.py checks this):

  hatllm.core        the spec and the pure search: layer types and masks, the checkpoint format, prompts,
                     item codes, the catalog trie, the constrained beam search, decode-time fusion.
                     No model code, no vLLM; torch only for the mask tensors (`core.masks`).
  hatllm.data        datasets and the leave-one-out split (no torch).
  hatllm.sasrec      the SASRec network: baseline, teacher, and the service's fusion prior.
  hatllm.reference   the HF `transformers` model with the masks, and the search driven by it: the ground
                     truth that training, evaluation and the engine tests use. Never served.
  hatllm.evaluation  metrics, the evaluation CLI, reports and plots.
  hatllm.training    tokenizer, LLM and SASRec training, fusion tuning, the recipe, the default model.

Serving sits beside it: `model_patch` (everything that imports vLLM) and `service` (the HTTP API) use
`hatllm.core`, `hatllm.data` and `hatllm.sasrec`, never training, evaluation or the reference.
"""
