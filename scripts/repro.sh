#!/usr/bin/env bash
# make repro: build the agent twice and the profile twice, independently, and
# compare every output.
#
# 1. The agent (scripts/agent.sh), twice from nothing: from two copies of the
#    checkout in different folders, into two target folders, the second with
#    a cargo home of its own (as another user's: it extracts the dependencies'
#    sources again from the same .crate files). The binaries of each arch must
#    be byte-identical, and the same as the one `make agent` built.
# 2. The images, with the first agent: the two builds differ in everything
#    that must not matter: output folder, package cache (the second one starts
#    empty and downloads and verifies every .deb again), TMPDIR, umask and
#    wall-clock time. The outputs (raw image, raw.zst + bmap, qcow2, vhd, gce
#    tarball and manifest, per arch) must have the same sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-profiles/qemu.toml}
KILN=${KILN:-target/release/kiln}
FORMATS=raw,raw.zst,qcow2,vhd,gce
# The agent `make agent` built (the Makefile exports CARGO_TARGET_DIR).
MADE_AGENTS=${CARGO_TARGET_DIR:-target}
TRIPLES=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The checkout's files as git sees them (tracked, and untracked ones it does not
# ignore): the working tree, uncommitted changes included, as `make agent` builds it.
copy_checkout() { # destination
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do
        # A tracked file deleted in the working tree is not part of it.
        if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
      done \
    | tar --null --files-from=- -cf - | tar -xf - -C "$1"
}

agent() { # name checkout-folder target-folder tmp-folder [cargo-home]
  local name=$1 src=$2 target=$3 tmp=$4 home=${5:-}
  copy_checkout "$src"
  mkdir -p "$tmp"
  echo "repro: agent $name (checkout $src, target $target, cargo home ${home:-default}, TMPDIR $tmp)"
  if [ -n "$home" ]; then
    CARGO_HOME=$home CARGO_TARGET_DIR=$target TMPDIR=$tmp bash "$src/scripts/agent.sh" -q
  else
    CARGO_TARGET_DIR=$target TMPDIR=$tmp bash "$src/scripts/agent.sh" -q
  fi
}

started=$SECONDS
agent first "$work/agent-1/kiln" "$work/agent-1/target" "$work/agent-1/tmp"
# The second cargo home holds what a first `cargo fetch` leaves: the registry's
# index and its .crate files, not their extracted sources; and the user's cargo
# settings (a registry mirror, say), so it downloads nothing.
home2="$work/agent-2/home/builder/.cargo"
mkdir -p "$home2/registry"
user_home=${CARGO_HOME:-$HOME/.cargo}
for d in registry/index registry/cache config.toml config; do
  if [ -e "$user_home/$d" ]; then cp -a "$user_home/$d" "$home2/$d"; fi
done
(umask 077 && agent second "$work/agent-2/src/another/checkout" "$work/agent-2/cargo-target" \
   "$work/agent-2/tmp" "$home2")
agent_secs=$((SECONDS - started))

: > "$work/AGENTS"
for t in "${TRIPLES[@]}"; do
  a="$work/agent-1/target/$t/agent/kiln-agent"
  b="$work/agent-2/cargo-target/$t/agent/kiln-agent"
  made="$MADE_AGENTS/$t/agent/kiln-agent"
  if ! cmp "$a" "$b"; then
    sha256sum "$a" "$b" >&2
    echo "repro: the two agent builds for $t differ" >&2
    exit 1
  fi
  if [ -f "$made" ] && ! cmp -s "$a" "$made"; then
    sha256sum "$a" "$made" >&2
    echo "repro: the agent \`make agent\` built for $t differs from two fresh builds" >&2
    exit 1
  fi
  echo "$(sha256sum < "$a" | cut -d' ' -f1)  $t/agent/kiln-agent" >> "$work/AGENTS"
done
echo "repro: the agent builds are identical (${agent_secs} s for both):"
cat "$work/AGENTS"
KILN_AGENT_X86_64="$work/agent-1/target/x86_64-unknown-linux-musl/agent/kiln-agent"
KILN_AGENT_ARM64="$work/agent-1/target/aarch64-unknown-linux-musl/agent/kiln-agent"
export KILN_AGENT_X86_64 KILN_AGENT_ARM64

build() { # name umask cache-folder
  local dir="$work/$1"
  mkdir -p "$dir/tmp"
  echo "repro: build $1 (umask $2, cache ${3:-default}, TMPDIR $dir/tmp)"
  local cache_args=()
  [ -n "$3" ] && cache_args=(--cache "$3")
  (umask "$2" && TMPDIR="$dir/tmp" "$KILN" -q "${cache_args[@]}" build "$PROFILE" \
     --arch all --format "$FORMATS" --out "$dir/out")
  (cd "$dir/out" && sha256sum -- * | sort -k2) > "$dir/SHA256SUMS"
}

started=$SECONDS
build first 022 ""
sleep 1
build second 077 "$work/second-cache"
image_secs=$((SECONDS - started))

if diff -u "$work/first/SHA256SUMS" "$work/second/SHA256SUMS"; then
  echo "repro: identical ($(wc -l < "$work/first/SHA256SUMS") files; images ${image_secs} s for both builds):"
  cat "$work/first/SHA256SUMS"
else
  echo "repro: the two builds differ (see above)" >&2
  exit 1
fi
