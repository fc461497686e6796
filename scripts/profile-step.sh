#!/usr/bin/env bash
# Where the time of one training step goes: `perf record` over the Rust side of the
# benchmark (roberta-base, batch 8 × 128, 2 threads by default), skipping the set-up (random
# checkpoint), then the samples grouped by kind of work (scripts/profile-groups.py).
#   scripts/profile-step.sh [VARIANT] [train|infer]      # default pro_adapter train
# Needs Linux `perf`. A benchmark tool, not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:-pro_adapter}
MODE=${2:-train}
export RAYON_NUM_THREADS=${THREADS:-2}
BIN=$(scripts/bench-bin.sh)
DATA=$(mktemp /tmp/propetl-perf.XXXXXX)
trap 'rm -f "$DATA"' EXIT
# -D: start sampling after the set-up (≈1.5 s for roberta-base's random weights)
perf record -q -F 499 -D 2500 -o "$DATA" "$BIN" side --shape base --variant "$VARIANT" \
  --mode "$MODE" --steps 4 --warmup 1 >&2
perf report -i "$DATA" --no-children --sort symbol --stdio 2>/dev/null | python3 scripts/profile-groups.py
