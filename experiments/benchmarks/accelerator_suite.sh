#!/usr/bin/env bash
# One command for a lent accelerator (about 10 minutes on one GPU): the kernel tables
# and BERT-base / T5-base training steps with MFU, written as one markdown file.
#
#   experiments/benchmarks/accelerator_suite.sh [OUT_DIR]      # default: $OUT or /tmp/accelerator_suite
#   experiments/benchmarks/accelerator_suite.sh --smoke [DIR]  # tiny sizes, any machine (CPU: interpret mode)
#
# Needs jax, flax, optax and numpy (what the GPU/TPU images have) plus gin-config, which
# lmlab's wrappers import. Without internet on the accelerator, carry gin-config's wheel:
#   here:   pip download gin-config==0.5.0 --no-deps -d .carry/wheels
#   there:  this script installs .carry/wheels/gin_config-*.whl when `import gin` fails
# (with the device tool: run(command="experiments/benchmarks/accelerator_suite.sh $OUT",
#  carry=[".carry"]); .carry/ is git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=(--smoke); shift; fi
OUT_DIR="${1:-${OUT:-/tmp/accelerator_suite}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import gin" 2>/dev/null; then
  wheel=$(ls .carry/wheels/gin_config-*.whl 2>/dev/null | head -1 || true)
  if [[ -z "$wheel" ]]; then
    echo "accelerator_suite: gin-config is missing; run 'pip download gin-config==0.5.0 --no-deps" \
         "-d .carry/wheels' where there is internet and carry .carry/ here." >&2
    exit 2
  fi
  "$PY" -m pip install --quiet --no-index --no-deps "$wheel"
fi

REPORT="$OUT_DIR/accelerator_suite.md"
{
  echo "# lmlab accelerator suite"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$PY" -c "import jax; d = jax.devices()[0]; print(f'{jax.device_count()} x {d.device_kind}, jax {jax.__version__}')"
} > "$REPORT"

if [[ ${#SMOKE[@]} -gt 0 ]]; then
  KERNEL_ARGS=(--skip memory --repeats 1)
  MODEL_ARGS=(--smoke)
else
  # L = 512..16k at head dims 64 and 128 (the GPU defaults), no memory table (compile-only).
  KERNEL_ARGS=(--skip memory)
  MODEL_ARGS=()
fi

status=0
# Each part has its own time limit; a part cut short keeps the rows it already wrote.
timeout "${KERNEL_SECONDS:-330}" "$PY" experiments/benchmarks/bench_kernels.py "${KERNEL_ARGS[@]}" \
    --markdown "$OUT_DIR/kernels.md" > "$OUT_DIR/kernels.log" 2>&1 || status=$?
timeout "${MODEL_SECONDS:-210}" "$PY" experiments/benchmarks/bench_models.py "${MODEL_ARGS[@]}" \
    --markdown "$OUT_DIR/models.md" > "$OUT_DIR/models.log" 2>&1 || status=$?

{
  echo
  echo "## Kernels"
  cat "$OUT_DIR/kernels.md" 2>/dev/null || echo "(no kernel table: see kernels.log)"
  echo
  echo "## Training steps (bf16 compute, float32 parameters, AdamW)"
  echo
  cat "$OUT_DIR/models.md" 2>/dev/null || echo "(no model table: see models.log)"
} >> "$REPORT"
cat "$REPORT"
if [[ $status -ne 0 ]]; then
  echo "accelerator_suite: a part failed or ran out of time (exit $status); see $OUT_DIR/*.log" >&2
fi
exit $status
