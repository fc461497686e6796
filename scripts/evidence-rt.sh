#!/usr/bin/env bash
# Evidence run (issue 11, first part): the six variants x seeds 42, 43, 44 on all-MiniLM-L6-v2 +
# Rotten Tomatoes with the main job's settings (4,000 training sentences drawn with the seed,
# 2 epochs, batch 32, max_len 64, lr 1e-3, mask lr 3e-3). Skips runs already complete, so it
# continues after an interruption. `propetl report runs/evidence-rt/*` summarizes (mean +- std).
set -u
cd "$(dirname "$0")/.."
cargo build --release -p propetl-cli --bin propetl 2>&1 | tail -2
for v in pro_lora lora pro_adapter adapter pro_prefix prefix; do
  for s in 42 43 44; do
    out=runs/evidence-rt/$v-seed$s
    [ -f $out/report.json ] && continue
    echo "$(date -u +%T) $v seed $s"
    target/release/propetl train --task rotten-tomatoes --variant $v --model-dir assets/all-MiniLM-L6-v2 \
      --data-dir assets/sentiment --max-train-examples 4000 --epochs 2 --batch-size 32 --max-len 64 --lr 1e-3 --mask-lr 3e-3 --seed $s --quiet --overwrite --out $out 2>&1 | tail -2
  done
done
echo "$(date -u +%T) done"
