#!/usr/bin/env bash
# make bench: figures for BENCHMARKS.md (see qemu-tests/src/bin/kiln-bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
# The overlay ping part reaches kiln-enroll through guestfwd and this relay.
cargo build --locked --release -q -p kiln-qemu-tests --bin kiln-tcp-relay
exec cargo run --locked --release -q -p kiln-qemu-tests --bin kiln-bench
