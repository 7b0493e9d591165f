#!/usr/bin/env bash
# Installs everything kiln needs to build images and run its test suite on a
# Debian 12 (bookworm) machine: apt packages, the QEMU builds from
# bookworm-backports (the machine's qemu-utils comes from there, and the
# bookworm qemu-system packages conflict with it), and the musl Rust targets
# for the in-image agent. Idempotent: a second run only checks.
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Packages from the regular bookworm suites.
APT_PKGS=(
  ca-certificates
  e2fsprogs        # e2fsck, mkfs.ext4 (test referee and benchmark floor)
  dosfstools       # fsck.fat
  mtools           # mcopy: reads files back from the ESP in tests
  xorriso          # makes the NoCloud cidata ISO the QEMU tests attach
  gdisk            # sgdisk -v
  bmap-tools       # bmaptool copy: checks the raw.zst + .bmap output
  cpio             # cpio -it on the initramfs
  cryptsetup-bin   # veritysetup
  kmod             # depmod/modprobe: referees for the module index files
  systemd          # systemd-sysusers, systemctl, systemd-analyze verify: referees for users and units
  passwd           # pwck, grpck: referees for passwd/group
  dpkg             # dpkg-deb builds test packages
  ovmf             # x86_64 UEFI firmware for QEMU
  qemu-efi-aarch64 # arm64 UEFI firmware for QEMU
  zstd
  lz4
  skopeo           # skopeo inspect oci-archive: checks the container image archives
  umoci            # umoci unpack: checks their tags, digests and layers
  xz-utils
  gcc                   # ring (TLS in the agent and kiln-enroll) has C: x86_64 builds
  gcc-aarch64-linux-gnu # ... and the aarch64 musl agent's ring is built by the cross gcc
  libc6-dev-arm64-cross
  postgresql       # kiln-enroll's PostgreSQL backend: the tests start a throwaway server
  sqlite3          # PRAGMA integrity_check on kiln-enroll's SQLite state in tests
  openssl          # referee for kiln-enroll's CA: the SPKI hash in tokens
  nftables         # nft -c checks the agent's MSS clamp ruleset
  wireguard-tools  # wg pubkey: referee for the agent's x25519 keys
)
# QEMU itself must come from bookworm-backports to match qemu-utils.
BPO_PKGS=(
  qemu-system-x86/bookworm-backports
  qemu-system-arm/bookworm-backports
  qemu-system-common/bookworm-backports
  qemu-system-data/bookworm-backports
  seabios/bookworm-backports
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
for bin in qemu-system-x86_64 qemu-system-aarch64; do
  command -v "$bin" >/dev/null 2>&1 || { missing+=("qemu"); break; }
done

export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  real=()
  for p in "${missing[@]}"; do [ "$p" = qemu ] || real+=("$p"); done
  if [ "${#real[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${real[@]}"
  fi
  if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    bpo_dir=/var/lib/kiln-deps/bpo
    $SUDO mkdir -p "$bpo_dir/lists/partial"
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bookworm-backports main\ndeb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bookworm main\n' "$uri" "$uri" \
      | $SUDO tee "$bpo_dir/sources.list" >/dev/null
    bpo_opts=(-o "Dir::Etc::SourceList=$bpo_dir/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$bpo_dir/lists")
    log "installing QEMU from bookworm-backports"
    $SUDO apt-get "${bpo_opts[@]}" update -qq
    $SUDO apt-get "${bpo_opts[@]}" install -y -qq --no-install-recommends "${BPO_PKGS[@]}"
  fi
fi

# Rust targets for the static agent (one binary per arch).
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    grep -qx "$t" <<<"$installed" || { log "adding rust target $t"; rustup target add "$t"; }
  done
else
  log "rustup not found: install Rust with rustup first (https://rustup.rs)"; exit 1
fi
log "all dependencies present"
