#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker; JAX finds its peers from the TPU
# metadata. The workdir must be one every worker reaches under the same name (a gs:// URL,
# with gcsfs installed; a shared filesystem; a bucket mounted with gcsfuse): Orbax writes one
# checkpoint from all hosts. Prepare the data first, in one process (the run says how if not):
#   python main.py --mode=prepare --workdir=$WORKDIR --config configs/d12.py ...
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://my-bucket/runs/d12 \
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
