#!/usr/bin/env bash
# make bench: figures for BENCHMARKS.md (see qemu-tests/src/bin/kiln-bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --locked --release -q -p kiln-qemu-tests --bin kiln-bench
