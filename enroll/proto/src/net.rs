//! Address prefixes (`10.77.0.0/16`, `fd12:3456:789a::5/128`) as they travel in JSON.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address with a prefix length. The address may have host bits set (a node's
/// `10.77.0.5/16`); [`IpNet::network`] clears them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl IpNet {
    /// A prefix; None when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<IpNet> {
        (len <= max_len(addr)).then_some(IpNet { addr, len })
    }

    /// The single address `addr/32` or `addr/128`.
    pub fn host(addr: IpAddr) -> IpNet {
        IpNet {
            addr,
            len: max_len(addr),
        }
    }

    /// The prefix with host bits cleared.
    pub fn network(&self) -> IpNet {
        IpNet {
            addr: mask(self.addr, self.len),
            len: self.len,
        }
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && mask(ip, self.len) == mask(self.addr, self.len)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let len = self.len.min(other.len);
        mask(self.addr, len) == mask(other.addr, len)
    }

    /// Whether this is a default route (`0.0.0.0/0`, `::/0`) .
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<IpNet, String> {
        let (a, l) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX (e.g. 10.77.0.0/16)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} in {text:?} is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("prefix length {l:?} in {text:?} is not a number"))?;
        IpNet::new(addr, len).ok_or_else(|| {
            format!(
                "prefix length {len} in {text:?} is longer than {}",
                max_len(addr)
            )
        })
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The IPv6 ULA /48 of an overlay, derived from its CA's SPKI hash so that two kiln-enroll
/// installations do not pick the same prefix: `fd` + 40 bits of
/// sha256("kiln-ula:" + spki_hash).
pub fn ula_prefix(ca_hash: &[u8; 32]) -> IpNet {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"kiln-ula:");
    h.update(ca_hash);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    b[1..6].copy_from_slice(&d[..5]);
    IpNet {
        addr: IpAddr::V6(Ipv6Addr::from(b)),
        len: 48,
    }
}

/// Host number `offset` inside `net` (the network address plus `offset`); None when it
/// does not fit.
pub fn nth_host(net: &IpNet, offset: u128) -> Option<IpAddr> {
    let base = net.network();
    let host_bits = u32::from(max_len(base.addr) - base.len);
    if host_bits < 128 && offset >> host_bits != 0 {
        return None;
    }
    Some(match base.addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a).checked_add(u32::try_from(offset).ok()?)?,
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).checked_add(offset)?)),
    })
}

/// The offset of `ip` inside `net` (inverse of [`nth_host`]).
pub fn host_offset(net: &IpNet, ip: IpAddr) -> Option<u128> {
    if !net.contains(ip) {
        return None;
    }
    Some(match (net.network().addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => u128::from(u32::from(a) - u32::from(n)),
        (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) - u128::from(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parse_contains_overlap() {
        let pool = n("10.77.0.0/16");
        assert!(pool.contains("10.77.255.1".parse().unwrap()));
        assert!(!pool.contains("10.78.0.1".parse().unwrap()));
        assert!(!pool.contains("::1".parse().unwrap()));
        assert!(pool.overlaps(&n("10.0.0.0/8")));
        assert!(pool.overlaps(&n("10.77.3.4/32")));
        assert!(!pool.overlaps(&n("10.42.0.0/16")));
        assert!(n("0.0.0.0/0").is_default());
        assert_eq!(n("10.77.1.2/16").network(), pool);
        assert!(n("fd00::/8").contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/a", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nth_host_and_offset_are_inverse() {
        let pool = n("10.77.0.0/16");
        let ip = nth_host(&pool, 258).unwrap();
        assert_eq!(ip.to_string(), "10.77.1.2");
        assert_eq!(host_offset(&pool, ip), Some(258));
        assert_eq!(nth_host(&pool, 65536), None);
        let ula = ula_prefix(&[1; 32]);
        assert_eq!(ula.len, 48);
        assert!(ula.to_string().starts_with("fd"));
        let v6 = nth_host(&IpNet { len: 64, ..ula }, 258).unwrap();
        assert!(v6.to_string().ends_with("::102"), "{v6}");
    }
}
