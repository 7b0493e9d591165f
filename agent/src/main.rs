//! kiln-agent: the one static binary kiln puts into its images.
//!
//! As PID 1 (the initramfs's `/init`) or with `init` it brings up the root filesystem and
//! hands over to systemd; with `report` it prints the booted system's status line; the
//! other modes (`config`, `ssh`, `preflight`, `overlay`, `cluster`, `images`, `update`) are the
//! node agent's.

// Tests may unwrap: a panic there is a failed test, not a failed boot.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backoff;
mod cluster;
mod cmdline;
mod config;
mod dm;
mod flags;
mod gpt;
mod grpc;
mod images;
mod init;
mod ioctl;
mod netlink;
mod overlay;
mod preflight;
mod report;
mod ssh;
mod sys;
mod update;
#[cfg(test)]
mod verity_tree;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
kiln-agent: kiln's in-image binary

Usage:
  kiln-agent init               initramfs init: mount the root partition (found by its GPT
                                type) read-only and switch to the system's init; this mode
                                also runs whenever the binary is PID 1
  kiln-agent report [--timeout SECONDS]
                                print one status line (arch, kernel, hostname, root, /var,
                                boot stub, systemd state, failed units, machine-id,
                                boots); exit 0
                                when systemd is running, / is read-only and creating a
                                file under /usr and /etc fails with EROFS (default timeout
                                120 s)
  kiln-agent config [--dry-run]
                                gather the node's configuration from every channel (see
                                below), print what each one gave, set the hostname and
                                write the merged result to /run/kiln/config.toml; a
                                channel with bad config prints an ERROR line and is
                                ignored (exit 0); --dry-run sets and writes nothing
  kiln-agent ssh                make sshd's host keys in /var/lib/kiln/ssh unless they
                                exist and print their fingerprints; write root's
                                authorized keys from ssh_authorized_keys to
                                /run/kiln/ssh/authorized_keys/root (images with [ssh])
  kiln-agent preflight [--wait SECONDS]
                                check the node's Kubernetes prerequisites, one line per
                                check; exit non-zero when one fails (with --wait, retry
                                failing checks until they pass or the time is up)
  kiln-agent overlay run|enroll|status|bench-apply
                                the WireGuard overlay (kiln-overlay.service runs
                                `overlay run`): enroll with kiln-enroll using [enroll]
                                below, bring up interface kiln0, follow the peer list;
                                `bench-apply` times a synthetic peer list on interface
                                kilnbench0 (make bench); `overlay --help` for details
  kiln-agent cluster run|status
                                the Kubernetes join (kiln-cluster.service runs `cluster
                                run`): with [cluster] in /usr/lib/kiln/agent.toml, get
                                the join parameters from kiln-enroll once the overlay is
                                up, then start k3s or run `kubeadm join` on the overlay
                                address, retrying with backoff until joined; `cluster
                                --help` for details
  kiln-agent images import [--list FILE] [--socket PATH] [--root DIR]
                                import the image archives of the profile's
                                [[container_image]]s that FILE lists (default
                                /usr/share/kiln/images/images.list) into containerd's
                                k8s.io namespace (kiln-images.service runs it at boot):
                                check every blob's sha256 and size, put the blobs into
                                containerd's content store under DIR (its root, default
                                /var/lib/containerd) and register them and the image over
                                its socket PATH (default /run/containerd/containerd.sock);
                                one line per image (`kiln-images: imported <ref>` or
                                `kiln-images: ERROR: <ref>: <reason>`), exit 1 when one
                                failed; nothing is unpacked: containerd does that when a
                                container first uses the image
  kiln-agent images list [--socket PATH]
                                the images containerd's CRI has, as the kubelet sees them:
                                `<name> <image id> <size>` per name
  kiln-agent update apply|check|status|boot
                                A/B updates: `update apply SOURCE` writes a signed
                                bundle into the slot that is not running and installs its
                                UKI on trial; `update check` (kiln-update-check.timer)
                                follows [update] channel below and applies a newer
                                version in the window; `update status [--json]` shows
                                both slots, a pending update, rollbacks and failed
                                health checks;
                                `update boot` (kiln-update.service, every boot) mounts
                                the ESP on /efi, reports a rollback, and on a boot on
                                trial waits for the health check (exit 1 when it fails:
                                the unit reboots and systemd-boot counts the try down);
                                `update --help` for details
  kiln-agent status             the overlay's status, then the cluster's (`overlay
                                status` and `cluster status`); exit 1 when either has
                                none (not enrolled, kiln-cluster not run this boot)
  kiln-agent --help             this text
  kiln-agent --version          the version

