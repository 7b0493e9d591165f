#!/usr/bin/env bash
# Installs what kiln needs on a Debian 12 (bookworm) machine, for one purpose:
#
#   scripts/deps.sh build   building images (`make image`): the C cross compiler
#                           the agent's TLS library needs and the musl Rust targets
#   scripts/deps.sh run     that, plus QEMU and the UEFI firmware (`make run`)
#   scripts/deps.sh test    everything the test suite uses (`make test`, the default):
#                           the referees (e2fsck, sgdisk, veritysetup, ...), skopeo and
#                           umoci, PostgreSQL, xorriso, ...
#
# QEMU comes from bookworm-backports (the machine's qemu-utils comes from there,
# and the bookworm qemu-system packages conflict with it). Idempotent: a second
# run only checks.
set -euo pipefail

mode=${1:-test}
case $mode in
  build | run | test) ;;
  *) printf 'deps: unknown purpose %q; use build, run or test\n' "$mode" >&2; exit 2 ;;
esac

log() { printf 'deps: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Building an image: kiln itself needs only apt (its lock step drives apt-get
# in a private state folder) and the archive keyring; the agent's C code needs
# the compilers.
BUILD_PKGS=(
  ca-certificates
  debian-archive-keyring # apt checks the archive's signatures with it
  gcc                   # ring (TLS in the agent and kiln-enroll) has C: x86_64 builds
  gcc-aarch64-linux-gnu # ... and the aarch64 musl agent's ring is built by the cross gcc
  libc6-dev-arm64-cross
)
# Booting one: the UEFI firmware (QEMU itself is below, from backports).
RUN_PKGS=(
  ovmf             # x86_64 UEFI firmware for QEMU
  qemu-efi-aarch64 # arm64 UEFI firmware for QEMU
)
# The test suite's referees and servers.
TEST_PKGS=(
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
  zstd
  lz4
  skopeo           # skopeo inspect oci-archive: checks the container image archives
  umoci            # umoci unpack: checks their tags, digests and layers
  xz-utils
  postgresql       # kiln-enroll's PostgreSQL backend: the tests start a throwaway server
  sqlite3          # PRAGMA integrity_check on kiln-enroll's SQLite state in tests
  openssl          # referee for kiln-enroll's CA: the SPKI hash in tokens
  nftables         # nft -c checks the agent's MSS clamp ruleset
  wireguard-tools  # wg pubkey: referee for the agent's x25519 keys
  openssh-client   # ssh, ssh-keygen: log in to homelab nodes, referee for host key fingerprints
)
# QEMU itself must come from bookworm-backports to match qemu-utils.
BPO_PKGS=(
  qemu-system-x86/bookworm-backports
  qemu-system-arm/bookworm-backports
  qemu-system-common/bookworm-backports
  qemu-system-data/bookworm-backports
  seabios/bookworm-backports
)

APT_PKGS=("${BUILD_PKGS[@]}")
case $mode in
  run) APT_PKGS+=("${RUN_PKGS[@]}") ;;
  test) APT_PKGS+=("${RUN_PKGS[@]}" "${TEST_PKGS[@]}") ;;
esac

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "$mode" != build ]; then
  for bin in qemu-system-x86_64 qemu-system-aarch64; do
    command -v "$bin" >/dev/null 2>&1 || { missing+=("qemu"); break; }
  done
fi

export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  real=()
  for p in "${missing[@]}"; do [ "$p" = qemu ] || real+=("$p"); done
  if [ "${#real[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${real[@]}"
  fi
  if [ "$mode" != build ] && { ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-system-aarch64 >/dev/null 2>&1; }; then
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
log "all dependencies for '$mode' present"
