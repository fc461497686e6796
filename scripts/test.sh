#!/usr/bin/env bash
# Runs the full test suite: fetches the real pretrained assets (sha256-checked, cached in
# assets/) and runs every test of the workspace (dependencies built at opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/fetch-assets.sh ]; then
  scripts/fetch-assets.sh
fi
cargo test --workspace --lib --bins --tests --examples
cargo test --workspace --doc
# the examples check their own results (loss goes down, save/load round trip is exact)
cargo run --example custom_transformer
cargo run --example pro_adapter_t5_multitask
