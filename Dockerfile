# syntax=docker/dockerfile:1
#
# LlamaMan on top of llama.cpp's official server image, so the llama-server it supervises is built
# for the same GPU stack as the image.
#
#   docker build --build-arg BACKEND=cuda -t llamaman:cuda .
#
# BACKEND picks the base image: cuda (default), cpu, rocm or vulkan.

ARG BACKEND=cuda

# One alias per backend; BuildKit only pulls the one the final FROM names.
FROM ghcr.io/ggml-org/llama.cpp:server AS llama-cpu
FROM ghcr.io/ggml-org/llama.cpp:server-cuda AS llama-cuda
FROM ghcr.io/ggml-org/llama.cpp:server-rocm AS llama-rocm
FROM ghcr.io/ggml-org/llama.cpp:server-vulkan AS llama-vulkan

FROM llama-${BACKEND}

# The llama.cpp images are Ubuntu 24.04 (Python 3.12); a venv keeps pip away from the system
# Python, which Ubuntu marks as externally managed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/llamaman
ENV PATH=/opt/llamaman/bin:$PATH

# Only what the package needs: a checkout's models/, data/ or .venv never enter the image.
WORKDIR /opt/llamaman/src
COPY pyproject.toml README.md main.py constraints.txt ./
COPY llamaman ./llamaman
COPY pages ./pages
COPY components ./components
# No [server] extra: the base image already has the matching llama-server.
RUN pip install --no-cache-dir -c constraints.txt .

# /app/llama-server is where the llama.cpp images keep their binary (next to its backend libraries).
# Its LLAMA_ARG_HOST=0.0.0.0 stays harmless: LlamaMan passes --host to every instance it starts.
ENV LLAMAMAN_CONTAINER=1 \
    MODELS_DIR=/models \
    DATA_DIR=/data \
    LLAMA_SERVER_BIN=/app/llama-server \
    PYTHONUNBUFFERED=1

VOLUME ["/models", "/data"]

# UI and REST API, the Ollama/OpenAI proxy, and the ports instances are published on.
EXPOSE 5000 42069 8000-8020

# NiceGUI keeps its per-user storage in the working directory; here it persists with the data.
WORKDIR /data

# Python rather than curl: the probe must not depend on what the base image happens to ship.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/llamaman/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLAMAMAN_PORT', '5000'), timeout=4)"]

# Replaces the base image's llama-server entrypoint (and with it the inherited CMD).
ENTRYPOINT ["/opt/llamaman/bin/llamaman"]
CMD []
