# ps-trainer image. CPU by default; for GPU nodes build with the CUDA wheel:
#   docker build -t ps-trainer:cpu .
#   docker build -t ps-trainer:gpu --build-arg BASE=nvidia/cuda:12.8.0-runtime-ubuntu24.04 \
#       --build-arg TORCH_SPEC=torch --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PIP_NO_CACHE_DIR=1

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/ps-trainer
# torch first, from the index that matches the image (CPU or CUDA), then the project.
RUN pip install --index-url ${TORCH_INDEX} "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY ps_trainer ./ps_trainer
COPY protos ./protos
RUN pip install ".[test]"
COPY tests ./tests
COPY examples ./examples

# The embedded default: digits, 4 asynchronous workers, 2 shards, on CPU.
CMD ["ps-train"]
