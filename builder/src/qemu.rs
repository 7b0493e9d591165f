//! Booting images in QEMU with UEFI firmware under TCG: the command line
//! `kiln run` uses and the QEMU tests share. [`run`] is `kiln run` itself
//! (any image format, a throwaway overlay, SNTP for the guest) and [`sntp`]
//! the SNTP server it and the tests answer the guests' timesyncd with.

pub mod run;
pub mod sntp;

use std::path::{Path, PathBuf};

use crate::arch::Arch;

/// Errors while preparing a VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Firmware or QEMU binary missing.
    #[error("{what} not found at {path}: install {package} (`make deps` installs everything kiln's tests need)")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Debian package that ships it.
        package: &'static str,
    },
    /// Copying the firmware variable store failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// UEFI firmware for one arch: read-only code and a template variable store.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The code image (pflash unit 0).
    pub code: PathBuf,
    /// The pristine variable store, copied per VM (pflash unit 1).
    pub vars: PathBuf,
}

impl Firmware {
    /// Debian's OVMF (x86_64) or AAVMF (arm64) files.
    pub fn debian(arch: Arch) -> Result<Firmware, QemuError> {
        let (code, vars, package) = match arch {
            Arch::X86_64 => (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                "ovmf",
            ),
            Arch::Arm64 => (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
                "qemu-efi-aarch64",
            ),
        };
        for (what, p) in [
            ("UEFI firmware code", code),
            ("UEFI firmware variables", vars),
        ] {
            if !Path::new(p).is_file() {
                return Err(QemuError::Missing {
                    what,
                    path: p.into(),
                    package,
                });
            }
        }
        Ok(Firmware {
            code: code.into(),
            vars: vars.into(),
        })
    }
}

/// The QEMU system emulator binary for an arch.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum Serial {
    /// The terminal (interactive `kiln run`); Ctrl-A X quits.
    Stdio,
    /// The terminal, and a copy of everything the guest prints in `log`
    /// (`kiln run` watches it for the login prompt).
    StdioLogged {
        /// The file QEMU appends the console's output to.
        log: PathBuf,
    },
    /// A file (tests read it while the VM runs).
    File(PathBuf),
    /// A Unix socket QEMU listens on: the tests read the console from it and
    /// type into it. QEMU waits for that one client before the guest runs, so
    /// the client gets every byte the guest prints, each exactly once.
    Socket {
        /// The socket QEMU creates; connect to it after QEMU started.
        path: PathBuf,
    },
}

/// A file the guest reads through QEMU's fw_cfg interface
/// (`/sys/firmware/qemu_fw_cfg/by_name/<name>/raw` with module qemu_fw_cfg).
#[derive(Debug, Clone)]
pub struct FwCfg {
    /// The fw_cfg name, e.g. `opt/kiln/config` (user entries start with `opt/`).
    pub name: String,
    /// The host file whose bytes the guest sees.
    pub file: PathBuf,
}

/// What a guest network card's frames reach on the host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A user-mode NAT (slirp) of its own: DHCP, DNS and the host's
    /// loopback at 10.0.2.2, with `options` such as `hostfwd=...` or
    /// `guestfwd=...` (see [`Vm::user_net_options`]).
    User {
        /// Options appended to `-netdev user`.
        options: Vec<String>,
    },
    /// A point-to-point Ethernet link carried in UDP datagrams on the host:
    /// every frame leaves from `local` to `remote`, and the other VM's link
    /// has the two swapped. Neither side has to start first.
    Dgram {
        /// The host address this end receives frames on.
        local: std::net::SocketAddr,
        /// The host address the other end receives frames on.
        remote: std::net::SocketAddr,
    },
}

impl NetBackend {
    /// The `-netdev` value for this backend with `id`.
    fn netdev(&self, id: &str) -> String {
        match self {
            NetBackend::User { options } => {
                let mut v = format!("user,id={id}");
                for o in options {
                    v.push(',');
                    v.push_str(o);
                }
                v
            }
            NetBackend::Dgram { local, remote } => format!(
                "dgram,id={id},{},{}",
                inet("local", local),
                inet("remote", remote)
            ),
        }
    }
}

/// `-netdev dgram`'s address keys for one side of the link.
fn inet(side: &str, addr: &std::net::SocketAddr) -> String {
    format!(
        "{side}.type=inet,{side}.host={},{side}.port={}",
        addr.ip(),
        addr.port()
    )
}

