//! rtnetlink messages (uapi linux/rtnetlink.h, if_link.h, if_addr.h): links, addresses,
//! route lookups. Encoders return whole messages (seq 0); decoders take the payload after
//! the `nlmsghdr`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::attr::{
    parse_attrs, Attr, DecodeError, EncodeError, MsgBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use super::Prefix;

pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
pub(crate) const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_GETROUTE: u16 = 26;

pub(crate) const AF_UNSPEC: u8 = 0;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

pub(crate) const IFF_UP: u32 = 0x1;

pub(crate) const IFLA_IFNAME: u16 = 3;
pub(crate) const IFLA_MTU: u16 = 4;
pub(crate) const IFLA_LINKINFO: u16 = 18;
pub(crate) const IFLA_INFO_KIND: u16 = 1;

pub(crate) const IFA_ADDRESS: u16 = 1;
pub(crate) const IFA_LOCAL: u16 = 2;
/// Overlay addresses are allocated uniquely by the server: duplicate address detection
/// would only delay them.
pub(crate) const IFA_F_NODAD: u8 = 0x02;

pub(crate) const RTA_DST: u16 = 1;
pub(crate) const RTA_OIF: u16 = 4;
pub(crate) const RTA_METRICS: u16 = 8;
pub(crate) const RTAX_MTU: u16 = 2;

/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32, change u32.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = AF_UNSPEC;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `struct ifaddrmsg`: family u8, prefixlen u8, flags u8, scope u8, index u32.
fn ifaddrmsg(family: u8, prefixlen: u8, flags: u8, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = family;
    h[1] = prefixlen;
    h[2] = flags;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn family_of(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// RTM_GETLINK for one interface by name.
pub(crate) fn get_link_by_name(name: &str) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&ifinfomsg(0, 0, 0));
    b.attr_str(IFLA_IFNAME, name);
    b.finish()
}

/// RTM_GETLINK for one interface by index.
pub(crate) fn get_link_by_index(index: u32) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&ifinfomsg(index, 0, 0));
    b.finish()
}

/// RTM_NEWLINK creating interface `name` of `kind` ("wireguard"); fails if it exists.
pub(crate) fn new_link(name: &str, kind: &str) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    b.header(&ifinfomsg(0, 0, 0));
    b.attr_str(IFLA_IFNAME, name);
    let info = b.begin_nested(IFLA_LINKINFO);
    b.attr_str(IFLA_INFO_KIND, kind);
    b.end_nested(info);
    b.finish()
}

/// RTM_SETLINK setting the MTU and IFF_UP (only that flag is changed).
pub(crate) fn set_link_mtu_up(index: u32, mtu: u32) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&ifinfomsg(index, IFF_UP, IFF_UP));
    b.attr_u32(IFLA_MTU, mtu);
    b.finish()
}

/// RTM_GETADDR dump of every address of both families.
pub(crate) fn get_addr_dump() -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
    b.header(&ifaddrmsg(AF_UNSPEC, 0, 0, 0));
    b.finish()
}

/// RTM_NEWADDR: IPv4 gets IFA_LOCAL and IFA_ADDRESS (same value: not point-to-point),
/// IPv6 gets IFA_ADDRESS and IFA_F_NODAD.
pub(crate) fn new_addr(index: u32, p: Prefix) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    let bytes = addr_bytes(p.addr);
    match p.addr {
        IpAddr::V4(_) => {
            b.header(&ifaddrmsg(AF_INET, p.len, 0, index));
            b.attr(IFA_LOCAL, &bytes);
            b.attr(IFA_ADDRESS, &bytes);
        }
        IpAddr::V6(_) => {
            b.header(&ifaddrmsg(AF_INET6, p.len, IFA_F_NODAD, index));
            b.attr(IFA_ADDRESS, &bytes);
        }
    }
    b.finish()
}

