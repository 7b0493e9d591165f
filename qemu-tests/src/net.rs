//! QEMU network layouts for the overlay tests, planned as plain values
//! ([`kiln::qemu::Nic`]) and then put on a [`kiln::qemu::Vm`].
//!
//! Two layouts, both measured under TCG with the debug image:
//! - [`OwnNat`]: a node behind a NAT (slirp) of its own. Guests behind
//!   different NATs reach each other only through the host: a "public" node
//!   has a host UDP port forwarded to its WireGuard port and the others use
//!   the endpoint `10.0.2.2:PORT`. The public node then sees each of them at
//!   `10.0.2.2:<a port of that node's NAT>`, which answers as long as the
//!   NAT's UDP mapping lives: gone after 260 s of silence in a measurement
//!   (libslirp's UDP timeout is 240 s); the overlay's 25 s keepalive keeps it.
//! - [`SharedSegment`]: one NAT for several VMs on one Ethernet segment. The
//!   owner's card, its NAT and one datagram link per member share a QEMU hub;
//!   each member's only card is the far end of its link. Every VM gets a
//!   10.0.2.x address from the one DHCP server in the order they ask (a
//!   member can get .15 before the owner: read it from the guest with
//!   [`NAT_ADDR_COMMAND`] and [`nat_address`]) and they reach each other
//!   directly.
//!
//! In both, the enroll server on the host's loopback is at
//! [`ENROLL_IP`]:[`ENROLL_PORT`] for the guests, through guestfwd and
//! `kiln-tcp-relay` (one relay per connection, so any number of guests and
//! connections at once).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context};
use kiln::qemu::{NetBackend, Nic, Vm};

/// The host's loopback as every guest behind a NAT sees it.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Where guests reach the enroll server (forwarded to the host's loopback).
pub const ENROLL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The enroll server's port for the guests.
pub const ENROLL_PORT: u16 = 8443;
/// The WireGuard port the overlay listens on in every guest.
pub const WG_PORT: u16 = 51820;

/// The enroll server's URL as the guests see it (`[enroll] server`).
pub fn enroll_url() -> String {
    format!("https://{ENROLL_IP}:{ENROLL_PORT}")
}

/// The guest command whose output [`nat_address`] reads.
pub const NAT_ADDR_COMMAND: &str = "ip -4 -o addr show";

/// The guest's address on its NAT's network (10.0.2.0/24) in the output
/// of [`NAT_ADDR_COMMAND`], if DHCP has given it one yet.
pub fn nat_address(ip_output: &str) -> Option<Ipv4Addr> {
    ip_output
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .filter_map(|w| w[1].split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|a| a.octets()[..3] == [10, 0, 2])
}

/// Ports handed out by this process: two callers never get the same one,
/// even before QEMU or a server has bound the first.
static HANDED_OUT: OnceLock<Mutex<BTreeSet<(bool, u16)>>> = OnceLock::new();

/// The protocols [`free_port`] can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A port on 127.0.0.1 that was free for `proto` a moment ago (the kernel
/// picked it for a bind to port 0, then it was released) and that this
/// process has not handed out before. Another process could still take it
/// before QEMU binds it; the ephemeral range makes that unlikely.
pub fn free_port(proto: Proto) -> anyhow::Result<u16> {
    let taken = HANDED_OUT.get_or_init(|| Mutex::new(BTreeSet::new()));
    for _ in 0..64 {
        let port = match proto {
            Proto::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .context("binding a TCP socket to 127.0.0.1:0")?
                .port(),
            Proto::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.local_addr())
                .context("binding a UDP socket to 127.0.0.1:0")?
                .port(),
        };
        let mut set = taken
            .lock()
            .map_err(|_| anyhow::anyhow!("a thread panicked while picking a port"))?;
        if set.insert((proto == Proto::Tcp, port)) {
            return Ok(port);
        }
    }
    bail!("no free {proto:?} port on 127.0.0.1 after 64 tries")
}