/// A virtio network card beyond the default user-mode NIC ([`Vm::nics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The card's MAC address (`52:54:00:xx:xx:xx`). QEMU gives every VM's
    /// first card the same default, so VMs that share a segment need their own.
    pub mac: Option<String>,
    /// What the card is plugged into. One backend is connected directly;
    /// with several, the card and every backend get a port on one QEMU hub,
    /// which repeats each frame to all other ports (one NAT shared by the
    /// card and the VMs at the far ends of links). Empty: no cable.
    pub backends: Vec<NetBackend>,
}

impl Nic {
    /// The arguments for the card numbered `n` in its VM (ids `nic<n>...`,
    /// hub `n`, so cards never share ids or hubs).
    fn args(&self, n: usize) -> Vec<String> {
        let id = format!("nic{n}");
        let mut a = Vec::new();
        let mut device = String::from("virtio-net-pci");
        match self.backends.as_slice() {
            [] => {}
            [only] => {
                a.extend(["-netdev".into(), only.netdev(&id)]);
                device.push_str(&format!(",netdev={id}"));
            }
            several => {
                for (i, b) in several.iter().enumerate() {
                    let backend = format!("{id}b{i}");
                    a.extend(["-netdev".into(), b.netdev(&backend)]);
                    a.extend([
                        "-netdev".into(),
                        format!("hubport,id={id}p{i},hubid={n},netdev={backend}"),
                    ]);
                }
                a.extend(["-netdev".into(), format!("hubport,id={id},hubid={n}")]);
                device.push_str(&format!(",netdev={id}"));
            }
        }
        if let Some(mac) = &self.mac {
            device.push_str(&format!(",mac={mac}"));
        }
        a.extend(["-device".into(), device]);
        a
    }
}

/// One VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Guest arch.
    pub arch: Arch,
    /// The disk image.
    pub disk: PathBuf,
    /// `raw` or `qcow2`.
    pub disk_format: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Discard disk writes when the VM stops.
    pub snapshot: bool,
    /// Serial console destination.
    pub serial: Serial,
    /// A user-mode NIC (NAT to the host).
    pub user_net: bool,
    /// Options added to the user-mode NIC, e.g.
    /// `guestfwd=tcp:169.254.169.254:80-cmd:...`.
    pub user_net_options: Vec<String>,
    /// Network cards after the user-mode NIC (or instead of it, with
    /// `user_net` off), in PCI order.
    pub nics: Vec<Nic>,
    /// Extra read-only raw disks after the boot disk (`/dev/vdb`, ...),
    /// e.g. a NoCloud `cidata` volume.
    pub drives: Vec<PathBuf>,
    /// fw_cfg entries.
    pub fw_cfg: Vec<FwCfg>,
    /// Extra arguments appended as they are.
    pub extra: Vec<String>,
    /// QEMU exits when the guest reboots (`-no-reboot`); off, a reboot resets the
    /// machine in the same process, as the update tests' reboots need.
    pub exit_on_reboot: bool,
}

impl Vm {
    /// A VM with kiln's defaults: 1 GiB, 2 vCPUs, snapshot, serial on stdio, one NAT NIC.
    pub fn new(arch: Arch, disk: impl Into<PathBuf>) -> Vm {
        Vm {
            arch,
            disk: disk.into(),
            disk_format: "raw".into(),
            memory_mib: 1024,
            cpus: 2,
            snapshot: true,
            serial: Serial::Stdio,
            user_net: true,
            user_net_options: Vec::new(),
            nics: Vec::new(),
            drives: Vec::new(),
            fw_cfg: Vec::new(),
            extra: Vec::new(),
            exit_on_reboot: true,
        }
    }

    /// Forwards TCP connections to the host's `127.0.0.1:host_port` to the guest's
    /// `guest_port` through the user-mode NIC (e.g. SSH: `forward_tcp(2222, 22)`); only
    /// loopback, so nothing outside the host reaches the guest.
    pub fn forward_tcp(&mut self, host_port: u16, guest_port: u16) {
        self.user_net_options
            .push(format!("hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"));
    }

