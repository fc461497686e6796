#!/usr/bin/env bash
# Scaling benchmark: a roberta-base ProAdapter training step at sequence length 64/128/256/512
# and batch 1/8/32, PyTorch (reference, scripts/torch_scaling.py over
# ../shared/torch_bench/bench.py) and Rust (`cargo bench --bench training -- side`) back to
# back in fresh processes, then docs/scaling.png/.svg (scripts/plot-scaling.py, needs
# matplotlib). ≈35 min on 2 cores (batch 32 × 512 needs more than 24 GiB on our side); STEPS (default 2) and WARMUP (1) per configuration.
#   SEQS=64,128 BATCHES=8 scripts/bench-scaling.sh      # a subset
# A benchmark, not a test: CI does not run it. PY / THREADS as in scripts/bench-vs-torch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SEQS=${SEQS:-64,128,256,512}
BATCHES=${BATCHES:-1,8,32}
STEPS=${STEPS:-2}
WARMUP=${WARMUP:-1}
PY=${PY:-python3}
OUT=${OUT:-bench-results/scaling-$(date -u +%Y%m%dT%H%MZ).jsonl}
mkdir -p "$(dirname "$OUT")"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
"$PY" scripts/machine-info.py >>"$OUT"
BIN=$(scripts/bench-bin.sh)
IFS=, read -ra seqs <<<"$SEQS"
IFS=, read -ra batches <<<"$BATCHES"
for b in "${batches[@]}"; do
  for s in "${seqs[@]}"; do
    echo "$(date -u +%T) batch $b seq $s: PyTorch..." >&2
    "$PY" scripts/torch_scaling.py --batch "$b" --seq "$s" --steps "$STEPS" --warmup "$WARMUP" \
      --threads "$THREADS" | grep '^{' >>"$OUT" || echo "PyTorch failed at batch $b seq $s" >&2
    echo "$(date -u +%T) batch $b seq $s: Rust..." >&2
    "$BIN" side --shape base --variant pro_adapter --batch "$b" --seq "$s" --steps "$STEPS" \
      --warmup "$WARMUP" >>"$OUT" || echo "Rust failed at batch $b seq $s (killed: out of memory?)" >&2
  done
done
python3 scripts/plot-scaling.py "$OUT" docs/scaling
echo "JSON lines: $OUT" >&2
