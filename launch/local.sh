#!/usr/bin/env bash
# N processes on this machine, each with its own CPU device(s), joined through gloo: the
# multi-host code path (per-process batches, process-0 writes, collective checkpoints) on a
# laptop. On a multi-GPU node, prefer one process: it drives every local GPU by itself.
#
#   launch/local.sh 2 --config configs/quickstart.py --config.train.num_iterations=20
#   DRY_RUN=1 launch/local.sh 2 ...     # print each process's command instead of running it
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?number of processes}; shift
port=${PORT:-12355}
pids=()
for ((i = 0; i < n; i++)); do
  cmd=(python main.py --distributed --coordinator_address="localhost:$port"
       --num_processes="$n" --process_id="$i" "$@")
  if [[ -n "${DRY_RUN:-}" ]]; then
    echo "process $i: JAX_PLATFORMS=cpu $(printf '%q ' "${cmd[@]}")"
    continue
  fi
  JAX_PLATFORMS=cpu "${cmd[@]}" &
  pids+=($!)
done
status=0
for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" || status=$?; done
exit $status
