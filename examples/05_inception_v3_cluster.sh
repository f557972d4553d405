#!/usr/bin/env bash
# Inception v3 (Szegedy et al. 2016) on 16 GPUs with asynchronous SGD: from `ray up` to the run
# directory on your machine. Every step, and what to edit first (the `# EDIT:` fields of
# cluster/gpu.yaml: region, key, the S3 bucket), is in cluster/README.md.
#
#   bash examples/05_inception_v3_cluster.sh s3://BUCKET/inception_v3   # the whole thing, on AWS
#   bash examples/05_inception_v3_cluster.sh --plan                     # here: the checks, no cluster
#
# The run is examples/05_inception_v3_cluster.yaml: 16 workers x 100 steps x batch 16 on
# synthetic 299x299 images, 4 shards on the head's CPUs (a throughput run, not accuracy).
# It leaves the cluster up (it costs money by the hour): `ray down cluster/gpu.yaml` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-cluster/gpu.yaml}
CONFIG=examples/05_inception_v3_cluster.yaml
RUN=/home/ray/runs/inception_v3_throughput

if [[ "${1:-}" == "--plan" ]]; then
  # No cluster here: the same settings with 2 workers on CPU, through every check, nothing started.
  exec ps-train --config "$CONFIG" --workers 2 --device cpu --dry-run
fi
CHECKPOINTS=${1:?usage: $0 s3://BUCKET/PREFIX (shared checkpoints) | --plan}

ray up -y "$CLUSTER"                          # the head, then 16 GPU nodes (min_workers)
echo "waiting for 16 GPUs (10-20 minutes on a fresh cluster) ..."
until ray exec "$CLUSTER" "ray status" 2>/dev/null | grep -Eq "/16(\.0)? GPU"; do sleep 30; done

ray dashboard "$CLUSTER" &                    # the tunnel: the job API is on the head's loopback
TUNNEL=$!
trap 'kill $TUNNEL 2>/dev/null || true' EXIT
sleep 5
export RAY_ADDRESS=http://127.0.0.1:8265

ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
    ps-train --config "$CONFIG" --address auto --run-dir "$RUN" --checkpoint-dir "$CHECKPOINTS"

mkdir -p runs
ray rsync-down "$CLUSTER" "$RUN" runs/      # summary.md, pushes.parquet, evals.parquet, report
echo "run directory: runs/$(basename "$RUN"); the cluster is still up: ray down $CLUSTER"
