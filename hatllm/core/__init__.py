"""The spec and the pure search, shared by training, evaluation and serving (see `hatllm`)."""
