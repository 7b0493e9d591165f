//! Generic netlink (uapi linux/genetlink.h) and the WireGuard family on it (uapi
//! linux/wireguard.h): family lookup, WG_CMD_SET_DEVICE split into messages that fit,
//! WG_CMD_GET_DEVICE dump decoding with peers coalesced across messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::attr::{
    parse_attrs, Attr, DecodeError, EncodeError, MsgBuilder, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use super::{PeerOp, Prefix, WgDevice, WgPeer, WgPeerState};

pub(crate) const GENL_HDRLEN: usize = 4;
pub(crate) const GENL_ID_CTRL: u16 = 0x10;
pub(crate) const CTRL_CMD_GETFAMILY: u8 = 3;
pub(crate) const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub(crate) const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub(crate) const WG_GENL_NAME: &str = "wireguard";
pub(crate) const WG_GENL_VERSION: u8 = 1;
pub(crate) const WG_CMD_GET_DEVICE: u8 = 0;
pub(crate) const WG_CMD_SET_DEVICE: u8 = 1;

pub(crate) const WGDEVICE_A_IFINDEX: u16 = 1;
pub(crate) const WGDEVICE_A_IFNAME: u16 = 2;
pub(crate) const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
pub(crate) const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
pub(crate) const WGDEVICE_A_LISTEN_PORT: u16 = 6;
pub(crate) const WGDEVICE_A_PEERS: u16 = 8;

pub(crate) const WGPEER_F_REMOVE_ME: u32 = 1;
pub(crate) const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;

pub(crate) const WGPEER_A_PUBLIC_KEY: u16 = 1;
pub(crate) const WGPEER_A_FLAGS: u16 = 3;
pub(crate) const WGPEER_A_ENDPOINT: u16 = 4;
pub(crate) const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
pub(crate) const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
pub(crate) const WGPEER_A_RX_BYTES: u16 = 7;
pub(crate) const WGPEER_A_TX_BYTES: u16 = 8;
pub(crate) const WGPEER_A_ALLOWEDIPS: u16 = 9;

pub(crate) const WGALLOWEDIP_A_FAMILY: u16 = 1;
pub(crate) const WGALLOWEDIP_A_IPADDR: u16 = 2;
pub(crate) const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The size `wg` itself keeps its set messages under (a page, at most 8 KiB); well below
/// the 64 KiB an attribute length can express.
pub(crate) const WG_SET_MAX_MESSAGE: usize = 8192;

fn genl_header(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

/// CTRL_CMD_GETFAMILY for a family name.
pub(crate) fn get_family(name: &str) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&genl_header(CTRL_CMD_GETFAMILY, 1));
    b.attr_str(CTRL_ATTR_FAMILY_NAME, name);
    b.finish()
}

/// The family id from a CTRL_CMD_NEWFAMILY reply (payload after the nlmsghdr).
pub(crate) fn decode_family_id(payload: &[u8]) -> Result<u16, DecodeError> {
    let attrs = parse_attrs(payload.get(GENL_HDRLEN..).unwrap_or_default())?;
    attrs
        .iter()
        .find(|a| a.ty == CTRL_ATTR_FAMILY_ID)
        .ok_or_else(|| DecodeError::new("family reply without CTRL_ATTR_FAMILY_ID"))?
        .u16()
}

/// WG_CMD_GET_DEVICE: only valid as a dump.
pub(crate) fn wg_get_device(family: u16, ifname: &str) -> Result<Vec<u8>, EncodeError> {
    let mut b = MsgBuilder::new(family, NLM_F_REQUEST | NLM_F_DUMP);
    b.header(&genl_header(WG_CMD_GET_DEVICE, WG_GENL_VERSION));
    b.attr_str(WGDEVICE_A_IFNAME, ifname);
    b.finish()
}

