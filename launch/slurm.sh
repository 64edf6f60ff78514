#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, each driving all of its GPUs.
# JAX reads the SLURM environment (node list, task id) to find process 0 and its peers.
#
#   sbatch --nodes=2 launch/slurm.sh --config configs/d12.py --config.data.path=DATA
#
#SBATCH --job-name=dlm
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=dlm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# Requeued or preempted jobs rerun this same command: the run resumes from its last checkpoint.
srun python main.py --distributed --workdir="${WORKDIR:-runs/slurm-$SLURM_JOB_NAME}" "$@"