    /// The full argument list (without the binary). `vars` is this VM's own
    /// copy of the firmware variable store.
    pub fn args(&self, fw: &Firmware, vars: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec!["-nodefaults".into(), "-no-user-config".into()];
        match self.arch {
            // No KVM on these machines (docs/src/internals/environment.md): TCG everywhere.
            Arch::X86_64 => {
                a.extend(["-machine", "q35,accel=tcg", "-cpu", "max"].map(String::from))
            }
            // cortex-a57 boots faster under TCG than `max`.
            Arch::Arm64 => {
                a.extend(["-machine", "virt,accel=tcg", "-cpu", "cortex-a57"].map(String::from))
            }
        }
        a.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-display".into(),
            "none".into(),
        ]);
        if self.exit_on_reboot {
            a.push("-no-reboot".into());
        }
        a.extend([
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                fw.code.display()
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            "-drive".into(),
            format!(
                "file={},format={},if=virtio{}",
                self.disk.display(),
                self.disk_format,
                if self.snapshot { ",snapshot=on" } else { "" }
            ),
            "-device".into(),
            "virtio-rng-pci".into(),
        ]);
        for d in &self.drives {
            a.extend([
                "-drive".into(),
                format!("file={},format=raw,if=virtio,readonly=on", d.display()),
            ]);
        }
        if self.user_net {
            let mut nic = String::from("user,model=virtio-net-pci");
            for o in &self.user_net_options {
                nic.push(',');
                nic.push_str(o);
            }
            a.extend(["-nic".into(), nic]);
        }
        for (n, nic) in self.nics.iter().enumerate() {
            a.extend(nic.args(n));
        }
        for f in &self.fw_cfg {
            a.extend([
                "-fw_cfg".into(),
                format!("name={},file={}", f.name, f.file.display()),
            ]);
        }
        match &self.serial {
            Serial::Stdio => a.extend(["-serial".into(), "mon:stdio".into()]),
            // mux=on keeps the monitor on Ctrl-A C and Ctrl-A X, as mon:stdio does.
            Serial::StdioLogged { log } => a.extend([
                "-chardev".into(),
                format!(
                    "stdio,id=con0,mux=on,logfile={},logappend=on",
                    log.display()
                ),
                "-serial".into(),
                "chardev:con0".into(),
                "-mon".into(),
                "chardev=con0,mode=readline".into(),
            ]),
            Serial::File(p) => a.extend([
                "-serial".into(),
                format!("file:{}", p.display()),
                "-monitor".into(),
                "none".into(),
            ]),
            // wait=on: nothing runs until the client is there, which keeps the
            // whole console. (The tests read QEMU's `logfile=` once; under load a
            // character stood there twice, cause unknown: now nothing but the
            // socket sits between the guest's UART and the reader.)
            Serial::Socket { path } => a.extend([
                "-chardev".into(),
                format!("socket,id=ser0,path={},server=on,wait=on", path.display()),
                "-serial".into(),
                "chardev:ser0".into(),
                "-monitor".into(),
                "none".into(),
            ]),
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// A ready `Command`: checks the firmware and QEMU are there and copies
    /// the variable store into `scratch`.
    pub fn command(&self, scratch: &Path) -> Result<std::process::Command, QemuError> {
        let fw = Firmware::debian(self.arch)?;
        let bin = qemu_binary(self.arch);
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            let package = match self.arch {
                Arch::X86_64 => "qemu-system-x86",
                Arch::Arm64 => "qemu-system-arm",
            };
            return Err(QemuError::Missing {
                what: "QEMU",
                path: PathBuf::from(bin),
                package,
            });
        }
        let vars = scratch.join(format!("efivars-{}.fd", self.arch));
        std::fs::copy(&fw.vars, &vars).map_err(|source| QemuError::Io {
            path: vars.clone(),
            source,
        })?;
        let mut c = std::process::Command::new(bin);
        c.args(self.args(&fw, &vars));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_uses_virt_and_the_aavmf_pair() {
        let fw = Firmware {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let mut vm = Vm::new(Arch::Arm64, "/d.raw");
        vm.serial = Serial::File("/s.log".into());
        let a = vm.args(&fw, Path::new("/mine.fd")).join(" ");
        assert!(
            a.contains("virt,accel=tcg") && a.contains("cortex-a57"),
            "{a}"
        );
        assert!(
            a.contains("unit=0,readonly=on,file=/c.fd") && a.contains("unit=1,file=/mine.fd"),
            "{a}"
        );
        assert!(
            a.contains("file=/d.raw,format=raw,if=virtio,snapshot=on"),
            "{a}"
        );
        assert!(a.contains("-serial file:/s.log"), "{a}");
        assert!(!a.contains("kvm"), "{a}");
    }

    #[test]
    fn a_tcp_forward_listens_on_loopback_only() {
        let fw = Firmware {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let mut vm = Vm::new(Arch::X86_64, "/d.raw");
        vm.forward_tcp(2222, 22);
        let a = vm.args(&fw, Path::new("/mine.fd"));
        let nic = a.iter().position(|x| x == "-nic").unwrap();
        assert_eq!(
            a[nic + 1],
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"
        );
    }

    #[test]
    fn socket_console_drives_and_fw_cfg() {
        let fw = Firmware {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let mut vm = Vm::new(Arch::X86_64, "/d.raw");
        vm.serial = Serial::Socket {
            path: "/t/ser.sock".into(),
        };
        vm.drives.push("/t/cidata.img".into());
        vm.fw_cfg.push(FwCfg {
            name: "opt/kiln/config".into(),
            file: "/t/kiln.toml".into(),
        });
        vm.user_net_options.push("hostfwd=udp::5353-:53".into());
        let a = vm.args(&fw, Path::new("/mine.fd"));
        let pair = |flag: &str, value: &str| a.windows(2).any(|w| w[0] == flag && w[1] == value);
        assert!(
            pair(
                "-chardev",
                "socket,id=ser0,path=/t/ser.sock,server=on,wait=on"
            ),
            "{a:?}"
        );
        assert!(pair("-serial", "chardev:ser0"), "{a:?}");
        assert!(
            pair(
                "-drive",
                "file=/t/cidata.img,format=raw,if=virtio,readonly=on"
            ),
            "{a:?}"
        );
        assert!(
            pair("-fw_cfg", "name=opt/kiln/config,file=/t/kiln.toml"),
            "{a:?}"
        );
        assert!(
            pair("-nic", "user,model=virtio-net-pci,hostfwd=udp::5353-:53"),
            "{a:?}"
        );
        // The boot disk stays first, so it is /dev/vda and extra disks follow.
        let first_drive = a
            .windows(2)
            .find(|w| w[0] == "-drive" && w[1].contains("if=virtio"))
            .map(|w| w[1].clone());
        assert_eq!(
            first_drive.as_deref(),
            Some("file=/d.raw,format=raw,if=virtio,snapshot=on")
        );
    }

    #[test]
    fn nics_with_one_backend_or_a_hub() {
        let fw = Firmware {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let mut vm = Vm::new(Arch::X86_64, "/d.raw");
        vm.user_net = false;
        let link = NetBackend::Dgram {
            local: "127.0.0.1:4001".parse().unwrap(),
            remote: "127.0.0.1:4002".parse().unwrap(),
        };
        vm.nics.push(Nic {
            mac: Some("52:54:00:6b:00:01".into()),
            backends: vec![
                NetBackend::User {
                    options: vec!["hostfwd=udp:127.0.0.1:5000-:51820".into()],
                },
                link.clone(),
            ],
        });
        vm.nics.push(Nic {
            mac: None,
            backends: vec![link],
        });
        let a = vm.args(&fw, Path::new("/mine.fd"));
        let values = |flag: &str| -> Vec<&str> {
            a.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert!(!a.iter().any(|x| x == "-nic"), "{a:?}");
        assert_eq!(
            values("-netdev"),
            [
                "user,id=nic0b0,hostfwd=udp:127.0.0.1:5000-:51820",
                "hubport,id=nic0p0,hubid=0,netdev=nic0b0",
                "dgram,id=nic0b1,local.type=inet,local.host=127.0.0.1,local.port=4001,\
                 remote.type=inet,remote.host=127.0.0.1,remote.port=4002",
                "hubport,id=nic0p1,hubid=0,netdev=nic0b1",
                "hubport,id=nic0,hubid=0",
                "dgram,id=nic1,local.type=inet,local.host=127.0.0.1,local.port=4001,\
                 remote.type=inet,remote.host=127.0.0.1,remote.port=4002",
            ]
        );
        let devices = values("-device");
        assert!(
            devices.contains(&"virtio-net-pci,netdev=nic0,mac=52:54:00:6b:00:01"),
            "{devices:?}"
        );
        assert!(
            devices.contains(&"virtio-net-pci,netdev=nic1"),
            "{devices:?}"
        );
    }
}