/// `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes): family in host
/// order, port in network order.
pub(crate) fn sockaddr_bytes(sa: &SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    match sa {
        SocketAddr::V4(a) => {
            v.extend_from_slice(&AF_INET.to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            v.extend_from_slice(&AF_INET6.to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            // std keeps sin6_flowinfo as the raw field value, so it round-trips unswapped
            v.extend_from_slice(&a.flowinfo().to_ne_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    v
}

/// The endpoint of a peer; None for AF_UNSPEC.
pub(crate) fn decode_sockaddr(b: &[u8]) -> Result<Option<SocketAddr>, DecodeError> {
    let short = || DecodeError::new(format!("endpoint of {} bytes", b.len()));
    let family = u16::from_ne_bytes(
        b.get(0..2)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    let arr = |r: std::ops::Range<usize>| b.get(r).ok_or_else(short);
    match family {
        0 => Ok(None),
        AF_INET => {
            let port = u16::from_be_bytes(arr(2..4)?.try_into().map_err(|_| short())?);
            let ip: [u8; 4] = arr(4..8)?.try_into().map_err(|_| short())?;
            arr(0..16)?;
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(ip),
                port,
            ))))
        }
        AF_INET6 => {
            let port = u16::from_be_bytes(arr(2..4)?.try_into().map_err(|_| short())?);
            let flow = u32::from_ne_bytes(arr(4..8)?.try_into().map_err(|_| short())?);
            let ip: [u8; 16] = arr(8..24)?.try_into().map_err(|_| short())?;
            let scope = u32::from_ne_bytes(arr(24..28)?.try_into().map_err(|_| short())?);
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            ))))
        }
        f => Err(DecodeError::new(format!(
            "endpoint of unknown address family {f}"
        ))),
    }
}

/// Accumulates WG_CMD_SET_DEVICE messages, starting a new one whenever the next part
/// would push the current one past `max` bytes.
struct SetWriter<'a> {
    family: u16,
    ifname: &'a str,
    max: usize,
    msgs: Vec<Vec<u8>>,
    b: MsgBuilder,
    peers: Option<super::attr::Nest>,
    peers_start: usize,
    peers_in_msg: usize,
}

impl<'a> SetWriter<'a> {
    fn new(family: u16, ifname: &'a str, max: usize, key: &[u8; 32], port: u16) -> Self {
        let mut w = SetWriter {
            family,
            ifname,
            max,
            msgs: Vec::new(),
            b: MsgBuilder::new(family, 0),
            peers: None,
            peers_start: 0,
            peers_in_msg: 0,
        };
        w.start(Some((key, port)));
        w
    }

    /// Every message names the device; only the first sets key and port.
    fn start(&mut self, device: Option<(&[u8; 32], u16)>) {
        let mut b = MsgBuilder::new(self.family, NLM_F_REQUEST | NLM_F_ACK);
        b.header(&genl_header(WG_CMD_SET_DEVICE, WG_GENL_VERSION));
        b.attr_str(WGDEVICE_A_IFNAME, self.ifname);
        if let Some((key, port)) = device {
            b.attr(WGDEVICE_A_PRIVATE_KEY, key);
            b.attr_u16(WGDEVICE_A_LISTEN_PORT, port);
        }
        self.peers_start = b.len();
        self.peers = Some(b.begin_nested(WGDEVICE_A_PEERS));
        self.b = b;
        self.peers_in_msg = 0;
    }

    fn flush(&mut self) -> Result<(), EncodeError> {
        if let Some(n) = self.peers.take() {
            if self.peers_in_msg == 0 {
                self.b.truncate(self.peers_start);
            } else {
                self.b.end_nested(n);
            }
        }
        let b = std::mem::replace(&mut self.b, MsgBuilder::new(self.family, 0));
        self.msgs.push(b.finish()?);
        Ok(())
    }

    fn too_small(&self) -> EncodeError {
        EncodeError(format!(
            "a WireGuard peer does not fit a {}-byte message for {}",
            self.max, self.ifname
        ))
    }

    /// Runs `part` (one peer head or removal); when it overflows, rolls it back and
    /// retries it at the start of a fresh message.
    fn fitting<T>(&mut self, part: impl Fn(&mut MsgBuilder) -> T) -> Result<T, EncodeError> {
        let mark = self.b.len();
        let t = part(&mut self.b);
        if self.b.len() <= self.max {
            return Ok(t);
        }
        self.b.truncate(mark);
        if self.peers_in_msg == 0 {
            return Err(self.too_small());
        }
        self.flush()?;
        self.start(None);
        let t = part(&mut self.b);
        if self.b.len() > self.max {
            return Err(self.too_small());
        }
        Ok(t)
    }

