//! Where a request comes from, as the limits count it: an IPv4 address, or the /64 an
//! IPv6 address is in. One IPv6 host usually holds a whole /64 and can pick any address in
//! it, so counting single IPv6 addresses would let it escape every per-source limit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One source for the per-source connection cap and the failure limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// An IPv4 address (an IPv4-mapped IPv6 address counts as its IPv4 address).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
                Some(v4) => Source::V4(v4),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(net)
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6(net) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(net);
                write!(f, "{}/64", Ipv6Addr::from(full))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::from(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.7"), source("192.0.2.7"));
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(source("192.0.2.7").to_string(), "192.0.2.7");
    }
}
