#!/usr/bin/env bash
# The GPU figures of issue 11, in one run on one CUDA GPU: about 4-5 minutes, at most 9 (every part has a
# time limit: 180 + 60 + 2 x 100 + 90 s), so it fits one 10-minute device call.
#
#   bash bench/gpu_figures.sh            # writes to ${OUT:-bench/gpu_out}/ and prints a summary
#   DEVICE=cpu SMALL=1 bash bench/gpu_figures.sh   # a quick dry run of the script itself on a CPU
#
# Run it from the repository root, with a Python that has torch (CUDA build) and adamtune's dependencies
# (optuna, mlflow, click, scikit-learn, numpy): PYTHON=/path/to/python bash bench/gpu_figures.sh. Nothing
# is downloaded: the data are generated (MNIST-sized images for the batched bench, CIFAR-shaped random
# images for the epoch time) or bundled (scikit-learn's digits). Test accuracy on CIFAR-10 needs the real
# data set, which these machines cannot download, so it is NOT measured here (the epoch time is).
#
# Parts (each under its own time limit, so one slow part cannot eat the others' time):
#   1. batched vs sequential trials/s (1 epoch per trial), digits and the MNIST MLP on 55,000 generated
#      28x28 images, K = 4, 16
#      (bench/batched.py --device cuda)                                            -> batched.json
#   2. cifar10 seconds per epoch at the task's defaults (45,000 random images of the real shapes,
#      bench/data.py --mode epoch)                                                 -> cifar_epoch.txt
#   3. trials per minute with 1 vs 4 workers on one GPU: adamtune search --task digits, 16 trials of 5
#      epochs, --pruner none, --no-tracking, --workers 1 and --workers 4 --devices cuda:0 -> workers.txt
#   4. a batched search on the GPU: --batch-trials 16 --task digits, 32 trials                -> search.txt
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/gpu_out}
DEVICE=${DEVICE:-cuda}
DEV0=$([ "$DEVICE" = cuda ] && echo cuda:0 || echo "$DEVICE")
if [ -n "${SMALL:-}" ]; then  # sizes of the dry run
    K=4 ROUNDS=1 EPOCHS=1 MNIST=2000 TRIALS=4 CIFAR_TRAIN=512 BATCHED_TRIALS=6
else
    K=4,16 ROUNDS=3 EPOCHS=1 MNIST=55000 TRIALS=16 CIFAR_TRAIN=45000 BATCHED_TRIALS=32
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if ! "$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/environment.txt"; then
import importlib.util, sys
missing = [m for m in ("torch", "optuna", "mlflow", "click", "sklearn", "numpy") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}; install them (pip install -e .) and rerun")
import os, torch
if os.environ.get("DEVICE", "cuda") == "cuda" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU; run this on the GPU machine")
gpu = f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, {gpu}, {os.cpu_count()} CPU cores")
EOF
    exit 2
fi

run() {  # run NAME SECONDS COMMAND...: one part, its output in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - started))s"
    tail -n 12 "$OUT/$name.txt"
}

run batched 180 "$PYTHON" bench/batched.py --device "$DEV0" --k $K --rounds $ROUNDS --epochs $EPOCHS \
    --mnist-train $MNIST --json "$OUT/batched.json"
run cifar_epoch 60 "$PYTHON" bench/data.py --mode epoch --device "$DEV0" --epochs 3 --train-size $CIFAR_TRAIN

scratch=$(mktemp -d)
for workers in 1 4; do
    (
        cd "$scratch" && rm -f adamtune.db* && started=$(date +%s.%N) &&
            timeout 100 "$PYTHON" -m adamtune search --task digits --n-trials $TRIALS --epochs 5 --pruner none \
                --no-tracking --workers "$workers" --devices "$DEV0" --seed 1 >"search-$workers.log" 2>&1
        rc=$?
        ended=$(date +%s.%N)
        "$PYTHON" -c "s = $ended - $started; print(f'workers=$workers rc=$rc seconds={s:.1f} trials_per_minute={$TRIALS * 60 / s:.1f}')"
    )
done | tee "$OUT/workers.txt"
cp "$scratch"/search-*.log "$OUT/" 2>/dev/null

run search 90 bash -c "cd '$scratch' && rm -f adamtune.db* && '$PYTHON' -m adamtune search --task digits \
    --study batched --batch-trials 16 --n-trials $BATCHED_TRIALS --epochs 5 --devices $DEV0 --no-tracking --seed 2 && \
    '$PYTHON' -m adamtune summary --task batched"
rm -rf "$scratch"
echo "== done; results in $OUT/"