    fn remove(&mut self, key: &[u8; 32]) -> Result<(), EncodeError> {
        self.fitting(|b| {
            let p = b.begin_nested(0);
            b.attr(WGPEER_A_PUBLIC_KEY, key);
            b.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
            b.end_nested(p);
        })?;
        self.peers_in_msg += 1;
        Ok(())
    }

    fn upsert(&mut self, peer: &WgPeer) -> Result<(), EncodeError> {
        let mut first = true;
        let mut ips = peer.allowed_ips.iter().peekable();
        loop {
            // A continuation names the peer and carries more allowed IPs only: the first
            // part set endpoint and keepalive and cleared the old allowed IPs.
            let (p, list) = self.fitting(|b| {
                let p = b.begin_nested(0);
                b.attr(WGPEER_A_PUBLIC_KEY, &peer.public_key);
                if first {
                    b.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS);
                    if let Some(ep) = &peer.endpoint {
                        b.attr(WGPEER_A_ENDPOINT, &sockaddr_bytes(ep));
                    }
                    b.attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, peer.keepalive);
                }
                (p, b.begin_nested(WGPEER_A_ALLOWEDIPS))
            })?;
            self.peers_in_msg += 1;
            let mut wrote = 0;
            while let Some(ip) = ips.peek() {
                let mark = self.b.len();
                allowed_ip(&mut self.b, ip);
                if self.b.len() > self.max {
                    self.b.truncate(mark);
                    break;
                }
                ips.next();
                wrote += 1;
            }
            self.b.end_nested(list);
            self.b.end_nested(p);
            if ips.peek().is_none() {
                return Ok(());
            }
            if wrote == 0 && self.peers_in_msg == 1 {
                return Err(self.too_small());
            }
            self.flush()?;
            self.start(None);
            first = false;
        }
    }

    fn finish(mut self) -> Result<Vec<Vec<u8>>, EncodeError> {
        self.flush()?;
        Ok(self.msgs)
    }
}

/// One WGDEVICE_A_PEERS/WGPEER_A_ALLOWEDIPS entry: family, address, CIDR.
fn allowed_ip(b: &mut MsgBuilder, p: &Prefix) {
    let n = b.begin_nested(0);
    match p.addr {
        IpAddr::V4(a) => {
            b.attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET);
            b.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
        IpAddr::V6(a) => {
            b.attr_u16(WGALLOWEDIP_A_FAMILY, AF_INET6);
            b.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
    }
    b.attr_u8(WGALLOWEDIP_A_CIDR_MASK, p.len);
    b.end_nested(n);
}

/// WG_CMD_SET_DEVICE as one or more messages of at most `max` bytes. Key and port go in
/// the first; a peer whose allowed IPs overflow continues in the next message without
/// WGPEER_F_REPLACE_ALLOWEDIPS, so the kernel appends instead of clearing again.
pub(crate) fn wg_set_device(
    family: u16,
    ifname: &str,
    private_key: &[u8; 32],
    listen_port: u16,
    ops: &[PeerOp],
    max: usize,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    for op in ops {
        if let PeerOp::Upsert(p) = op {
            if let Some(bad) = p.allowed_ips.iter().find(|a| a.validate().is_err()) {
                return Err(EncodeError(format!(
                    "allowed IP {bad}: prefix length too long"
                )));
            }
        }
    }
    let mut w = SetWriter::new(family, ifname, max, private_key, listen_port);
    for op in ops {
        match op {
            PeerOp::Upsert(p) => w.upsert(p)?,
            PeerOp::Remove(k) => w.remove(k)?,
        }
    }
    w.finish()
}

fn decode_allowed_ip(a: &Attr<'_>) -> Result<Prefix, DecodeError> {
    let (mut family, mut addr, mut cidr) = (None, None, None);
    for f in a.nested()? {
        match f.ty {
            WGALLOWEDIP_A_FAMILY => family = Some(f.u16()?),
            WGALLOWEDIP_A_IPADDR => addr = Some(f.data),
            WGALLOWEDIP_A_CIDR_MASK => cidr = Some(f.u8()?),
            _ => {}
        }
    }
    let (Some(family), Some(addr), Some(len)) = (family, addr, cidr) else {
        return Err(DecodeError::new(
            "allowed IP without family, address or CIDR mask",
        ));
    };
    let addr = match (family, addr.len()) {
        (AF_INET, 4) => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(addr).unwrap_or_default(),
        )),
        (AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(addr).unwrap_or_default(),
        )),
        (f, n) => {
            return Err(DecodeError::new(format!(
                "allowed IP of family {f} with {n} bytes"
            )))
        }
    };
    let p = Prefix { addr, len };
    if len > p.max_len() {
        return Err(DecodeError::new(format!(
            "allowed IP {addr} with CIDR mask {len}"
        )));
    }
    Ok(p)
}