Node config (kiln-agent config), the same TOML in every channel:
  schema = 1                    optional; any other value is an error
  hostname = \"node-1\"         RFC 1123 labels (a-z, 0-9, '-'; <= 63 characters each,
                                <= 253 in all; lowercased); without one, kiln-<8 hex
                                digits derived from the machine-id
  ssh_authorized_keys = [\"ssh-ed25519 AAAA... you@laptop\"]
                                root's SSH keys, in images with an SSH server: OpenSSH
                                public key lines (TYPE BASE64 [COMMENT], no options);
                                the highest channel's list is used whole (on the command
                                line: one kiln.ssh_authorized_keys=\"...\" per key)
  [enroll]                      joining the overlay (kiln.enroll.<key>= on the command
                                line):
    server = \"https://HOST:8443\"  kiln-enroll's URL (port 8443 when left out)
    token = \"KLN1...\"           the join token (`kiln-enroll token create`); pins the
                                server's CA; its secret is never printed
    endpoint = \"HOST:PORT\"      optional: where the outside reaches this node's
                                WireGuard port (a public address or forwarded port)
    listen_port = 51820         optional WireGuard UDP port (1-65535)
    mtu = 1420                  optional overlay MTU (1280-9000); default: the
                                server's, lowered to the path MTU minus 80
  [update]                      following an update channel (kiln.update.<key>= on the
                                command line):
    channel = \"https://HOST/homelab-x86_64.channel.json\"
                                the signed channel document (`kiln channel sign`)
    check_every = \"6h\"          optional: how often to check (10min to 7d; default 6h)
    window = \"Sat 02:00-04:00\"  optional maintenance window, UTC (DAY or daily, then
                                HH:MM-HH:MM); without it an update applies when found
    auto_reboot = true          optional: reboot into an applied update (default true)
  Unknown keys and wrong types are errors. Per key, the highest channel that sets it
  wins. Channels, highest precedence first (/usr/lib/kiln/agent.toml `channels` may
  drop or reorder them):
  cmdline                       kernel command line kiln.<key>=<value> (kiln.hostname=
                                node-1; dotted for tables); init's options below are not
                                config keys
  esp                           kiln.toml (any case) in the root folder of the boot
                                disk's EFI system partition
  cidata                        a vfat or iso9660 volume labelled cidata/CIDATA on another
                                device, holding kiln.toml, or user-data whose first line
                                is #kiln-config
  fw_cfg                        QEMU -fw_cfg name=opt/kiln/config,file=kiln.toml
  cloud                         the user-data of EC2, GCE, Azure or Oracle Cloud (detected
                                from DMI), optionally starting with #kiln-config

Kernel command line options read by init:
  kiln.root_type=GUID           root partition type (default: the architecture's
                                Discoverable Partitions root type)
  kiln.rootwait=SECONDS         how long to wait for the root partition (default 30)
  kiln.on_failure=halt|poweroff|reboot
                                what to do when the boot cannot continue (default halt);
                                a boot on trial (a new version systemd-boot is counting
                                boots of) always reboots after 5 s, so that the node
                                falls back to the previous version in the end
  kiln.debug                    log every step
  kiln.roothash=HEX             the root's dm-verity root hash (64 hex digits): the root
                                partition (PARTUUID = its first half) is only mounted
                                through dm-verity with the hash partition (PARTUUID = its
                                second half), whose whole tree is checked first
  kiln.verity_check=full|on-read
                                full (default): read every root block through dm-verity
                                before switching, so a changed root stops the boot;
                                on-read: blocks are checked only when read
  kiln.var_min=SIZE             smallest var partition worth creating in the free space
                                after the last partition on first boot (bytes or K/M/G/T;
                                default 256M)
  kiln.var_fallback=halt|tmpfs  without room for var (or when it cannot be formatted or
                                mounted): stop the boot (halt, the default) or keep /var
                                on a tmpfs whose state is lost at every reboot
";

fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn run_init(args: &[String]) -> ! {
    let mut sys = init::real::RealInit::default();
    init::run(&mut sys, args);
    // Only reached if exec and halt both returned, which the real Sys never does; PID 1
    // must still not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn run_report(args: &[String]) -> ExitCode {
    let mut timeout = report::DEFAULT_TIMEOUT;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = match arg.as_str() {
            "--timeout" => rest.next().map(String::as_str),
            a => match a.strip_prefix("--timeout=") {
                Some(v) => Some(v),
                None => {
                    err(&format!(
                        "kiln-agent report: unknown argument {a:?}\n\n{USAGE}"
                    ));
                    return ExitCode::from(2);
                }
            },
        };
        match value.and_then(|v| v.parse::<u64>().ok()) {
            Some(secs) => timeout = Duration::from_secs(secs),
            None => {
                err("kiln-agent report: --timeout needs a whole number of seconds\n");
                return ExitCode::from(2);
            }
        }
    }
    let mut sys = sys::real::RealSys::default();
    let r = report::collect(&mut sys, timeout);
    out(&format!("{}\n", r.line()));
    if r.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let rest = args.get(1..).unwrap_or_default();
    // As PID 1 the arguments come from the kernel and belong to the system's init.
    if nix::unistd::getpid().as_raw() == 1 {
        run_init(rest);
    }
    match rest.first().map(String::as_str) {
        Some("init") => run_init(&rest[1..]),
        Some("report") => run_report(&rest[1..]),
        Some("config") => config::main(&rest[1..]),
        Some("ssh") => ssh::main(&rest[1..]),
        Some("preflight") => preflight::main(&rest[1..]),
        Some("overlay") => overlay::main(&rest[1..]),
        Some("cluster") => cluster::main(&rest[1..]),
        Some("images") => images::main(&rest[1..]),
        Some("update") => update::main(&rest[1..]),
        Some("status") if rest.len() == 1 => {
            let overlay = overlay::real::run_status();
            let cluster = cluster::real::run_status();
            ExitCode::from(overlay.max(cluster))
        }
        Some("status") => {
            err(&format!(
                "kiln-agent status: takes no arguments, got {:?}\n\n{USAGE}",
                &rest[1..]
            ));
            ExitCode::from(2)
        }
        None | Some("--help" | "-h" | "help") => {
            out(USAGE);
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            out(&format!("kiln-agent {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Some(other) => {
            err(&format!("kiln-agent: unknown mode {other:?}\n\n{USAGE}"));
            ExitCode::from(2)
        }
    }
}
