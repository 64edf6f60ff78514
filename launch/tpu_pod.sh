#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker; JAX finds its peers from the TPU
# metadata. The workdir must be on storage every worker sees (e.g. a gs:// bucket or a
# shared filesystem) so that Orbax can write one checkpoint from all hosts.
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/d12 \
#     launch/tpu_pod.sh --config configs/d12.py --config.data.path=DATA
set -euo pipefail
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/dlm && python main.py --distributed --workdir=$WORKDIR $args"
