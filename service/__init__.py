"""The recommendation gateway: FastAPI over Redis histories and the patched vLLM engine."""
