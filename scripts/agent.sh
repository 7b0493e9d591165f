#!/usr/bin/env bash
# make agent: the in-image agent (kiln-agent) for both arches, the same bytes
# whoever builds it and wherever. The test suite (xtask) and `make repro` run
# this script too, so every agent is built alike.
#
# rustc writes the path of the source files it compiles into the binary (panic
# locations; the debug info itself is stripped by the `agent` profile). Cargo
# gives it the workspace's own files relative to the workspace root, so the
# checkout's folder does not show; but the dependencies' files are under
# cargo's home ($CARGO_HOME/registry/src/..., in the user's home folder) and
# code that build scripts generate is under the target folder ($OUT_DIR).
# Those two prefixes are remapped to fixed names, /cargo and /target. (Without
# this, two builds whose only difference was cargo's home gave agents that
# differed in most of their bytes; no generated code shows in today's agent,
# and the second remap keeps it so.)
#
# The flags go in CARGO_ENCODED_RUSTFLAGS. With --target cargo applies them to
# the agent's own compilation only, not to build scripts or the host crates
# (kiln, kiln-enroll, xtask), which therefore do not recompile. They are the
# agent's only flags: RUSTFLAGS from the environment (which would give other
# bytes) is overridden. The flags name the two folders, so building from
# another cargo home or into another target folder compiles the agent again;
# the suite's source mirror shares both with `make agent`, so the two do not
# undo each other's build.
#
# Extra arguments go to cargo: `make agent` and the suite pass -q, and
# `scripts/agent.sh -v` shows the rustc command lines.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

# As cargo sees them: a relative CARGO_HOME or CARGO_TARGET_DIR is relative to
# the folder cargo runs in (this one). Not resolved through symlinks: cargo
# uses them as given.
absolute() {
  case $1 in
    /*) printf '%s\n' "${1%/}" ;;
    *) printf '%s/%s\n' "$PWD" "${1%/}" ;;
  esac
}
cargo_home=$(absolute "${CARGO_HOME:-$HOME/.cargo}")
target_dir=$(absolute "${CARGO_TARGET_DIR:-target}")

# rustc applies the last remap that matches a path: the longer (more specific)
# prefix goes last, so a target folder inside cargo's home, or the other way
# round, still gets its own name.
remaps=("$cargo_home=/cargo" "$target_dir=/target")
if [ "${#cargo_home}" -gt "${#target_dir}" ]; then
  remaps=("$target_dir=/target" "$cargo_home=/cargo")
fi
flags=()
for r in "${remaps[@]}"; do
  flags+=("--remap-path-prefix=$r")
done
# One flag per field, separated by 0x1f: folders with spaces stay whole.
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; printf '%s' "${flags[*]}")
export CARGO_ENCODED_RUSTFLAGS

exec "${CARGO:-cargo}" build --locked -p kiln-agent --profile agent \
  "${targets[@]/#/--target=}" "$@"
