# GPU image of mrt-ray: the Ray head and worker pods of cluster/*.yaml, or any node of a Ray cluster that runs
# `ray job submit ... -- python -m mrt_ray train ...`.
#
# Base: NVIDIA's CUDA 13.0 devel image on Ubuntu 22.04. The `gpu` extra pins vllm==0.33.0, which pins
# torch==2.14.0; that torch wheel on PyPI is built for CUDA 13.0 and brings its own CUDA runtime libraries.
# The devel toolkit (nvcc 13.0) is for DeepSpeed's JIT-compiled ops, which need the CUDA major version of torch.
# Nodes need an NVIDIA driver that supports CUDA 13.0 (R580 or newer).
#
#   docker build -t registry.example.com/mrt-ray:0.1.0 .   # then push, and set `image:` in cluster/*.yaml
#
# No secrets in the image: WANDB_API_KEY comes from a Kubernetes Secret (or the environment) at run time.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10); a C/C++ toolchain and the Python headers for
# the JIT builds of DeepSpeed and Triton; wget for KubeRay's health probes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv python3.11-dev build-essential wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The project's own install path: /app/.venv with the `gpu` profile (official vLLM + CUDA torch) and the test
# tools (the GPU test suite runs in this image); it fails the build if the stack does not import.
COPY pyproject.toml ./
COPY scripts/ scripts/
COPY conf/ conf/
COPY mrt_ray/ mrt_ray/
COPY tests/ tests/
RUN MRT_PROFILE=gpu PYTHON=python3.11 bash scripts/setup.sh

# `python`, `ray` and `mrt-ray` resolve to the venv. KubeRay starts Ray through a login shell (`bash -lc`),
# which rereads /etc/profile, so the venv goes on PATH there too.
ENV VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH
RUN echo 'export VIRTUAL_ENV=/app/.venv PATH=/app/.venv/bin:$PATH' > /etc/profile.d/mrt-ray-venv.sh
