#!/usr/bin/env bash
# Runs the full test suite: fetches the real pretrained assets (sha256-checked, cached in
# assets/) and runs every test of the workspace (dependencies built at opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/fetch-assets.sh ]; then
  scripts/fetch-assets.sh
fi
# `--examples` also runs custom_transformer and pro_adapter_t5_multitask, which check their
# own results (Cargo.toml: `test = true, harness = false`), with the tests' build of every
# dependency (a separate `cargo run --example` would rebuild them all with other features)
cargo test --workspace --lib --bins --tests --examples
cargo test --workspace --doc
