#!/usr/bin/env bash
# Evidence run (issue 11): the six variants and full fine-tuning x seeds 42, 43, 44 on
# all-MiniLM-L6-v2 + Rotten Tomatoes with the main job's settings (4,000 training sentences
# drawn with the seed, 2 epochs, batch 32, max_len 64, warmup 10%, weight decay 0.1; PETL
# variants lr 1e-3, mask lr 3e-3; full fine-tuning lr 5e-5, the top of BERT's fine-tuning grid
# {2e-5, 3e-5, 5e-5} — the PETL rate would wreck a full model). Skips runs already complete, so
# it continues after an interruption. `propetl report runs/evidence-rt/*` summarizes.
# The same on the VADER movie-snippet regression task (Pearson/Spearman):
#   TASK=vader-movies scripts/evidence-rt.sh   → runs/evidence-vader
# Usage: [TASK=rotten-tomatoes|vader-movies] [SEEDS="42 43 44"] scripts/evidence-rt.sh [VARIANT ...]
# (default: all seven variants, seeds 42 43 44)
set -u
task=${TASK:-rotten-tomatoes}
case $task in
  rotten-tomatoes) dir=runs/evidence-rt ;;
  vader-movies) dir=runs/evidence-vader ;;
  *) echo "TASK must be rotten-tomatoes or vader-movies" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
cargo build --release -p propetl-cli --bin propetl 2>&1 | tail -2
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(pro_lora lora pro_adapter adapter pro_prefix prefix full)
for v in "${variants[@]}"; do
  lr=1e-3
  [ "$v" = full ] && lr=5e-5
  for s in ${SEEDS:-42 43 44}; do
    out=$dir/$v-seed$s
    [ -f $out/report.json ] && continue
    echo "$(date -u +%T) $task $v seed $s"
    target/release/propetl train --task $task --variant $v --model-dir assets/all-MiniLM-L6-v2 \
      --data-dir assets/sentiment --max-train-examples 4000 --epochs 2 --batch-size 32 --max-len 64 --lr $lr --mask-lr 3e-3 --seed $s --quiet --overwrite --out $out 2>&1 | tail -2
  done
done
echo "$(date -u +%T) done"
