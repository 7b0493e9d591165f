//! Kernel networking for the overlay: kernel WireGuard over generic netlink, links,
//! addresses and routes over rtnetlink, the nftables MSS clamp and sysctls.
//!
//! The netlink messages are encoded and decoded by hand (`attr`, `rtnl`, `genl`: pure
//! functions, unit-tested against the uapi byte layouts); `real` owns the sockets. The
//! overlay only sees the [`Net`] trait, so its tests use a fake.

mod attr;
mod genl;
mod nft;
mod real;
mod rtnl;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

// Unused until the overlay imports them (see the dead_code note above).
#[allow(unused_imports)]
pub use nft::mss_clamp_rules;
#[allow(unused_imports)]
pub use real::RealNet;

/// The kernel's errno values (re-exported so callers can match on [`NetError::errno`]).
pub use nix::errno::Errno;

/// An address with a prefix length (10.77.0.5/16, fd00::5/64, 0.0.0.0/0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// The address; host bits are kept (an interface address is not a network).
    pub addr: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl Prefix {
    /// The largest prefix length for this address family.
    pub fn max_len(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Checks the length against the family.
    pub fn validate(&self) -> Result<(), NetError> {
        if self.len > self.max_len() {
            return Err(NetError::Invalid {
                what: format!(
                    "prefix {}/{}: length above {} for this address family",
                    self.addr,
                    self.len,
                    self.max_len()
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = NetError;

    /// Parses `ADDR/LEN`; a bare address means a host prefix (/32, /128).
    fn from_str(s: &str) -> Result<Prefix, NetError> {
        let bad = || NetError::Invalid {
            what: format!("prefix {s:?}: expected ADDRESS/LENGTH such as 10.77.0.5/16"),
        };
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len = match l {
            Some(l) => l.parse::<u8>().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        let p = Prefix { addr, len };
        p.validate()?;
        Ok(p)
    }
}

/// One peer as we want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// The peer's Curve25519 public key.
    pub public_key: [u8; 32],
    /// None: leave the kernel's current endpoint alone (it learns roaming peers itself).
    pub endpoint: Option<SocketAddr>,
    /// The addresses routed to this peer.
    pub allowed_ips: Vec<Prefix>,
    /// Seconds, 0 = off.
    pub keepalive: u16,
}

/// A change to a device's peer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOp {
    /// Create or update; allowed IPs are replaced by the given list.
    Upsert(WgPeer),
    /// Remove the peer.
    Remove([u8; 32]),
}

/// A peer as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerState {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Where the kernel currently sends this peer's packets.
    pub endpoint: Option<SocketAddr>,
    /// The addresses routed to this peer.
    pub allowed_ips: Vec<Prefix>,
    /// Unix seconds of the last completed handshake; None if never.
    pub last_handshake: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive in seconds, 0 = off.
    pub keepalive: u16,
}

/// A WireGuard device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDevice {
    /// The interface index.
    pub ifindex: u32,
    /// None until a private key is set.
    pub public_key: Option<[u8; 32]>,
    /// The UDP port (the kernel picks one when 0 was asked for).
    pub listen_port: u16,
    /// The peers, in the kernel's order.
    pub peers: Vec<WgPeerState>,
}

/// What went wrong, with the operation and the kernel's errno text.
#[derive(Debug)]
pub enum NetError {
    /// The kernel answered a request with an errno.
    Kernel {
        /// What was asked, naming the interface (e.g. "create interface kiln0").
        op: String,
        /// The kernel's answer.
        errno: Errno,
        /// What to do about it, when the errno has a usual cause.
        hint: Option<&'static str>,
    },
    /// A socket call (socket, bind, send, recv) failed.
    Socket {
        /// The call and the operation it served.
        op: String,
        /// The error.
        errno: Errno,
    },
    /// A kernel reply did not have the layout the uapi headers describe.
    Malformed {
        /// The operation whose reply it was.
        op: String,
        /// What was wrong with it.
        detail: String,
    },
    /// An argument this module cannot use (interface name, prefix, sysctl key).
    Invalid {
        /// The value and what is wrong with it.
        what: String,
    },
    /// A file or program could not be used.
    Io {
        /// The file or program.
        path: PathBuf,
        /// What was being done.
        op: String,
        /// The error.
        error: std::io::Error,
    },
    /// A program ran and failed.
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// Its error output.
        stderr: String,
    },
}

impl NetError {
    /// The errno, when the kernel or a socket call gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetError::Kernel { errno, .. } | NetError::Socket { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Kernel { op, errno, hint } => {
                write!(f, "{op}: kernel said {errno}")?;
                if let Some(h) = hint {
                    write!(f, " ({h})")?;
                }
                Ok(())
            }
            NetError::Socket { op, errno } => write!(f, "netlink socket: {op}: {errno}"),
            NetError::Malformed { op, detail } => {
                write!(f, "{op}: malformed kernel reply: {detail}")
            }
            NetError::Invalid { what } => f.write_str(what),
            NetError::Io { path, op, error } => write!(f, "{op} {}: {error}", path.display()),
            NetError::Command {
                command,
                status,
                stderr,
            } => {
                write!(f, "{command} failed ({status}): {}", stderr.trim())
            }
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Everything the overlay does to the kernel's network: netlink in real life, a fake in
/// the overlay's unit tests.
pub trait Net {
    /// Creates WireGuard interface `ifname` unless it exists; returns its ifindex.
    fn ensure_wireguard(&mut self, ifname: &str) -> Result<u32, NetError>;
    /// Sets the MTU and brings the link up.
    fn set_mtu_up(&mut self, ifname: &str, mtu: u32) -> Result<(), NetError>;
    /// Makes `addrs` exactly the interface's addresses (adds missing, removes others,
    /// IPv6 link-local excepted), so the connected routes cover the overlay pool.
    fn replace_addresses(&mut self, ifname: &str, addrs: &[Prefix]) -> Result<(), NetError>;
    /// Sets private key and listen port and applies peer changes in one
    /// WG_CMD_SET_DEVICE (split into several messages when it does not fit one).
    fn set_wireguard(
        &mut self,
        ifname: &str,
        private_key: &[u8; 32],
        listen_port: u16,
        ops: &[PeerOp],
    ) -> Result<(), NetError>;
    /// The device and its peers (WG_CMD_GET_DEVICE, multipart dump).
    fn wireguard(&mut self, ifname: &str) -> Result<WgDevice, NetError>;
    /// The MTU of the path to `dest`: the output interface's MTU (RTM_GETROUTE, then the
    /// route's RTAX_MTU if set, else the link's MTU), with the interface name.
    fn path_mtu(&mut self, dest: IpAddr) -> Result<(String, u32), NetError>;
    /// Applies an nftables ruleset text atomically (`nft -f -`), e.g. [`mss_clamp_rules`].
    fn apply_nft(&mut self, ruleset: &str) -> Result<(), NetError>;
    /// Writes a sysctl under /proc/sys (e.g. net/ipv4/conf/kiln0/send_redirects = 0).
    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetError>;
}

/// Checks an interface name the way the kernel does (1-15 bytes, not "." or "..", no
/// '/', ':' or whitespace), and also refuses quotes, backslashes and control characters
/// so the name can be put into an nftables ruleset as a quoted string.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let bad = |why: &str| {
        Err(NetError::Invalid {
            what: format!("interface name {name:?}: {why}"),
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '"' | '\\') || c.is_whitespace() || c.is_control())
    {
        return bad(&format!("must not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parse_and_display() {
        let p: Prefix = "10.77.0.5/16".parse().unwrap();
        assert_eq!(
            p,
            Prefix {
                addr: "10.77.0.5".parse().unwrap(),
                len: 16
            }
        );
        assert_eq!(p.to_string(), "10.77.0.5/16");
        let p: Prefix = "fd00::5".parse().unwrap();
        assert_eq!(p.len, 128);
        assert!("10.0.0.1/33".parse::<Prefix>().is_err());
        assert!("fd00::/129".parse::<Prefix>().is_err());
        assert!("x/1".parse::<Prefix>().is_err());
        assert!("10.0.0.1/".parse::<Prefix>().is_err());
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("kiln0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\"b",
            "a\nb",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert!(e.to_string().contains("interface name"), "{e}");
        }
    }

    #[test]
    fn kernel_error_names_op_and_errno() {
        let e = NetError::Kernel {
            op: "create interface kiln0".into(),
            errno: Errno::EEXIST,
            hint: Some("delete it"),
        };
        let s = e.to_string();
        assert!(
            s.contains("kiln0") && s.contains("EEXIST") && s.contains("File exists"),
            "{s}"
        );
        assert_eq!(e.errno(), Some(Errno::EEXIST));
    }
}