/// `struct __kernel_timespec` { i64 tv_sec; i64 tv_nsec; }: zero means never.
fn decode_handshake(a: &Attr<'_>) -> Result<Option<u64>, DecodeError> {
    let b: [u8; 16] = a.data.try_into().map_err(|_| {
        DecodeError::new(format!(
            "handshake time of {} bytes, expected 16",
            a.data.len()
        ))
    })?;
    let sec = i64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    Ok(u64::try_from(sec).ok().filter(|s| *s > 0))
}

fn decode_peer(a: &Attr<'_>) -> Result<WgPeerState, DecodeError> {
    let mut key = None;
    let mut p = WgPeerState {
        public_key: [0; 32],
        endpoint: None,
        allowed_ips: Vec::new(),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        keepalive: 0,
    };
    for f in a.nested()? {
        match f.ty {
            WGPEER_A_PUBLIC_KEY => key = Some(f.key()?),
            WGPEER_A_ENDPOINT => p.endpoint = decode_sockaddr(f.data)?,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => p.keepalive = f.u16()?,
            WGPEER_A_LAST_HANDSHAKE_TIME => p.last_handshake = decode_handshake(&f)?,
            WGPEER_A_RX_BYTES => p.rx_bytes = f.u64()?,
            WGPEER_A_TX_BYTES => p.tx_bytes = f.u64()?,
            WGPEER_A_ALLOWEDIPS => {
                for ip in f.nested()? {
                    p.allowed_ips.push(decode_allowed_ip(&ip)?);
                }
            }
            _ => {}
        }
    }
    p.public_key = key.ok_or_else(|| DecodeError::new("peer without WGPEER_A_PUBLIC_KEY"))?;
    Ok(p)
}

