#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker; JAX finds its peers from the TPU
# metadata. The workdir must be a directory every worker sees under the same path (a shared
# filesystem, or a bucket mounted with gcsfuse): Orbax writes one checkpoint from all hosts.
# gs:// URLs are refused by main.py: they are not read or written directly yet.
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=/mnt/bucket/runs/d12 \
#     launch/tpu_pod.sh --config configs/d12.py --config.data.path=DATA
#   DRY_RUN=1 TPU=... ZONE=... WORKDIR=... launch/tpu_pod.sh ...   # print, do not run
set -euo pipefail
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
args=$(printf '%q ' "$@")
cmd=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command
     "cd ~/dlm && python main.py --distributed --workdir=$WORKDIR $args")
if [[ -n "${DRY_RUN:-}" ]]; then
  echo "every worker of $TPU: $(printf '%q ' "${cmd[@]}")"
  exit 0
fi
"${cmd[@]}"