/// RTM_DELADDR echoing the attributes the dump reported, so the kernel matches exactly
/// that address.
pub(crate) fn del_addr(e: &AddrEntry) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&ifaddrmsg(
        family_of(e.prefix.addr),
        e.prefix.len,
        0,
        e.index,
    ));
    if let Some(l) = e.local {
        b.attr(IFA_LOCAL, &addr_bytes(l));
    }
    if let Some(a) = e.address {
        b.attr(IFA_ADDRESS, &addr_bytes(a));
    }
    b.finish()
}

/// RTM_GETROUTE: the route the kernel would use to send to `dest`.
pub(crate) fn get_route(dest: IpAddr) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags u32
    let mut h = [0u8; 12];
    h[0] = family_of(dest);
    h[1] = if dest.is_ipv4() { 32 } else { 128 };
    b.header(&h);
    b.attr(RTA_DST, &addr_bytes(dest));
    b.finish()
}

/// A link as RTM_NEWLINK (the GETLINK reply) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub flags: u32,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    /// IFLA_INFO_KIND ("wireguard", "bridge"); None for plain devices such as lo.
    pub kind: Option<String>,
}

fn fixed<const N: usize>(payload: &[u8], what: &str) -> Result<[u8; N], DecodeError> {
    payload
        .get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| DecodeError::new(format!("{what} shorter than {N} bytes")))
}

fn rest(payload: &[u8], n: usize) -> &[u8] {
    payload.get(super::attr::align(n)..).unwrap_or(&[])
}