/// Merges the parts of a WG_CMD_GET_DEVICE dump (payloads after the nlmsghdr). The device
/// attributes come in the first part; a peer whose allowed IPs did not fit is repeated
/// at the start of the next part with the rest of them.
pub(crate) fn decode_wg_device(parts: &[&[u8]]) -> Result<WgDevice, DecodeError> {
    let mut ifindex = None;
    let mut dev = WgDevice {
        ifindex: 0,
        public_key: None,
        listen_port: 0,
        peers: Vec::new(),
    };
    for part in parts {
        let body = part
            .get(GENL_HDRLEN..)
            .ok_or_else(|| DecodeError::new("reply shorter than the generic netlink header"))?;
        for a in parse_attrs(body)? {
            match a.ty {
                WGDEVICE_A_IFINDEX => ifindex = Some(a.u32()?),
                WGDEVICE_A_PUBLIC_KEY => dev.public_key = Some(a.key()?),
                WGDEVICE_A_LISTEN_PORT => dev.listen_port = a.u16()?,
                WGDEVICE_A_PEERS => {
                    for pa in a.nested()? {
                        let peer = decode_peer(&pa)?;
                        match dev.peers.last_mut() {
                            Some(last) if last.public_key == peer.public_key => {
                                last.allowed_ips.extend(peer.allowed_ips)
                            }
                            _ => dev.peers.push(peer),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    dev.ifindex = ifindex.ok_or_else(|| DecodeError::new("device without WGDEVICE_A_IFINDEX"))?;
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::super::attr::{parse_attrs, parse_messages, NLMSG_HDRLEN};
    use super::super::rtnl::tests::{mutate, Rng};
    use super::*;

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

    /// A nested attribute as the kernel writes it (no NLA_F_NESTED).
    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend(body);
        v
    }

    /// ... and as we write it (NLA_F_NESTED set).
    fn nest_f(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nest(ty | 0x8000, parts)
    }

    fn hdr(len: usize, ty: u16, flags: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn msg(ty: u16, flags: u16, genl: [u8; 4], attrs: &[Vec<u8>]) -> Vec<u8> {
        let body = attrs.concat();
        let mut v = hdr(16 + 4 + body.len(), ty, flags);
        v.extend_from_slice(&genl);
        v.extend(body);
        v
    }

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn getfamily_bytes_and_reply() {
        let m = get_family("wireguard").unwrap();
        assert_eq!(m, msg(0x10, 0x5, [3, 1, 0, 0], &[nla(2, b"wireguard\0")]));
        // CTRL_CMD_NEWFAMILY (1) reply: FAMILY_NAME, FAMILY_ID u16, VERSION u32, ...
        let mut reply = vec![1, 2, 0, 0];
        reply.extend(nla(2, b"wireguard\0"));
        reply.extend(nla(1, &0x1eu16.to_ne_bytes()));
        reply.extend(nla(3, &1u32.to_ne_bytes()));
        assert_eq!(decode_family_id(&reply).unwrap(), 0x1e);
        assert!(decode_family_id(&reply[..4]).is_err());
        assert!(decode_family_id(&[1]).is_err());
    }

    #[test]
    fn getdevice_bytes() {
        let m = wg_get_device(0x1e, "kiln0").unwrap();
        assert_eq!(m, msg(0x1e, 0x301, [0, 1, 0, 0], &[nla(2, b"kiln0\0")]));
    }

    #[test]
    fn sockaddr_layouts() {
        let v4: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut want = 2u16.to_ne_bytes().to_vec();
        want.extend_from_slice(&[0xca, 0x6c, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sockaddr_bytes(&v4), want);
        assert_eq!(decode_sockaddr(&want).unwrap(), Some(v4));
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut want = 10u16.to_ne_bytes().to_vec();
        want.extend_from_slice(&[0x01, 0xbb, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0; 4]);
        assert_eq!(sockaddr_bytes(&v6), want);
        assert_eq!(decode_sockaddr(&want).unwrap(), Some(v6));
        assert_eq!(decode_sockaddr(&[0; 16]).unwrap(), None);
        assert!(decode_sockaddr(&want[..27]).is_err());
        assert!(decode_sockaddr(&[2, 0, 1]).is_err());
        assert!(decode_sockaddr(&[7, 0, 0, 0]).is_err());
    }

    fn ip4_entry(a: [u8; 4], cidr: u8) -> Vec<u8> {
        [nla(1, &2u16.to_ne_bytes()), nla(2, &a), nla(3, &[cidr])].concat()
    }

    #[test]
    fn setdevice_bytes() {
        let ops = vec![
            PeerOp::Upsert(WgPeer {
                public_key: key(7),
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                allowed_ips: vec![p("10.77.0.9/32")],
                keepalive: 25,
            }),
            PeerOp::Remove(key(8)),
        ];
        let msgs = wg_set_device(0x1e, "kiln0", &key(1), 51820, &ops, 8192).unwrap();
        assert_eq!(msgs.len(), 1);
        let peer1 = nest_f(
            0,
            &[
                nla(1, &key(7)),
                nla(3, &2u32.to_ne_bytes()),
                nla(4, &sockaddr_bytes(&"192.0.2.1:51820".parse().unwrap())),
                nla(5, &25u16.to_ne_bytes()),
                nest_f(9, &[nest_f(0, &[ip4_entry([10, 77, 0, 9], 32)])]),
            ],
        );
        let peer2 = nest_f(0, &[nla(1, &key(8)), nla(3, &1u32.to_ne_bytes())]);
        let want = msg(
            0x1e,
            0x5,
            [1, 1, 0, 0],
            &[
                nla(2, b"kiln0\0"),
                nla(3, &key(1)),
                nla(6, &51820u16.to_ne_bytes()),
                nest_f(8, &[peer1, peer2]),
            ],
        );
        assert_eq!(msgs[0], want);
    }

    #[test]
    fn setdevice_without_peers_has_no_peers_attr() {
        let msgs = wg_set_device(0x1e, "kiln0", &key(1), 0, &[], 8192).unwrap();
        let want = msg(
            0x1e,
            0x5,
            [1, 1, 0, 0],
            &[
                nla(2, b"kiln0\0"),
                nla(3, &key(1)),
                nla(6, &0u16.to_ne_bytes()),
            ],
        );
        assert_eq!(msgs, vec![want]);
    }

    /// What the kernel would end up with after applying the messages in order.
    /// A peer after applying: key, flags seen, keepalive, allowed IPs.
    type Applied = ([u8; 32], u32, Option<u16>, Vec<Prefix>);

    fn apply(msgs: &[Vec<u8>]) -> (Option<[u8; 32]>, Vec<Applied>) {
        let mut privkey = None;
        let mut peers: Vec<Applied> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let parsed = parse_messages(m).unwrap();
            assert_eq!(parsed.len(), 1);
            let attrs = parse_attrs(&parsed[0].payload[4..]).unwrap();
            assert!(
                attrs.iter().any(|a| a.ty == WGDEVICE_A_IFNAME),
                "every part names the device"
            );
            for a in attrs {
                match a.ty {
                    WGDEVICE_A_PRIVATE_KEY => {
                        assert_eq!(i, 0, "key only in the first part");
                        privkey = Some(a.key().unwrap());
                    }
                    WGDEVICE_A_PEERS => {
                        for pa in a.nested().unwrap() {
                            let mut k = None;
                            let mut flags = 0;
                            let mut ka = None;
                            let mut ips = Vec::new();
                            for f in pa.nested().unwrap() {
                                match f.ty {
                                    WGPEER_A_PUBLIC_KEY => k = Some(f.key().unwrap()),
                                    WGPEER_A_FLAGS => flags = f.u32().unwrap(),
                                    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => {
                                        ka = Some(f.u16().unwrap())
                                    }
                                    WGPEER_A_ALLOWEDIPS => {
                                        for ip in f.nested().unwrap() {
                                            ips.push(decode_allowed_ip(&ip).unwrap());
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            let k = k.unwrap();
                            match peers.iter_mut().find(|p| p.0 == k) {
                                Some(p) => {
                                    if flags & WGPEER_F_REPLACE_ALLOWEDIPS != 0 {
                                        p.3.clear();
                                    }
                                    p.1 |= flags;
                                    p.2 = ka.or(p.2);
                                    p.3.extend(ips);
                                }
                                None => peers.push((k, flags, ka, ips)),
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        (privkey, peers)
    }

    #[test]
    fn setdevice_splits_and_continues_peers() {
        let many: Vec<Prefix> = (0..300u32)
            .map(|i| Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a4d_0000 + i)),
                len: 32,
            })
            .collect();
        let mut ops: Vec<PeerOp> = (0..40u8)
            .map(|i| {
                PeerOp::Upsert(WgPeer {
                    public_key: key(i),
                    endpoint: None,
                    allowed_ips: vec![p("fd00::1/128"), p("10.0.0.0/8")],
                    keepalive: u16::from(i),
                })
            })
            .collect();
        ops.insert(
            5,
            PeerOp::Upsert(WgPeer {
                public_key: key(200),
                endpoint: None,
                allowed_ips: many.clone(),
                keepalive: 25,
            }),
        );
        ops.push(PeerOp::Remove(key(201)));
        for max in [512, 1024, 8192] {
            let msgs = wg_set_device(0x1e, "kiln0", &key(1), 51820, &ops, max).unwrap();
            assert!(msgs.iter().all(|m| m.len() <= max), "max {max}");
            if max < 8192 {
                assert!(msgs.len() > 2, "max {max}: {} parts", msgs.len());
            }
            let (k, peers) = apply(&msgs);
            assert_eq!(k, Some(key(1)));
            assert_eq!(peers.len(), 42, "each peer once, continuations merged");
            let big = peers.iter().find(|p| p.0 == key(200)).unwrap();
            assert_eq!(
                big.3, many,
                "max {max}: all allowed IPs, in order, none lost"
            );
            assert_eq!(big.2, Some(25));
            assert_eq!(big.1, WGPEER_F_REPLACE_ALLOWEDIPS);
            let rm = peers.iter().find(|p| p.0 == key(201)).unwrap();
            assert_eq!(rm.1, WGPEER_F_REMOVE_ME);
        }
        // a continuation part never replaces again
        let msgs = wg_set_device(0x1e, "kiln0", &key(1), 51820, &ops, 512).unwrap();
        let mut replace_count = 0;
        for m in &msgs {
            let parsed = parse_messages(m).unwrap();
            for a in parse_attrs(&parsed[0].payload[4..]).unwrap() {
                if a.ty == WGDEVICE_A_PEERS {
                    for pa in a.nested().unwrap() {
                        let fs = pa.nested().unwrap();
                        let is_big = fs.iter().any(|f| f.ty == 1 && f.data == key(200));
                        let replaces = fs.iter().any(|f| f.ty == 3 && f.u32().unwrap() == 2);
                        if is_big && replaces {
                            replace_count += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(replace_count, 1);
    }

    #[test]
    fn setdevice_too_small_and_bad_prefix() {
        let ops = [PeerOp::Upsert(WgPeer {
            public_key: key(1),
            endpoint: None,
            allowed_ips: vec![p("10.0.0.1/32")],
            keepalive: 0,
        })];
        assert!(wg_set_device(0x1e, "kiln0", &key(1), 1, &ops, 100).is_err());
        let bad = [PeerOp::Upsert(WgPeer {
            public_key: key(1),
            endpoint: None,
            allowed_ips: vec![Prefix {
                addr: "10.0.0.1".parse().unwrap(),
                len: 40,
            }],
            keepalive: 0,
        })];
        assert!(wg_set_device(0x1e, "kiln0", &key(1), 1, &bad, 8192).is_err());
    }

    fn timespec(sec: i64, nsec: i64) -> Vec<u8> {
        let mut v = sec.to_ne_bytes().to_vec();
        v.extend_from_slice(&nsec.to_ne_bytes());
        v
    }

    /// Two dump parts as the kernel sends them: device attributes and the first peers in
    /// the first, the rest of peer B's allowed IPs and peer C in the second.
    fn dump_parts() -> Vec<Vec<u8>> {
        let a6 = {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = 2;
            a
        };
        let peer_a = nest(
            0,
            &[
                nla(1, &key(0xa)),
                nla(2, &[0; 32]),
                nla(4, &sockaddr_bytes(&"198.51.100.7:51820".parse().unwrap())),
                nla(5, &25u16.to_ne_bytes()),
                nla(6, &timespec(1_700_000_000, 5)),
                nla(7, &1234u64.to_ne_bytes()),
                nla(8, &5678u64.to_ne_bytes()),
                nla(9, &[]),
                nla(10, &1u32.to_ne_bytes()),
            ],
        );
        let peer_b1 = nest(
            0,
            &[
                nla(1, &key(0xb)),
                nla(5, &0u16.to_ne_bytes()),
                nla(6, &timespec(0, 0)),
                nla(7, &0u64.to_ne_bytes()),
                nla(8, &0u64.to_ne_bytes()),
                nest(9, &[nest(0, &[ip4_entry([10, 77, 0, 2], 32)])]),
            ],
        );
        let peer_b2 = nest(
            0,
            &[
                nla(1, &key(0xb)),
                nest(
                    9,
                    &[nest(
                        0,
                        &[[nla(1, &10u16.to_ne_bytes()), nla(2, &a6), nla(3, &[128])].concat()],
                    )],
                ),
            ],
        );
        let peer_c = nest(0, &[nla(1, &key(0xc))]);
        let first = msg(
            0x1e,
            2,
            [0, 1, 0, 0],
            &[
                nla(6, &51820u16.to_ne_bytes()),
                nla(7, &0u32.to_ne_bytes()),
                nla(1, &4u32.to_ne_bytes()),
                nla(2, b"kiln0\0"),
                nla(3, &key(1)),
                nla(4, &key(2)),
                nest(8, &[peer_a, peer_b1]),
            ],
        );
        let second = msg(0x1e, 2, [0, 1, 0, 0], &[nest(8, &[peer_b2, peer_c])]);
        vec![first, second]
    }

    fn payloads(parts: &[Vec<u8>]) -> Vec<&[u8]> {
        parts.iter().map(|m| &m[NLMSG_HDRLEN..]).collect()
    }

    #[test]
    fn getdevice_dump_decodes_and_coalesces() {
        let parts = dump_parts();
        let dev = decode_wg_device(&payloads(&parts)).unwrap();
        assert_eq!(dev.ifindex, 4);
        assert_eq!(dev.public_key, Some(key(2)));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.peers.len(), 3);
        let a = &dev.peers[0];
        assert_eq!(a.public_key, key(0xa));
        assert_eq!(a.endpoint, Some("198.51.100.7:51820".parse().unwrap()));
        assert_eq!(a.last_handshake, Some(1_700_000_000));
        assert_eq!((a.rx_bytes, a.tx_bytes, a.keepalive), (1234, 5678, 25));
        assert!(a.allowed_ips.is_empty());
        let b = &dev.peers[1];
        assert_eq!(b.last_handshake, None);
        assert_eq!(b.endpoint, None);
        assert_eq!(b.allowed_ips, vec![p("10.77.0.2/32"), p("fd00::2/128")]);
        assert_eq!(dev.peers[2].public_key, key(0xc));
    }

    #[test]
    fn getdevice_without_key_or_index() {
        let m = msg(0x1e, 2, [0, 1, 0, 0], &[nla(1, &9u32.to_ne_bytes())]);
        let dev = decode_wg_device(&payloads(&[m])).unwrap();
        assert_eq!((dev.ifindex, dev.public_key, dev.peers.len()), (9, None, 0));
        let m = msg(0x1e, 2, [0, 1, 0, 0], &[nla(2, b"kiln0\0")]);
        assert!(decode_wg_device(&payloads(&[m])).is_err());
        assert!(decode_wg_device(&[&[0u8, 1][..]]).is_err());
        let bad_peer = msg(
            0x1e,
            2,
            [0, 1, 0, 0],
            &[
                nla(1, &9u32.to_ne_bytes()),
                nest(8, &[nest(0, &[nla(5, &0u16.to_ne_bytes())])]),
            ],
        );
        assert!(
            decode_wg_device(&payloads(&[bad_peer])).is_err(),
            "peer without key"
        );
    }

    #[test]
    fn setdevice_round_trips_through_the_dump_decoder() {
        // the SET encoding shares the attribute layout of GET for keys, endpoint,
        // keepalive and allowed IPs: decoding our own peers gives them back
        let peer = WgPeer {
            public_key: key(3),
            endpoint: Some("[2001:db8::9]:51820".parse().unwrap()),
            allowed_ips: vec![p("10.77.0.3/32"), p("fd00::3/128")],
            keepalive: 25,
        };
        let msgs = wg_set_device(
            0x1e,
            "kiln0",
            &key(1),
            1,
            &[PeerOp::Upsert(peer.clone())],
            8192,
        )
        .unwrap();
        let mut m = msgs[0].clone();
        // give it the IFINDEX a reply would have
        m.extend(nla(1, &4u32.to_ne_bytes()));
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        let dev = decode_wg_device(&[&m[NLMSG_HDRLEN..]]).unwrap();
        assert_eq!(dev.peers.len(), 1);
        let got = &dev.peers[0];
        assert_eq!(got.public_key, peer.public_key);
        assert_eq!(got.endpoint, peer.endpoint);
        assert_eq!(got.allowed_ips, peer.allowed_ips);
        assert_eq!(got.keepalive, 25);
    }

    #[test]
    fn mutated_dumps_never_panic() {
        let parts = dump_parts();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut errors = 0;
        for _ in 0..20_000 {
            let a = mutate(&mut rng, &parts[0][NLMSG_HDRLEN..]);
            let b = mutate(&mut rng, &parts[1][NLMSG_HDRLEN..]);
            errors += decode_wg_device(&[&a, &b]).is_err() as u32;
            let whole = mutate(&mut rng, &parts.concat());
            if let Ok(msgs) = parse_messages(&whole) {
                let ps: Vec<&[u8]> = msgs.iter().map(|m| m.payload).collect();
                let _ = decode_wg_device(&ps);
            }
        }
        for n in 0..parts[0].len() {
            let _ = decode_wg_device(&[&parts[0][NLMSG_HDRLEN.min(n)..n]]);
        }
        assert!(errors > 0);
    }
}
