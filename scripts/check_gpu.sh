#!/usr/bin/env bash
# Check the GPU path end to end, on a machine with a CUDA GPU:
#   1. torch sees a GPU;  2. `fit` for 1 epoch with configs/gpu.yaml (bf16-mixed, in-memory data on
#   the GPU) on the real data;  3. `test` of that checkpoint on the GPU;  4. the GPU tests (pytest -m gpu);
#   5. the per-epoch speed table of benchmarks/speed.py on the GPU (bare loops, default, fast; fp32),
#   the figures docs/speed.md gives for the CPU (SPEED_REPEATS, default 1; 0 skips it).
# Prints one PASS or FAIL line at the end. Everything is written into a temporary folder, removed
# on success and kept (its path printed) on failure.
#
#   scripts/check_gpu.sh DATA_DIR [more CLI arguments for fit and test]
#   scripts/check_gpu.sh ../shared/data/mnist
#   scripts/check_gpu.sh ../shared/data/mnist --trainer.precision 16-mixed
#   PYTHON=python3 MIN_ACC=92 scripts/check_gpu.sh ~/data/mnist
#
# PYTHON: the interpreter (default .venv/bin/python); MIN_ACC: the test accuracy in % that passes (default 90;
# the tutorial's net reaches about 94 after one epoch).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
MIN_ACC=${MIN_ACC:-90}
WORK=""

fail() {
    echo "check_gpu: FAIL: $*"
    if [ -n "$WORK" ]; then echo "check_gpu: logs kept in $WORK"; fi
    exit 1
}
step() { echo; echo "== check_gpu: $*"; }

[ $# -ge 1 ] || { echo "usage: $0 DATA_DIR [more CLI arguments]" >&2; exit 2; }
DATA=$(cd "$1" 2>/dev/null && pwd) || fail "no data folder $1"
shift
[ -x "$PY" ] || command -v "$PY" >/dev/null || fail "no Python at $PY (make venv, or set PYTHON)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1

step "1/5 a CUDA GPU that torch can use"
"$PY" - <<'EOF' || fail "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(1)
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16: {torch.cuda.is_bf16_supported()}, GPUs: {names}")
EOF

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_gpu.XXXXXX") || fail "could not make a temporary folder"
cd "$WORK" || fail "cannot enter $WORK"

step "2/5 fit: 1 epoch, configs/gpu.yaml, data from $DATA"
"$PY" -m mnist_lightning fit --config "$ROOT/configs/gpu.yaml" --data.data_dir "$DATA" --trainer.max_epochs 1 "$@" 2>&1 | tee fit.log
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "fit exited with an error (see above)"
grep -q "GPU available: True, used: True" fit.log || fail "fit did not run on the GPU"
CKPT=$WORK/lightning_logs/version_0/checkpoints/last.ckpt
[ -f "$CKPT" ] || fail "fit wrote no $CKPT"

step "3/5 test: the checkpoint on the test images, on the GPU"
"$PY" -m mnist_lightning test --config "$ROOT/configs/gpu.yaml" --data.data_dir "$DATA" --ckpt_path "$CKPT" \
    --trainer.logger false "$@" 2>&1 | tee test.log
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "test exited with an error (see above)"
LINE=$(grep -Eo "Got [0-9]+ / [0-9]+ with accuracy [0-9.]+" test.log | tail -n 1)
[ -n "$LINE" ] || fail "test printed no 'Got N / M with accuracy A' line"
ACC=${LINE##* }
awk -v acc="$ACC" -v min="$MIN_ACC" 'BEGIN { exit !(acc >= min) }' || fail "test accuracy $ACC% is below $MIN_ACC%"

step "4/5 the GPU tests: pytest -m gpu tests/test_gpu.py"
(cd "$ROOT" && "$PY" -m pytest -m gpu -q -p no:cacheprovider --basetemp "$WORK/pytest" tests/test_gpu.py) \
    || fail "GPU tests failed (see above)"

if [ "${SPEED_REPEATS:-1}" -gt 0 ]; then
    step "5/5 speed on the GPU: benchmarks/speed.py --gpu --repeats ${SPEED_REPEATS:-1}"
    "$PY" "$ROOT/benchmarks/speed.py" --data-dir "$DATA" --gpu --repeats "${SPEED_REPEATS:-1}" \
        || fail "the GPU speed benchmark failed (see above)"
fi

cd / && rm -rf "$WORK"
echo
echo "check_gpu: PASS: fit and test on the GPU ($LINE)"
