#!/usr/bin/env bash
# Accelerator benchmark: under 8 minutes on one H100/H200 (TOTAL_S, default 450 s), ONE markdown
# table with each measurement, its target and pass/fail (benchmarks/gpu_bench.py documents each):
#   gmm   ex-post GMM fit (fit_gmm), 8 and 32 seeds vmapped against one fit   target: 8 seeds <= 1.5x one fit
#   mlp   the rae preset (MLP), 32 seeds in one program against one seed     target: <= 2x the time of one
#   conv  conv-paper steps/s for S = 1, 8, 32 runs, achieved FLOP/s against a float32 matmul measured
#         in the same process                                                target: >= 40%
#
#   bash benchmarks/gpu.sh            # from the repository root or anywhere
#
# Writes benchmarks/results/gpu_<device>.md (and copies it to $OUT when that is set, as on a
# lent device machine). It is run whenever an accelerator is available, never by the tests.
# Robust by design, because the machine is borrowed and the clock runs:
# - each part runs in its own process under its own limit (GMM_S, MLP_S seconds; conv gets what
#   is left but RESERVE_S) and records its rows as it goes, so a part that hangs, crashes or runs
#   out of memory costs only its own rows; the table is printed whatever happened;
# - JAX with CUDA is installed only when the current JAX sees no accelerator, only if pip can
#   reach an index, never with JAXRAE_NO_PIP=1, and never fatally (bounded to 150 s);
# - jaxrae is imported from the checkout (PYTHONPATH), so no install is needed;
# - without an accelerator it still runs, on CPU with small sizes, and the table says so (its
#   verdicts are then not judged).
# Sizes can be overridden: GMM_N GMM_SEEDS MLP_N MLP_STEPS MLP_SEEDS CONV_SIZES CONV_STEPS CONV_BATCH MATMUL REPEATS.
set -u
START=$(date +%s)
TOTAL_S=${TOTAL_S:-450}
GMM_S=${GMM_S:-90}
MLP_S=${MLP_S:-100}
RESERVE_S=${RESERVE_S:-25}   # the table, and the 10 s a stopped part may take to die
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Let XLA take what it needs but not pre-allocate 75% (the matmul and the runs share the device).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL_S - $(elapsed) )); }
log() { echo "[gpu.sh $(elapsed)s] $*" >&2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { log "no python found"; exit 1; }
log "python: $PY"

# One JAX start for both answers: the backend ("gpu", "tpu", "cpu") and the device kind as a file name.
probe() { timeout 90 "$PY" -c "import jax, re; print(jax.default_backend(), re.sub(r'[^A-Za-z0-9]+', '-', jax.devices()[0].device_kind).strip('-').lower())" 2>/dev/null | tail -n 1; }
pip_allowed() { [ "${JAXRAE_NO_PIP:-0}" != 1 ] && timeout 10 "$PY" -m pip download --no-deps -q -d /tmp/jaxrae-pipcheck pip >/dev/null 2>&1; }

PROBE=$(probe); BACKEND=${PROBE%% *}
if [ "$BACKEND" != "gpu" ] && [ "$BACKEND" != "tpu" ] && command -v nvidia-smi >/dev/null 2>&1; then
  if pip_allowed; then
    log "JAX backend is '${BACKEND:-none}' on a machine with nvidia-smi; installing jax[cuda12] (bounded to 150 s)"
    timeout 150 "$PY" -m pip install -q -U "jax[cuda12]" || log "pip install jax[cuda12] failed; going on with what is installed"
    PROBE=$(probe); BACKEND=${PROBE%% *}
  else
    log "JAX backend is '${BACKEND:-none}' and pip is off (JAXRAE_NO_PIP=1) or no index is reachable; not installing"
  fi
fi
if [ -z "$BACKEND" ] && pip_allowed; then
  log "jax does not import with $PY; trying to install the checkout's requirements (bounded to 120 s)"
  timeout 120 "$PY" -m pip install -q -e "$ROOT" || true
  PROBE=$(probe); BACKEND=${PROBE%% *}
fi
[ -n "$BACKEND" ] || { log "no usable JAX; giving up"; exit 1; }
DEVICE=${PROBE#* }
log "JAX backend: $BACKEND, device: $DEVICE"
command -v nvidia-smi >/dev/null 2>&1 && timeout 10 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader >&2

if [ "$BACKEND" = "cpu" ]; then
  # A smoke run only: it shows the script works, not how fast anything is (conv nets are slow on a CPU).
  GMM_N=${GMM_N:-2000}; MLP_N=${MLP_N:-2000}; MLP_STEPS=${MLP_STEPS:-10}; CONV_SIZES=${CONV_SIZES:-1,2}
  CONV_STEPS=${CONV_STEPS:-1}; CONV_BATCH=${CONV_BATCH:-2}; MATMUL=${MATMUL:-1024}; REPEATS=${REPEATS:-1}
  # XLA:CPU's multi-threaded Eigen pool can deadlock on large vmapped programs (seen here: the
  # 32-seed GMM fit, every thread parked on a futex, in about half the runs with jaxlib 0.10.2;
  # PyAutoLabs/PyAutoFit#1528 found the same and this flag as the cure).
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_multi_thread_eigen=false"
fi
GMM_N=${GMM_N:-60000}; GMM_SEEDS=${GMM_SEEDS:-1,8,32}; MLP_N=${MLP_N:-60000}; MLP_STEPS=${MLP_STEPS:-2000}
MLP_SEEDS=${MLP_SEEDS:-32}; CONV_SIZES=${CONV_SIZES:-1,8,32}; CONV_STEPS=${CONV_STEPS:-20}; CONV_BATCH=${CONV_BATCH:-100}
MATMUL=${MATMUL:-8192}; REPEATS=${REPEATS:-3}

RESULT=${RESULT:-"benchmarks/results/gpu_${DEVICE:-unknown}.md"}
RECORDS=$(mktemp /tmp/jaxrae-gpu-bench.XXXXXX.jsonl)
FINAL_RC=0

# run_part NAME SECONDS ARGS...: the part in its own process, for at most SECONDS (and never past
# the reserve kept for the table); its exit code goes into the records.
run_part() {
  local name=$1 share=$2; shift 2
  local avail=$(( $(left) - RESERVE_S ))
  local limit=$(( share < avail ? share : avail ))
  if [ "$limit" -lt 20 ]; then
    log "part $name: not started, ${avail}s left"
    echo "{\"part\": \"$name\", \"rc\": \"skipped\"}" >> "$RECORDS"; FINAL_RC=1
    return
  fi
  log "part $name: at most ${limit}s"
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" benchmarks/gpu_bench.py --part "$name" --records "$RECORDS" \
    --limit-s "$limit" --repeats "$REPEATS" "$@"
  local rc=$?
  [ $rc -eq 124 ] && log "part $name hit its ${limit}s limit; the table keeps what it finished"
  [ $rc -ne 0 ] && FINAL_RC=1
  echo "{\"part\": \"$name\", \"rc\": \"$rc\", \"limit_s\": $limit}" >> "$RECORDS"
}

run_part gmm "$GMM_S" --gmm-n "$GMM_N" --gmm-seeds "$GMM_SEEDS"
run_part mlp "$MLP_S" --mlp-n "$MLP_N" --mlp-steps "$MLP_STEPS" --mlp-seeds "$MLP_SEEDS"
run_part conv "$TOTAL_S" --conv-sizes "$CONV_SIZES" --conv-steps "$CONV_STEPS" --conv-batch "$CONV_BATCH" --matmul-n "$MATMUL"

echo "{\"total_s\": $(elapsed)}" >> "$RECORDS"
log "table -> $RESULT"
echo
timeout 60 "$PY" benchmarks/gpu_bench.py --part table --records "$RECORDS" --out "$RESULT" || FINAL_RC=1
if [ -f "$RESULT" ] && [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$RESULT" "$OUT/"; fi
rm -f "$RECORDS"
log "done (rc=$FINAL_RC)"
exit $FINAL_RC
