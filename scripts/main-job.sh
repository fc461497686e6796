#!/usr/bin/env bash
# The main job: fetch what is missing (sha256-checked), then fine-tune all-MiniLM-L6-v2 on
# Rotten Tomatoes sentiment with ProAdapter and with the unshared adapter baseline, and print
# test accuracy and storage of both (about 7–8 minutes on 2 cores). Extra arguments go to
# `propetl quickstart` (e.g. --variants pro_adapter,pro_lora,pro_prefix,adapter,lora,prefix).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo run --release -p propetl-cli --bin propetl -- quickstart "$@"
