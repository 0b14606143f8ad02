"""Training: tokenizer, the LLM recommender, the SASRec teacher, fusion tuning, the recipe, the default model."""
