# The ps-trainer image for cluster nodes: Ray's published image (Ray 2.60.0, Python 3.11, CUDA
# 12.8, the non-root user `ray`, what Ray's cluster launcher expects of a node's image), torch's
# build for the same CUDA, and the project. cluster/README.md ("Your own image") builds it, pushes
# it and names it in cluster/gpu.yaml, so nodes boot without installing torch.
#
#   GPU (default): docker build -t REGISTRY/ps-trainer:0.1.0-cu128 .
#   CPU:           docker build -t REGISTRY/ps-trainer:0.1.0-cpu \
#                      --build-arg BASE=rayproject/ray:2.60.0-py311-cpu \
#                      --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#   try it:        docker run --rm --gpus all --shm-size=10g REGISTRY/ps-trainer:0.1.0-cu128 \
#                      ps-train --model resnet50 --workers 1 --dry-run
#
# Shared memory: Ray keeps its object store (every pulled snapshot and pushed gradient) in
# /dev/shm, 30% of the machine's memory by default, and Docker gives a container 64 MB of it:
# run with --shm-size of at least the object store (the cluster files set it in run_options).
#
# Pinned base: by tag here; to pin the exact bytes, look up the digest and pass it:
#   docker buildx imagetools inspect rayproject/ray:2.60.0-py311-cu128   # prints Digest: sha256:...
#   docker build --build-arg BASE=rayproject/ray:2.60.0-py311-cu128@sha256:<digest> ...
# BASE must be a rayproject/ray image: its non-root user `ray` (uid 1000, gid 100) runs it.
#
# Not built on the project's machines (no Docker daemon there, and no network but PyPI):
# tests/test_cluster_config.py checks what can be checked without building it.
ARG BASE=rayproject/ray:2.60.0-py311-cu128
FROM ${BASE}

# torch's index for the base's CUDA: cu128 for -cu128 images, cpu for -cpu ones
# (https://download.pytorch.org/whl/cu126, .../cu130 for the other CUDA lines).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# A C compiler on every node: shards of 2M+ parameters build their update loop there (core/
# push_kernel.py through TorchInductor; the one-pass push's C kernel, core/fused_push.py). Ray's
# GPU images keep g++, its CPU images remove it; without one a shard falls back to torch's
# kernels, the same update in more passes over memory (docs/architecture.md).
USER 0
# hadolint ignore=DL3008
RUN if ! command -v cc >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends g++ \
        && rm -rf /var/lib/apt/lists/*; \
    fi

USER 1000:100
WORKDIR /home/ray/ps-trainer

# torch first, from the index that matches the base, so that installing the project (which
# asks for torch>=2.11,<2.15) keeps it; Ray is the base's.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 protos ./protos
COPY --chown=1000:100 ps_trainer ./ps_trainer
RUN pip install --no-cache-dir .
COPY --chown=1000:100 examples ./examples

# The embedded default (digits, 4 asynchronous workers, 2 shards); on a cluster node the
# launcher runs its own commands instead.
CMD ["ps-train"]
