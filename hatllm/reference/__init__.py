"""The HF `transformers` reference model with the HatLLM masks, and the constrained search driven by it."""
