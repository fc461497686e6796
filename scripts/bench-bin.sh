#!/usr/bin/env bash
# Builds benches/training.rs (release) and prints the path of its executable; used by
# bench-vs-torch.sh, bench-scaling.sh and profile-step.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench training --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "training" and m.get("executable"):
        print(m["executable"])'
