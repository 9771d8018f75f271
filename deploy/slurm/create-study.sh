#!/bin/bash
# The study for adamtune-workers.sbatch: a one-GPU batch job that runs `adamtune search`, which creates
# the study (or resumes it) and then works on it as the first worker until the study holds its trials.
# adamtune has no create-only command, so this job trains too. Submit it once, then the worker array
# with a dependency that starts it once this job has *started* (`after`, not `afterok`: this job ends
# only when the whole study is done). The workers wait until the study exists.
#
#   export ADAMTUNE_STORAGE='postgresql+psycopg://adamtune:PASSWORD@db-host:5432/adamtune'
#   export MLFLOW_TRACKING_URI=http://mlflow-host:5000 ADAMTUNE_TASK=cifar10 ADAMTUNE_STUDY=cifar10
#   study=$(sbatch --parsable deploy/slurm/create-study.sh)
#   sbatch --dependency=after:"$study" deploy/slurm/adamtune-workers.sbatch
#
#SBATCH --job-name=adamtune-study
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=adamtune-study-%j.out
#SBATCH --requeue
#SBATCH --signal=TERM@120
##SBATCH --partition=gpu
##SBATCH --account=CHANGE-ME

set -euo pipefail

: "${ADAMTUNE_STORAGE:?export ADAMTUNE_STORAGE (the study database URL) before sbatch}"
export ADAMTUNE_TASK="${ADAMTUNE_TASK:-cifar10}"
export ADAMTUNE_STUDY="${ADAMTUNE_STUDY:-$ADAMTUNE_TASK}"
export ADAMTUNE_N_TRIALS="${ADAMTUNE_N_TRIALS:-100}"
export ADAMTUNE_CHECKPOINT_STORE="${ADAMTUNE_CHECKPOINT_STORE:-${SLURM_SUBMIT_DIR:-$PWD}/adamtune-checkpoints}"
export ADAMTUNE_DATA_DIR="${ADAMTUNE_DATA_DIR:-$HOME/.cache/adamtune}"

# (a) a virtual environment (default) or (b) the image with Apptainer, as in adamtune-workers.sbatch
# shellcheck disable=SC1091
source "${ADAMTUNE_VENV:-$HOME/adamtune/.venv}/bin/activate"
adamtune=(adamtune)
# adamtune=(apptainer exec --nv --env "ADAMTUNE_DATA_DIR=$ADAMTUNE_DATA_DIR" "${ADAMTUNE_SIF:-$HOME/adamtune.sif}" adamtune)

exec srun "${adamtune[@]}" search --task "$ADAMTUNE_TASK" --study "$ADAMTUNE_STUDY" \
  --n-trials "$ADAMTUNE_N_TRIALS" --workers 1 --device cuda:0