pub(crate) fn decode_link(payload: &[u8]) -> Result<Link, DecodeError> {
    let h: [u8; 16] = fixed(payload, "ifinfomsg")?;
    let index = i32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let index = u32::try_from(index)
        .map_err(|_| DecodeError::new(format!("negative interface index {index}")))?;
    let mut link = Link {
        index,
        flags: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
        name: None,
        mtu: None,
        kind: None,
    };
    for a in parse_attrs(rest(payload, 16))? {
        match a.ty {
            IFLA_IFNAME => link.name = Some(a.string()?),
            IFLA_MTU => link.mtu = Some(a.u32()?),
            IFLA_LINKINFO => {
                for i in a.nested()? {
                    if i.ty == IFLA_INFO_KIND {
                        link.kind = Some(i.string()?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// One address of the RTM_GETADDR dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrEntry {
    pub index: u32,
    /// IFA_LOCAL when present (the interface's own address), else IFA_ADDRESS.
    pub prefix: Prefix,
    pub local: Option<IpAddr>,
    pub address: Option<IpAddr>,
}

fn decode_ip(family: u8, a: &Attr<'_>) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => {
            let b: [u8; 4] = a
                .data
                .try_into()
                .map_err(|_| DecodeError::new(format!("IPv4 address of {} bytes", a.data.len())))?;
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        _ => {
            let b: [u8; 16] = a
                .data
                .try_into()
                .map_err(|_| DecodeError::new(format!("IPv6 address of {} bytes", a.data.len())))?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
    }
}

/// Ok(None) for families other than IPv4/IPv6.
pub(crate) fn decode_addr(payload: &[u8]) -> Result<Option<AddrEntry>, DecodeError> {
    let h: [u8; 8] = fixed(payload, "ifaddrmsg")?;
    let (family, len) = (h[0], h[1]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let (mut local, mut address) = (None, None);
    for a in parse_attrs(rest(payload, 8))? {
        match a.ty {
            IFA_LOCAL => local = Some(decode_ip(family, &a)?),
            IFA_ADDRESS => address = Some(decode_ip(family, &a)?),
            _ => {}
        }
    }
    let addr = local
        .or(address)
        .ok_or_else(|| DecodeError::new("address message without IFA_LOCAL or IFA_ADDRESS"))?;
    let prefix = Prefix { addr, len };
    if len > prefix.max_len() {
        return Err(DecodeError::new(format!("prefix length {len} for {addr}")));
    }
    Ok(Some(AddrEntry {
        index,
        prefix,
        local,
        address,
    }))
}

/// The parts of the RTM_GETROUTE answer the path MTU needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub oif: Option<u32>,
    /// RTAX_MTU from RTA_METRICS (a route `mtu` or a learned path MTU); 0 counts as unset.
    pub mtu: Option<u32>,
}

pub(crate) fn decode_route(payload: &[u8]) -> Result<Route, DecodeError> {
    let _: [u8; 12] = fixed(payload, "rtmsg")?;
    let mut r = Route {
        oif: None,
        mtu: None,
    };
    for a in parse_attrs(rest(payload, 12))? {
        match a.ty {
            RTA_OIF => r.oif = Some(a.u32()?),
            RTA_METRICS => {
                for m in a.nested()? {
                    if m.ty == RTAX_MTU {
                        r.mtu = Some(m.u32()?).filter(|v| *v > 0);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// IPv6 link-local (fe80::/10): the kernel manages it, `replace_addresses` leaves it.
pub(crate) fn is_link_local_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

/// What `replace_addresses` changes: remove first (a changed prefix length is a remove
/// plus an add), then add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrPlan {
    pub remove: Vec<Prefix>,
    pub add: Vec<Prefix>,
}

pub(crate) fn plan_addresses(current: &[Prefix], desired: &[Prefix]) -> AddrPlan {
    let want: BTreeSet<Prefix> = desired.iter().copied().collect();
    let have: BTreeSet<Prefix> = current
        .iter()
        .copied()
        .filter(|p| !is_link_local_v6(p.addr))
        .collect();
    AddrPlan {
        remove: have.difference(&want).copied().collect(),
        add: want
            .iter()
            .copied()
            .filter(|p| !current.contains(p))
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::attr::{parse_messages, NLMSG_HDRLEN};
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn hdr(len: u32, ty: u16, flags: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn new_link_wireguard_bytes() {
        let m = new_link("kiln0", "wireguard").unwrap();
        // IFLA_IFNAME "kiln0\0" (len 10, padded 12); IFLA_LINKINFO nested (0x8012) holding
        // IFLA_INFO_KIND "wireguard\0" (len 14, padded 16): 4 + 16 = 20.
        let mut want = hdr(16 + 16 + 12 + 20, 16, 0x1 | 0x4 | 0x400 | 0x200);
        want.extend_from_slice(&[0; 16]);
        want.extend(nla(3, b"kiln0\0"));
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&0x8012u16.to_ne_bytes());
        want.extend(nla(1, b"wireguard\0"));
        assert_eq!(m, want);
    }

    #[test]
    fn setlink_mtu_up_bytes() {
        let m = set_link_mtu_up(7, 1420).unwrap();
        let mut want = hdr(16 + 16 + 8, 19, 0x5);
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&7i32.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes()); // ifi_flags IFF_UP
        want.extend_from_slice(&1u32.to_ne_bytes()); // ifi_change IFF_UP
        want.extend(nla(4, &1420u32.to_ne_bytes()));
        assert_eq!(m, want);
    }

    #[test]
    fn getlink_and_getaddr_bytes() {
        let m = get_link_by_name("lo").unwrap();
        let mut want = hdr(16 + 16 + 8, 18, 0x5);
        want.extend_from_slice(&[0; 16]);
        want.extend(nla(3, b"lo\0"));
        assert_eq!(m, want);
        let m = get_link_by_index(3).unwrap();
        let mut want = hdr(32, 18, 0x5);
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        assert_eq!(m, want);
        let m = get_addr_dump().unwrap();
        let mut want = hdr(24, 22, 0x301);
        want.extend_from_slice(&[0; 8]);
        assert_eq!(m, want);
    }

    #[test]
    fn newaddr_bytes_v4_v6() {
        let m = new_addr(5, p("10.77.0.5/16")).unwrap();
        let mut want = hdr(16 + 8 + 8 + 8, 20, 0x605);
        want.extend_from_slice(&[2, 16, 0, 0]);
        want.extend_from_slice(&5u32.to_ne_bytes());
        want.extend(nla(2, &[10, 77, 0, 5]));
        want.extend(nla(1, &[10, 77, 0, 5]));
        assert_eq!(m, want);

        let m = new_addr(5, p("fd00::5/64")).unwrap();
        let mut want = hdr(16 + 8 + 20, 20, 0x605);
        want.extend_from_slice(&[10, 64, 2, 0]);
        want.extend_from_slice(&5u32.to_ne_bytes());
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 5;
        want.extend(nla(1, &a));
        assert_eq!(m, want);
    }

    #[test]
    fn deladdr_echoes_dump() {
        let e = AddrEntry {
            index: 9,
            prefix: p("192.168.1.2/24"),
            local: Some("192.168.1.2".parse().unwrap()),
            address: Some("192.168.1.2".parse().unwrap()),
        };
        let m = del_addr(&e).unwrap();
        let mut want = hdr(40, 21, 0x5);
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend(nla(2, &[192, 168, 1, 2]));
        want.extend(nla(1, &[192, 168, 1, 2]));
        assert_eq!(m, want);
    }

    #[test]
    fn getroute_bytes() {
        let m = get_route("127.0.0.1".parse().unwrap()).unwrap();
        let mut want = hdr(16 + 12 + 8, 26, 0x5);
        want.extend_from_slice(&[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(nla(1, &[127, 0, 0, 1]));
        assert_eq!(m, want);
    }

    /// An RTM_NEWLINK reply as the kernel lays it out (ifinfomsg + attributes).
    fn link_reply() -> Vec<u8> {
        let mut v = vec![0, 0, 0x04, 0x03]; // family, pad, type ARPHRD_? (ignored)
        v.extend_from_slice(&4i32.to_ne_bytes());
        v.extend_from_slice(&0x10049u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend(nla(3, b"kiln0\0"));
        v.extend(nla(4, &1420u32.to_ne_bytes()));
        let kind = nla(1, b"wireguard\0");
        let mut li = Vec::new();
        li.extend_from_slice(&((4 + kind.len()) as u16).to_ne_bytes());
        li.extend_from_slice(&18u16.to_ne_bytes()); // the kernel does not set NLA_F_NESTED
        li.extend(kind);
        v.extend(li);
        v.extend(nla(99, &[1, 2, 3])); // unknown attributes are skipped
        v
    }

    #[test]
    fn decode_link_reply() {
        let l = decode_link(&link_reply()).unwrap();
        assert_eq!(
            l,
            Link {
                index: 4,
                flags: 0x10049,
                name: Some("kiln0".into()),
                mtu: Some(1420),
                kind: Some("wireguard".into())
            }
        );
    }

    fn addr_reply(family: u8, len: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut v = vec![family, len, 0x80, 0];
        v.extend_from_slice(&3u32.to_ne_bytes());
        for (t, d) in attrs {
            v.extend(nla(*t, d));
        }
        v
    }

    #[test]
    fn decode_addr_replies() {
        let e = decode_addr(&addr_reply(
            2,
            8,
            &[(1, &[10, 0, 0, 9]), (2, &[10, 0, 0, 1])],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            e.prefix,
            p("10.0.0.1/8"),
            "IFA_LOCAL wins over IFA_ADDRESS (peer)"
        );
        assert_eq!(e.index, 3);
        assert_eq!(e.address, Some("10.0.0.9".parse().unwrap()));
        let mut a = [0u8; 16];
        a[0] = 0xfe;
        a[1] = 0x80;
        a[15] = 1;
        let e = decode_addr(&addr_reply(10, 64, &[(1, &a)]))
            .unwrap()
            .unwrap();
        assert_eq!(e.prefix, p("fe80::1/64"));
        assert!(is_link_local_v6(e.prefix.addr));
        assert_eq!(decode_addr(&addr_reply(17, 0, &[])).unwrap(), None);
        assert!(decode_addr(&addr_reply(2, 8, &[])).is_err());
        assert!(decode_addr(&addr_reply(2, 33, &[(2, &[1, 2, 3, 4])])).is_err());
        assert!(decode_addr(&addr_reply(2, 8, &[(2, &[1, 2, 3])])).is_err());
        assert!(decode_addr(&addr_reply(10, 8, &[(2, &[1, 2, 3, 4])])).is_err());
    }

    fn route_reply() -> Vec<u8> {
        let mut v = vec![2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0];
        v.extend(nla(15, &254u32.to_ne_bytes()));
        v.extend(nla(1, &[10, 0, 0, 1]));
        v.extend(nla(4, &2u32.to_ne_bytes()));
        let mtu = nla(2, &1300u32.to_ne_bytes());
        let mut m = Vec::new();
        m.extend_from_slice(&((4 + mtu.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend(mtu);
        v.extend(m);
        v
    }

    #[test]
    fn decode_route_reply() {
        let v = route_reply();
        assert_eq!(
            decode_route(&v).unwrap(),
            Route {
                oif: Some(2),
                mtu: Some(1300)
            }
        );
        assert_eq!(
            decode_route(&v[..12]).unwrap(),
            Route {
                oif: None,
                mtu: None
            }
        );
        assert!(decode_route(&v[..8]).is_err());
    }

    #[test]
    fn plans() {
        let cur = [
            p("10.77.0.5/16"),
            p("192.168.9.9/24"),
            p("fe80::1/64"),
            p("fd00::5/64"),
        ];
        let plan = plan_addresses(&cur, &[p("10.77.0.5/16"), p("fd00::5/48")]);
        assert_eq!(plan.remove, vec![p("192.168.9.9/24"), p("fd00::5/64")]);
        assert_eq!(plan.add, vec![p("fd00::5/48")]);
        let plan = plan_addresses(&cur, &cur);
        assert!(plan.remove.is_empty() && plan.add.is_empty());
        let plan = plan_addresses(&[], &[p("10.0.0.1/8"), p("10.0.0.1/8")]);
        assert_eq!(plan.add, vec![p("10.0.0.1/8")]);
    }

    /// xorshift64: deterministic mutations without a rand dependency.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    pub(crate) fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        match rng.next() % 4 {
            0 => v.truncate((rng.next() as usize) % (base.len() + 1)),
            1 => {
                for _ in 0..1 + rng.next() % 4 {
                    if !v.is_empty() {
                        let i = (rng.next() as usize) % v.len();
                        v[i] = rng.next() as u8;
                    }
                }
            }
            2 => {
                let i = (rng.next() as usize) % (v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            _ => {
                if !v.is_empty() {
                    let i = (rng.next() as usize) % v.len();
                    v[i] = [0, 1, 3, 4, 0xff][(rng.next() % 5) as usize];
                }
            }
        }
        v
    }

    #[test]
    fn mutated_replies_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let link = link_reply();
        let addr = addr_reply(2, 8, &[(1, &[10, 0, 0, 9]), (2, &[10, 0, 0, 1])]);
        let route = route_reply();
        let mut whole = hdr((NLMSG_HDRLEN + link.len()) as u32, 16, 2);
        whole.extend(&link);
        let mut errors = 0;
        for _ in 0..20_000 {
            errors += decode_link(&mutate(&mut rng, &link)).is_err() as u32;
            errors += decode_addr(&mutate(&mut rng, &addr)).is_err() as u32;
            errors += decode_route(&mutate(&mut rng, &route)).is_err() as u32;
            if let Ok(msgs) = parse_messages(&mutate(&mut rng, &whole)) {
                for m in msgs {
                    let _ = decode_link(m.payload);
                }
            }
        }
        for n in 0..link.len() {
            let _ = decode_link(&link[..n]);
        }
        assert!(errors > 0, "the mutations reached the error paths");
    }
}
