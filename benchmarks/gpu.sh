#!/usr/bin/env bash
# Accelerator benchmark, at most ~5 minutes: the paper's conv autoencoder (conv-paper, 32x32)
# for S = 1, 8, 32, 128 runs in one program; images/s and achieved FLOP/s next to the device's
# bf16/fp32 matmul rate measured in the same process (benchmarks/gpu_bench.py).
#
#   bash benchmarks/gpu.sh            # from the repository root or anywhere
#
# Writes benchmarks/results/gpu_<device>.md (and copies it to $OUT when that is set, as on a
# lent device machine). Robust by design, because the machine is borrowed and the clock runs:
# - every step has a timeout; the whole script stays under TOTAL_S (default 290 s);
# - JAX with CUDA is installed only when the current JAX sees no accelerator, only if pip can
#   reach an index (skipped when offline or with JAXRAE_NO_PIP=1), and never fatally;
# - jaxrae is imported from the checkout (PYTHONPATH), so no install is needed;
# - without an accelerator it still runs, on CPU with small sizes, and says so in the table.
set -u
START=$(date +%s)
TOTAL_S=${TOTAL_S:-290}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take what it needs but not pre-allocate 75% (the matmul and the runs share the device).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
log() { echo "[gpu.sh $(( $(date +%s) - START ))s] $*" >&2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { log "no python found"; exit 1; }
log "python: $PY"

backend() { timeout 60 "$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -n 1; }

BACKEND=$(backend)
if [ "$BACKEND" != "gpu" ] && [ "$BACKEND" != "tpu" ] && [ "${JAXRAE_NO_PIP:-0}" != 1 ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && timeout 10 "$PY" -m pip download --no-deps -q -d /tmp/jaxrae-pipcheck pip >/dev/null 2>&1; then
    log "JAX backend is '${BACKEND:-none}'; installing jax[cuda12] (bounded to 150 s)"
    timeout 150 "$PY" -m pip install -q -U "jax[cuda12]" || log "pip install jax[cuda12] failed; going on with what is installed"
    BACKEND=$(backend)
  else
    log "JAX backend is '${BACKEND:-none}' and no GPU/pip index is reachable; not installing"
  fi
fi
if [ -z "$BACKEND" ]; then
  log "jax does not import with $PY; trying to install the checkout's requirements (bounded)"
  timeout 120 "$PY" -m pip install -q -e "$ROOT" || true
  BACKEND=$(backend)
fi
[ -n "$BACKEND" ] || { log "no usable JAX; giving up"; exit 1; }
log "JAX backend: $BACKEND"
command -v nvidia-smi >/dev/null 2>&1 && timeout 10 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader >&2

DEVICE=$(timeout 60 "$PY" -c "import jax, re; print(re.sub(r'[^A-Za-z0-9]+', '-', jax.devices()[0].device_kind).strip('-').lower())" 2>/dev/null | tail -n 1)
RESULT="benchmarks/results/gpu_${DEVICE:-unknown}.md"
if [ "$BACKEND" = "cpu" ]; then
  SIZES=1,2; STEPS=2; BATCH=4; MATMUL=1024   # a smoke run only: the conv net is slow on a CPU
else
  SIZES=${SIZES:-1,8,32,128}; STEPS=${STEPS:-20}; BATCH=${BATCH:-100}; MATMUL=${MATMUL:-8192}
fi

BUDGET=$(( $(left) - 20 ))
log "running gpu_bench.py for at most ${BUDGET}s -> $RESULT"
# The bench stops starting new sizes ~70 s before its own deadline (one compile + run of the next S).
timeout --signal=TERM --kill-after=10 "$BUDGET" "$PY" benchmarks/gpu_bench.py \
  --sizes "$SIZES" --steps "$STEPS" --batch "$BATCH" --matmul-n "$MATMUL" \
  --budget-s $(( BUDGET - 70 )) --out "$RESULT"
RC=$?
[ $RC -eq 124 ] && log "gpu_bench.py hit the time limit; the table holds the sizes finished before it"
if [ -f "$RESULT" ]; then
  cat "$RESULT"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$RESULT" "$OUT/"; fi
fi
log "done (rc=$RC)"
exit $RC
