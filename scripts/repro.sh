#!/usr/bin/env bash
# make repro: build the profile twice, independently, and compare every output.
#
# The two builds differ in everything that must not matter: output folder,
# package cache (the second one starts empty and downloads and verifies every
# .deb again), TMPDIR, umask and wall-clock time. The outputs (raw image,
# raw.zst + bmap, qcow2, vhd, gce tarball and manifest, per arch) must have
# the same sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-profiles/qemu.toml}
KILN=${KILN:-target/release/kiln}
FORMATS=raw,raw.zst,qcow2,vhd,gce
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT

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

build first 022 ""
sleep 1
build second 077 "$work/second-cache"

if diff -u "$work/first/SHA256SUMS" "$work/second/SHA256SUMS"; then
  echo "repro: identical ($(wc -l < "$work/first/SHA256SUMS") files):"
  cat "$work/first/SHA256SUMS"
else
  echo "repro: the two builds differ (see above)" >&2
  exit 1
fi