/// A free UDP port on 127.0.0.1 (see [`free_port`]).
pub fn free_udp_port() -> anyhow::Result<u16> {
    free_port(Proto::Udp)
}

/// A free TCP port on 127.0.0.1 (see [`free_port`]).
pub fn free_tcp_port() -> anyhow::Result<u16> {
    free_port(Proto::Tcp)
}

/// The host side every NAT in these layouts offers its guests: the enroll
/// server at [`ENROLL_IP`]:[`ENROLL_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostServices {
    /// `kiln-tcp-relay` (`env!("CARGO_BIN_EXE_kiln-tcp-relay")` in tests).
    pub relay: PathBuf,
    /// The enroll server's port on 127.0.0.1.
    pub enroll_port: u16,
}

impl HostServices {
    /// The services for a relay binary and the enroll server's host port.
    pub fn new(relay: &Path, enroll_port: u16) -> HostServices {
        HostServices {
            relay: relay.to_path_buf(),
            enroll_port,
        }
    }

    /// The NAT options that forward the guests' connections to the enroll
    /// address to the server. `cmd:` starts one relay per connection, so
    /// every guest behind this NAT can connect at the same time.
    pub fn nat_options(&self) -> Vec<String> {
        vec![format!(
            "guestfwd=tcp:{ENROLL_IP}:{ENROLL_PORT}-cmd:{} 127.0.0.1:{}",
            qemu_escape(&self.relay.display().to_string()),
            self.enroll_port
        )]
    }
}

/// QEMU's option syntax ends a value at a comma; a doubled one is a comma.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// A node behind a NAT of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnNat {
    /// The host UDP port forwarded to the guest's [`WG_PORT`] (a "public"
    /// node), or none (a node the others cannot reach first).
    pub public_port: Option<u16>,
}

impl OwnNat {
    /// A node no other guest can reach first.
    pub fn private() -> OwnNat {
        OwnNat { public_port: None }
    }

    /// A node with a free host UDP port forwarded to its WireGuard port.
    pub fn public() -> anyhow::Result<OwnNat> {
        Ok(OwnNat {
            public_port: Some(free_udp_port()?),
        })
    }

    /// The WireGuard endpoint other guests reach this node at
    /// (`10.0.2.2:PORT`; what it claims as `[enroll] endpoint`), if public.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.public_port.map(|p| SocketAddr::from((HOST_IP, p)))
    }

    /// The node's one card: its NAT with the enroll forward and, if
    /// public, the UDP port forward (bound to the host's loopback only).
    pub fn nic(&self, host: &HostServices) -> Nic {
        let mut options = host.nat_options();
        if let Some(p) = self.public_port {
            options.push(format!("hostfwd=udp:127.0.0.1:{p}-:{WG_PORT}"));
        }
        Nic {
            mac: None,
            backends: vec![NetBackend::User { options }],
        }
    }

    /// Replaces `vm`'s network with [`OwnNat::nic`].
    pub fn attach(&self, host: &HostServices, vm: &mut Vm) {
        vm.user_net = false;
        vm.user_net_options.clear();
        vm.nics = vec![self.nic(host)];
    }
}

/// Several VMs on one Ethernet segment behind one NAT: the owner's QEMU
/// holds the NAT and a hub, each member is linked to that hub by a pair of
/// host UDP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSegment {
    /// Per member: (the owner's end, the member's end) of its link.
    pub links: Vec<(SocketAddr, SocketAddr)>,
}

impl SharedSegment {
    /// A segment for `members` VMs besides the owner, with free host UDP
    /// ports for every link end.
    pub fn new(members: usize) -> anyhow::Result<SharedSegment> {
        let mut links = Vec::with_capacity(members);
        for _ in 0..members {
            let owner = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
            let member = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
            links.push((owner, member));
        }
        Ok(SharedSegment { links })
    }

