#!/usr/bin/env bash
# Side-by-side CPU benchmark: the PyTorch reference (../shared/torch_bench/bench.py) and this
# project (`cargo bench --bench training -- side ...`), same shapes, batch, thread count and
# step count, each configuration in a fresh process (so each peak RSS is its own), back to
# back. Prints one table (variant, PyTorch s/step, Rust s/step, ratio, peak RSS of each) for
# training and for inference, and keeps every JSON line in $OUT.
#
#   scripts/bench-vs-torch.sh                       # everything below (≈1 h on 2 cores)
#   SHAPES=base VARIANTS=pro_adapter MODES=train scripts/bench-vs-torch.sh   # one row
#
# Environment (all optional):
#   PY        Python with torch + transformers (default: python3 if it imports them, else the
#             venv that ../shared/torch_bench/setup.sh makes, ≈6 GB from PyPI)
#   THREADS   threads for both sides (default 2)
#   SHAPES    base,small            VARIANTS  the six RoBERTa variants + t5_pro_adapter
#   MODES     train,infer           INFER_VARIANTS  pro_adapter,pro_lora,pro_prefix
#   STEPS / WARMUP   timed / untimed steps per configuration (default 5 / 2, as bench.py)
#   ROUNDS    rounds per configuration, each PyTorch then Rust (default 1); the table shows each
#             side's median over the rounds. This machine's speed drifts by 10–25% between
#             minutes, so ratios meant to be quoted use ROUNDS=3 (docs/performance.md)
#   OUT       JSON lines file (default bench-results/bench-vs-torch-<date>.jsonl)
#   MASK_OVERHEAD=0  skip the masked ÷ unmasked ProAdapter step (Rust only, ≈1 min)
# A benchmark, not a test: CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
SHAPES=${SHAPES:-base,small}
VARIANTS=${VARIANTS:-pro_adapter,pro_lora,pro_prefix,adapter,lora,prefix,t5_pro_adapter}
MODES=${MODES:-train,infer}
INFER_VARIANTS=${INFER_VARIANTS:-pro_adapter,pro_lora,pro_prefix}
STEPS=${STEPS:-5}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-2}
TORCH_BENCH=../shared/torch_bench
OUT=${OUT:-bench-results/bench-vs-torch-$(date -u +%Y%m%dT%H%MZ).jsonl}
mkdir -p "$(dirname "$OUT")"

[ -f "$TORCH_BENCH/bench.py" ] || { echo "error: $TORCH_BENCH/bench.py not found (../shared beside the repository)" >&2; exit 1; }
if [ -z "${PY:-}" ]; then
  if python3 -c 'import torch, transformers' 2>/dev/null; then
    PY=python3
  else
    echo "torch/transformers not importable by python3: making the reference venv ($TORCH_BENCH/setup.sh)" >&2
    PY=$("$TORCH_BENCH/setup.sh" | tail -1)
  fi
fi

# the same thread count on both sides: torch through bench.py --threads, Candle (rayon) here
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

# the machine first: the ratios depend on the CPU (scripts/machine-info.py)
"$PY" scripts/machine-info.py >>"$OUT"

echo "building the Rust bench (release)..." >&2
BIN=$(scripts/bench-bin.sh)
[ -x "$BIN" ] || { echo "error: could not build benches/training.rs" >&2; exit 1; }

run_pair() { # shape variant mode
  local shape=$1 variant=$2 mode=$3
  echo "$(date -u +%T) $mode $shape $variant: PyTorch..." >&2
  "$PY" "$TORCH_BENCH/bench.py" --shapes "$shape" --variants "$variant" --mode "$mode" \
    --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" |
    python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"):
        d = json.loads(l); d["side"] = "torch"; d.setdefault("mode", "train"); print(json.dumps(d))' >>"$OUT"
  echo "$(date -u +%T) $mode $shape $variant: Rust..." >&2
  "$BIN" side --shape "$shape" --variant "$variant" --mode "$mode" --steps "$STEPS" \
    --warmup "$WARMUP" >>"$OUT"
}

IFS=, read -ra shapes <<<"$SHAPES"
IFS=, read -ra modes <<<"$MODES"
for mode in "${modes[@]}"; do
  if [ "$mode" = infer ]; then IFS=, read -ra vs <<<"$INFER_VARIANTS"; else IFS=, read -ra vs <<<"$VARIANTS"; fi
  for shape in "${shapes[@]}"; do
    for v in "${vs[@]}"; do
      # bench.py's inference mode is RoBERTa only
      if [ "$mode" = infer ] && [[ $v == t5_* ]]; then continue; fi
      for _ in $(seq "$ROUNDS"); do run_pair "$shape" "$v" "$mode"; done
    done
  done
done

# the masks must stay free: masked ProAdapter step ÷ the same step with the prototype unmasked
if [ "${MASK_OVERHEAD:-1}" = 1 ]; then
  echo "$(date -u +%T) mask overhead (Rust, roberta-base ProAdapter, masked vs unmasked)..." >&2
  "$BIN" mask_overhead | grep '"mask_overhead"' >>"$OUT"
fi

python3 scripts/bench-table.py "$OUT"
echo "JSON lines: $OUT" >&2