    /// The MAC of the owner's card (0) or member `i`'s (i + 1): they share
    /// one segment and one DHCP server, so each needs its own.
    pub fn mac(index: usize) -> String {
        // 6b = 'k'; the last two bytes number the VMs on the segment from 1.
        let n = index.wrapping_add(1);
        format!("52:54:00:6b:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
    }

    /// The owner's card: on a hub with the NAT (enroll forward included)
    /// and the owner's end of every link.
    pub fn owner_nic(&self, host: &HostServices) -> Nic {
        let mut backends = vec![NetBackend::User {
            options: host.nat_options(),
        }];
        backends.extend(self.links.iter().map(|(owner, member)| NetBackend::Dgram {
            local: *owner,
            remote: *member,
        }));
        Nic {
            mac: Some(SharedSegment::mac(0)),
            backends,
        }
    }

    /// Member `i`'s card: the member's end of its link, nothing else.
    pub fn member_nic(&self, i: usize) -> anyhow::Result<Nic> {
        let Some((owner, member)) = self.links.get(i) else {
            bail!(
                "member {i} of a segment with {} members (numbered from 0)",
                self.links.len()
            );
        };
        Ok(Nic {
            mac: Some(SharedSegment::mac(i + 1)),
            backends: vec![NetBackend::Dgram {
                local: *member,
                remote: *owner,
            }],
        })
    }

    /// Replaces `vm`'s network with [`SharedSegment::owner_nic`].
    pub fn attach_owner(&self, host: &HostServices, vm: &mut Vm) {
        vm.user_net = false;
        vm.user_net_options.clear();
        vm.nics = vec![self.owner_nic(host)];
    }

    /// Replaces `vm`'s network with [`SharedSegment::member_nic`] `i`.
    pub fn attach_member(&self, i: usize, vm: &mut Vm) -> anyhow::Result<()> {
        let nic = self.member_nic(i)?;
        vm.user_net = false;
        vm.user_net_options.clear();
        vm.nics = vec![nic];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use kiln::arch::Arch;
    use kiln::qemu::Firmware;

    fn args(vm: &Vm) -> Vec<String> {
        let fw = Firmware {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        vm.args(&fw, Path::new("/vars.fd"))
    }

    fn values<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn host() -> HostServices {
        HostServices::new(Path::new("/t/kiln-tcp-relay"), 40001)
    }

    #[test]
    fn ports_are_free_and_never_handed_out_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let u = free_udp_port().unwrap();
            let t = free_tcp_port().unwrap();
            assert!(seen.insert((false, u)) && seen.insert((true, t)));
            // Free means a bind to it works now.
            UdpSocket::bind((Ipv4Addr::LOCALHOST, u)).unwrap();
            TcpListener::bind((Ipv4Addr::LOCALHOST, t)).unwrap();
        }
    }

    #[test]
    fn a_public_node_behind_its_own_nat() {
        let node = OwnNat {
            public_port: Some(45000),
        };
        let mut vm = Vm::new(Arch::X86_64, "/d.raw");
        vm.user_net_options.push("net=169.254.169.0/24".into());
        node.attach(&host(), &mut vm);
        let a = args(&vm);
        assert!(!a.iter().any(|x| x == "-nic"), "{a:?}");
        assert_eq!(
            values(&a, "-netdev"),
            [
                "user,id=nic0,guestfwd=tcp:10.0.2.100:8443-cmd:/t/kiln-tcp-relay 127.0.0.1:40001,\
              hostfwd=udp:127.0.0.1:45000-:51820"
            ]
        );
        assert_eq!(
            values(&a, "-device"),
            ["virtio-rng-pci", "virtio-net-pci,netdev=nic0"]
        );
        assert_eq!(node.endpoint(), Some("10.0.2.2:45000".parse().unwrap()));
        assert_eq!(enroll_url(), "https://10.0.2.100:8443");
    }

    #[test]
    fn a_private_node_forwards_nothing_to_itself() {
        let node = OwnNat::private();
        assert_eq!(node.endpoint(), None);
        let nic = node.nic(&host());
        let [NetBackend::User { options }] = nic.backends.as_slice() else {
            panic!("{nic:?}");
        };
        assert!(
            !options.iter().any(|o| o.starts_with("hostfwd")),
            "{options:?}"
        );
        assert!(options[0].starts_with("guestfwd=tcp:10.0.2.100:8443-cmd:"));
        let public = OwnNat::public().unwrap();
        assert!(public.public_port.is_some_and(|p| p != 0));
    }

    #[test]
    fn commas_in_the_relay_path_are_doubled() {
        let h = HostServices::new(Path::new("/t/a,b/relay"), 1);
        assert_eq!(
            h.nat_options(),
            ["guestfwd=tcp:10.0.2.100:8443-cmd:/t/a,,b/relay 127.0.0.1:1"]
        );
    }

    #[test]
    fn the_segment_links_owner_and_members_crosswise() {
        let seg = SharedSegment::new(2).unwrap();
        let ports: BTreeSet<u16> = seg
            .links
            .iter()
            .flat_map(|(o, m)| [o.port(), m.port()])
            .collect();
        assert_eq!(ports.len(), 4, "{seg:?}");

        let mut owner = Vm::new(Arch::X86_64, "/d.raw");
        seg.attach_owner(&host(), &mut owner);
        let a = args(&owner);
        let netdevs = values(&a, "-netdev");
        let (o0, m0) = seg.links[0];
        let (o1, m1) = seg.links[1];
        let link = |id: &str, l: SocketAddr, r: SocketAddr| {
            format!(
                "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                l.port(),
                r.port()
            )
        };
        assert_eq!(
            netdevs,
            [
                "user,id=nic0b0,guestfwd=tcp:10.0.2.100:8443-cmd:/t/kiln-tcp-relay 127.0.0.1:40001"
                    .to_string(),
                "hubport,id=nic0p0,hubid=0,netdev=nic0b0".into(),
                link("nic0b1", o0, m0),
                "hubport,id=nic0p1,hubid=0,netdev=nic0b1".into(),
                link("nic0b2", o1, m1),
                "hubport,id=nic0p2,hubid=0,netdev=nic0b2".into(),
                "hubport,id=nic0,hubid=0".into(),
            ]
        );
        assert!(values(&a, "-device").contains(&"virtio-net-pci,netdev=nic0,mac=52:54:00:6b:00:01"));

        let mut member = Vm::new(Arch::Arm64, "/d.raw");
        seg.attach_member(1, &mut member).unwrap();
        let a = args(&member);
        assert_eq!(values(&a, "-netdev"), [link("nic0", m1, o1)]);
        assert!(values(&a, "-device").contains(&"virtio-net-pci,netdev=nic0,mac=52:54:00:6b:00:03"));
        let err = seg.attach_member(2, &mut member).unwrap_err().to_string();
        assert!(
            err.contains("member 2 of a segment with 2 members"),
            "{err}"
        );
    }

    #[test]
    fn the_nat_address_is_the_one_in_10_0_2() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   3: kiln0    inet 10.77.0.5/16 scope global kiln0\\       valid_lft forever\n\
                   2: enp0s2    inet 10.0.2.16/24 metric 1024 brd 10.0.2.255 scope global dynamic enp0s2\\ \n";
        assert_eq!(nat_address(out), Some(Ipv4Addr::new(10, 0, 2, 16)));
        assert_eq!(
            nat_address("1: lo    inet 127.0.0.1/8 scope host lo\n"),
            None
        );
    }

    #[test]
    fn macs_differ_on_a_segment() {
        let macs: BTreeSet<String> = (0..300).map(SharedSegment::mac).collect();
        assert_eq!(macs.len(), 300);
        assert!(macs
            .iter()
            .all(|m| m.starts_with("52:54:00:6b:") && m.len() == 17));
    }
}
