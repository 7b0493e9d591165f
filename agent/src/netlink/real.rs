//! [`RealNet`]: the netlink sockets (request, acknowledgement, multipart dumps), `nft`
//! and /proc/sys.

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::attr::{
    error_code, parse_messages, stamp_seq, DecodeError, EncodeError, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_DUMP_INTR,
};
use super::genl::{self, WG_GENL_NAME, WG_SET_MAX_MESSAGE};
use super::rtnl::{self, AddrEntry, Link, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE};
use super::{nft, validate_ifname, Errno, Net, NetError, PeerOp, Prefix, WgDevice};

/// How long to wait for the kernel's answer before giving up on a request.
const REPLY_TIMEOUT_SECS: i64 = 10;
/// Dumps the kernel marks as interrupted (the table changed meanwhile) are retried.
const DUMP_ATTEMPTS: usize = 5;
/// Big enough for any single netlink datagram the kernel sends (dump parts are at most
/// 32 KiB); larger ones are detected through MSG_TRUNC, never silently cut.
const RECV_BUFFER: usize = 64 * 1024;

/// One message of a reply: its type and the payload after the nlmsghdr.
#[derive(Debug)]
struct Reply {
    ty: u16,
    payload: Vec<u8>,
}

/// A netlink socket with its own sequence numbers.
struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn sock_err(op: &str, what: &str) -> impl Fn(Errno) -> NetError {
    let op = format!("{what} ({op})");
    move |errno| NetError::Socket {
        op: op.clone(),
        errno,
    }
}

fn malformed(op: &str) -> impl Fn(DecodeError) -> NetError + '_ {
    move |e| NetError::Malformed {
        op: op.to_string(),
        detail: e.0,
    }
}

fn encode_err(op: &str) -> impl Fn(EncodeError) -> NetError + '_ {
    move |e| NetError::Invalid {
        what: format!("{op}: {}", e.0),
    }
}

impl NlSocket {
    fn open(proto: SockProtocol, name: &str) -> Result<NlSocket, NetError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            proto,
        )
        .map_err(sock_err(name, "socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err(name, "bind"))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::seconds(REPLY_TIMEOUT_SECS),
        )
        .map_err(sock_err(name, "set receive timeout"))?;
        Ok(NlSocket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends one request and collects the replies with its sequence number, up to the
    /// acknowledgement (requests) or NLMSG_DONE (dumps). Returns whether a dump part was
    /// flagged NLM_F_DUMP_INTR.
    fn exchange(
        &mut self,
        mut msg: Vec<u8>,
        dump: bool,
        op: &str,
    ) -> Result<(Vec<Reply>, bool), NetError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        stamp_seq(&mut msg, seq);
        loop {
            match send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()) {
                Ok(n) if n == msg.len() => break,
                Ok(n) => {
                    return Err(NetError::Malformed {
                        op: op.into(),
                        detail: format!("sent {n} of {} bytes", msg.len()),
                    })
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sock_err(op, "send")(e)),
            }
        }
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(NetError::Socket {
                        op: format!("{op}: no reply within {REPLY_TIMEOUT_SECS} s"),
                        errno: Errno::EAGAIN,
                    })
                }
                Err(e) => return Err(sock_err(op, "recv")(e)),
            };
            if n > self.buf.len() {
                return Err(NetError::Malformed {
                    op: op.into(),
                    detail: format!("a {n}-byte datagram exceeds the {RECV_BUFFER}-byte buffer"),
                });
            }
            for m in parse_messages(&self.buf[..n]).map_err(malformed(op))? {
                if m.seq != seq {
                    // a late answer to an earlier request that timed out
                    continue;
                }
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => {
                        return Err(NetError::Malformed {
                            op: op.into(),
                            detail: "NLMSG_OVERRUN: the kernel dropped messages".into(),
                        })
                    }
                    NLMSG_ERROR | NLMSG_DONE => {
                        // DONE may carry the dump's error; an old kernel's empty DONE is 0
                        let code = if m.ty == NLMSG_DONE && m.payload.len() < 4 {
                            0
                        } else {
                            error_code(m.payload).map_err(malformed(op))?
                        };
                        if code < 0 {
                            return Err(NetError::Kernel {
                                op: op.into(),
                                errno: Errno::from_raw(-code),
                                hint: None,
                            });
                        }
                        if m.ty == NLMSG_ERROR || dump {
                            return Ok((replies, interrupted));
                        }
                    }
                    ty => {
                        interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                        replies.push(Reply {
                            ty,
                            payload: m.payload.to_vec(),
                        });
                    }
                }
            }
        }
    }

    fn request(&mut self, msg: Vec<u8>, op: &str) -> Result<Vec<Reply>, NetError> {
        Ok(self.exchange(msg, false, op)?.0)
    }

    fn dump(&mut self, msg: Vec<u8>, op: &str) -> Result<Vec<Reply>, NetError> {
        for _ in 1..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.exchange(msg.clone(), true, op)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        let (replies, interrupted) = self.exchange(msg, true, op)?;
        if interrupted {
            return Err(NetError::Malformed {
                op: op.into(),
                detail: format!("the dump was interrupted {DUMP_ATTEMPTS} times in a row"),
            });
        }
        Ok(replies)
    }
}

/// Adds what to do to the usual errnos of an operation.
fn with_hint(e: NetError, hints: &[(Errno, &'static str)]) -> NetError {
    match e {
        NetError::Kernel {
            op,
            errno,
            hint: None,
        } => {
            let hint = hints.iter().find(|(e, _)| *e == errno).map(|(_, h)| *h);
            NetError::Kernel { op, errno, hint }
        }
        e => e,
    }
}

const WG_MODULE_HINT: &str = "is the wireguard kernel module available? (modprobe wireguard)";

/// The real thing: netlink sockets, `nft` from PATH, /proc/sys.
pub struct RealNet {
    route: NlSocket,
    /// Opened on first use, so hosts without WireGuard can still use the rtnetlink part.
    genl: Option<NlSocket>,
    wg_family: Option<u16>,
    nft: PathBuf,
    proc_sys: PathBuf,
}

impl RealNet {
    /// Opens the rtnetlink socket (generic netlink is opened when first needed).
    pub fn new() -> Result<RealNet, NetError> {
        Ok(RealNet {
            route: NlSocket::open(SockProtocol::NetlinkRoute, "NETLINK_ROUTE")?,
            genl: None,
            wg_family: None,
            nft: PathBuf::from("nft"),
            proc_sys: PathBuf::from("/proc/sys"),
        })
    }

    /// The interface, or None when it does not exist.
    fn link(&mut self, name: &str) -> Result<Option<Link>, NetError> {
        let op = format!("look up interface {name} (RTM_GETLINK)");
        let msg = rtnl::get_link_by_name(name).map_err(encode_err(&op))?;
        let replies = match self.route.request(msg, &op) {
            Err(e) if e.errno() == Some(Errno::ENODEV) => return Ok(None),
            r => r?,
        };
        match replies.iter().find(|r| r.ty == RTM_NEWLINK) {
            Some(r) => Ok(Some(rtnl::decode_link(&r.payload).map_err(malformed(&op))?)),
            None => Err(NetError::Malformed {
                op,
                detail: "no RTM_NEWLINK in the reply".into(),
            }),
        }
    }

    fn link_index(&mut self, name: &str) -> Result<u32, NetError> {
        validate_ifname(name)?;
        match self.link(name)? {
            Some(l) => Ok(l.index),
            None => Err(NetError::Kernel {
                op: format!("look up interface {name}"),
                errno: Errno::ENODEV,
                hint: Some("the interface does not exist"),
            }),
        }
    }

    /// Creates interface `name` of `kind` unless an interface of that kind exists.
    pub(crate) fn ensure_link(&mut self, name: &str, kind: &str) -> Result<u32, NetError> {
        validate_ifname(name)?;
        if let Some(l) = self.link(name)? {
            if l.kind.as_deref() == Some(kind) {
                return Ok(l.index);
            }
            return Err(NetError::Invalid {
                what: format!(
                    "interface {name} exists but is {}, not {kind}: delete it (ip link del \
                     {name}) or choose another name",
                    l.kind
                        .map(|k| format!("of kind {k}"))
                        .unwrap_or_else(|| "a plain device".into())
                ),
            });
        }
        let op = format!("create {kind} interface {name} (RTM_NEWLINK)");
        let msg = rtnl::new_link(name, kind).map_err(encode_err(&op))?;
        match self.route.request(msg, &op) {
            // created by someone else meanwhile: the lookup below checks its kind
            Err(e) if e.errno() == Some(Errno::EEXIST) => {}
            Err(e) => {
                let hint = if kind == "wireguard" {
                    WG_MODULE_HINT
                } else {
                    "this kernel cannot create interfaces of that kind"
                };
                return Err(with_hint(e, &[(Errno::EOPNOTSUPP, hint)]));
            }
            Ok(_) => {}
        }
        match self.link(name)? {
            Some(l) if l.kind.as_deref() == Some(kind) => Ok(l.index),
            _ => Err(NetError::Kernel {
                op: format!("create {kind} interface {name}"),
                errno: Errno::ENODEV,
                hint: Some("it was not there right after creating it"),
            }),
        }
    }

    /// The interface's IPv4 and IPv6 addresses.
    fn addresses(&mut self, ifname: &str, index: u32) -> Result<Vec<AddrEntry>, NetError> {
        let op = format!("list addresses of {ifname} (RTM_GETADDR)");
        let msg = rtnl::get_addr_dump().map_err(encode_err(&op))?;
        let mut out = Vec::new();
        for r in self.route.dump(msg, &op)? {
            if r.ty != RTM_NEWADDR {
                continue;
            }
            if let Some(e) = rtnl::decode_addr(&r.payload).map_err(malformed(&op))? {
                if e.index == index {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    fn genl_family(&mut self, name: &str) -> Result<u16, NetError> {
        let op = format!("look up generic netlink family {name} (CTRL_CMD_GETFAMILY)");
        let msg = genl::get_family(name).map_err(encode_err(&op))?;
        let sock = self.genl_socket()?;
        let replies = sock.request(msg, &op)?;
        let r = replies.first().ok_or_else(|| NetError::Malformed {
            op: op.clone(),
            detail: "no family in the reply".into(),
        })?;
        genl::decode_family_id(&r.payload).map_err(malformed(&op))
    }

    fn genl_socket(&mut self) -> Result<&mut NlSocket, NetError> {
        match &mut self.genl {
            Some(s) => Ok(s),
            slot => Ok(slot.insert(NlSocket::open(
                SockProtocol::NetlinkGeneric,
                "NETLINK_GENERIC",
            )?)),
        }
    }

    fn wg_family(&mut self) -> Result<u16, NetError> {
        if let Some(f) = self.wg_family {
            return Ok(f);
        }
        let f = self
            .genl_family(WG_GENL_NAME)
            .map_err(|e| with_hint(e, &[(Errno::ENOENT, WG_MODULE_HINT)]))?;
        self.wg_family = Some(f);
        Ok(f)
    }
}

const WG_DEVICE_HINTS: &[(Errno, &str)] = &[
    (
        Errno::ENODEV,
        "the interface does not exist: create it first",
    ),
    (
        Errno::EOPNOTSUPP,
        "the interface is not a kernel WireGuard device",
    ),
];

impl Net for RealNet {
    fn ensure_wireguard(&mut self, ifname: &str) -> Result<u32, NetError> {
        self.ensure_link(ifname, "wireguard")
    }

    fn set_mtu_up(&mut self, ifname: &str, mtu: u32) -> Result<(), NetError> {
        let index = self.link_index(ifname)?;
        let op = format!("set MTU {mtu} and up on {ifname} (RTM_SETLINK)");
        let msg = rtnl::set_link_mtu_up(index, mtu).map_err(encode_err(&op))?;
        self.route.request(msg, &op).map_err(|e| {
            with_hint(
                e,
                &[(Errno::EINVAL, "the MTU is outside the device's range")],
            )
        })?;
        Ok(())
    }

    fn replace_addresses(&mut self, ifname: &str, addrs: &[Prefix]) -> Result<(), NetError> {
        for p in addrs {
            p.validate()?;
        }
        let index = self.link_index(ifname)?;
        let current = self.addresses(ifname, index)?;
        let prefixes: Vec<Prefix> = current.iter().map(|e| e.prefix).collect();
        let plan = rtnl::plan_addresses(&prefixes, addrs);
        for p in &plan.remove {
            let Some(entry) = current.iter().find(|e| e.prefix == *p) else {
                continue;
            };
            let op = format!("remove address {p} from {ifname} (RTM_DELADDR)");
            let msg = rtnl::del_addr(entry).map_err(encode_err(&op))?;
            match self.route.request(msg, &op) {
                // removing a primary IPv4 address can take its secondaries with it
                Err(e) if e.errno() == Some(Errno::EADDRNOTAVAIL) => {}
                r => {
                    r?;
                }
            }
        }
        let add = if plan.remove.is_empty() {
            plan.add
        } else {
            let now: Vec<Prefix> = self
                .addresses(ifname, index)?
                .iter()
                .map(|e| e.prefix)
                .collect();
            rtnl::plan_addresses(&now, addrs).add
        };
        for p in add {
            let op = format!("add address {p} to {ifname} (RTM_NEWADDR)");
            let msg = rtnl::new_addr(index, p).map_err(encode_err(&op))?;
            match self.route.request(msg, &op) {
                Err(e) if e.errno() == Some(Errno::EEXIST) => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    fn set_wireguard(
        &mut self,
        ifname: &str,
        private_key: &[u8; 32],
        listen_port: u16,
        ops: &[PeerOp],
    ) -> Result<(), NetError> {
        validate_ifname(ifname)?;
        let family = self.wg_family()?;
        let what = format!("configure WireGuard on {ifname} (WG_CMD_SET_DEVICE)");
        let msgs = genl::wg_set_device(
            family,
            ifname,
            private_key,
            listen_port,
            ops,
            WG_SET_MAX_MESSAGE,
        )
        .map_err(encode_err(&what))?;
        let total = msgs.len();
        let sock = self.genl_socket()?;
        for (i, msg) in msgs.into_iter().enumerate() {
            let op = if total == 1 {
                what.clone()
            } else {
                format!("{what}, part {} of {total}", i + 1)
            };
            let mut hints = WG_DEVICE_HINTS.to_vec();
            hints.push((
                Errno::EADDRINUSE,
                "the listen port is taken by another socket",
            ));
            sock.request(msg, &op).map_err(|e| with_hint(e, &hints))?;
        }
        Ok(())
    }

    fn wireguard(&mut self, ifname: &str) -> Result<WgDevice, NetError> {
        validate_ifname(ifname)?;
        let family = self.wg_family()?;
        let op = format!("read WireGuard device {ifname} (WG_CMD_GET_DEVICE)");
        let msg = genl::wg_get_device(family, ifname).map_err(encode_err(&op))?;
        let replies = self
            .genl_socket()?
            .dump(msg, &op)
            .map_err(|e| with_hint(e, WG_DEVICE_HINTS))?;
        let parts: Vec<&[u8]> = replies
            .iter()
            .filter(|r| r.ty == family)
            .map(|r| r.payload.as_slice())
            .collect();
        genl::decode_wg_device(&parts).map_err(malformed(&op))
    }

    fn path_mtu(&mut self, dest: IpAddr) -> Result<(String, u32), NetError> {
        let op = format!("look up the route to {dest} (RTM_GETROUTE)");
        let msg = rtnl::get_route(dest).map_err(encode_err(&op))?;
        let replies = self.route.request(msg, &op).map_err(|e| {
            with_hint(
                e,
                &[(Errno::ENETUNREACH, "no route: is the network configured?")],
            )
        })?;
        let r = replies
            .iter()
            .find(|r| r.ty == RTM_NEWROUTE)
            .ok_or_else(|| NetError::Malformed {
                op: op.clone(),
                detail: "no RTM_NEWROUTE in the reply".into(),
            })?;
        let route = rtnl::decode_route(&r.payload).map_err(malformed(&op))?;
        let oif = route.oif.ok_or_else(|| NetError::Malformed {
            op: op.clone(),
            detail: "the route has no output interface (RTA_OIF)".into(),
        })?;
        let lop = format!("look up interface {oif} of the route to {dest} (RTM_GETLINK)");
        let msg = rtnl::get_link_by_index(oif).map_err(encode_err(&lop))?;
        let replies = self.route.request(msg, &lop)?;
        let link = match replies.iter().find(|r| r.ty == RTM_NEWLINK) {
            Some(r) => rtnl::decode_link(&r.payload).map_err(malformed(&lop))?,
            None => {
                return Err(NetError::Malformed {
                    op: lop,
                    detail: "no RTM_NEWLINK".into(),
                })
            }
        };
        let name = link.name.ok_or_else(|| NetError::Malformed {
            op: lop.clone(),
            detail: "link without IFLA_IFNAME".into(),
        })?;
        let mtu = route.mtu.or(link.mtu).ok_or_else(|| NetError::Malformed {
            op: lop.clone(),
            detail: "neither the route nor the link has an MTU".into(),
        })?;
        Ok((name, mtu))
    }

    fn apply_nft(&mut self, ruleset: &str) -> Result<(), NetError> {
        nft::run_nft(&self.nft, ruleset, false)
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetError> {
        let path = self.proc_sys.join(sysctl_path(key)?);
        let io = |op: &str, error| NetError::Io {
            path: path.clone(),
            op: op.into(),
            error,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io("open sysctl", e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| io(&format!("write {value:?} to sysctl"), e))
    }
}

/// `net/ipv4/conf/kiln0/send_redirects` as is; the dotted form (`net.ipv4.ip_forward`)
/// only without slashes, since interface names may contain dots.
fn sysctl_path(key: &str) -> Result<PathBuf, NetError> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let ok = !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if !ok {
        return Err(NetError::Invalid {
            what: format!(
                "sysctl key {key:?}: expected a path under /proc/sys such as \
                 net/ipv4/conf/kiln0/send_redirects"
            ),
        });
    }
    Ok(PathBuf::from(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net/ipv4/conf/kiln0/send_redirects").unwrap(),
            PathBuf::from("net/ipv4/conf/kiln0/send_redirects")
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.5/rp_filter").unwrap(),
            PathBuf::from("net/ipv4/conf/eth0.5/rp_filter")
        );
        for bad in ["", "/net/ipv4", "net/../etc", "net//x", "net/./x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sysctl_writes_under_proc_sys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0").unwrap();
        let mut net = RealNet::new().unwrap();
        net.proc_sys = dir.path().to_path_buf();
        net.sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        let e = net.sysctl("net/ipv4/nope", "1").unwrap_err();
        assert!(e.to_string().contains("net/ipv4/nope"), "{e}");
    }

    /// The host's loopback: a real RTM_GETROUTE and RTM_GETLINK round trip.
    #[test]
    fn path_mtu_to_loopback() {
        let mut net = RealNet::new().unwrap();
        assert_eq!(
            net.path_mtu("127.0.0.1".parse().unwrap()).unwrap(),
            ("lo".into(), 65536)
        );
    }

    /// Generic netlink against the host kernel: the controller resolves itself (0x10),
    /// and a missing family (no WireGuard module on the host) is a clear error.
    #[test]
    fn genl_family_lookup() {
        let mut net = RealNet::new().unwrap();
        assert_eq!(net.genl_family("nlctrl").unwrap(), 0x10);
        let e = net.genl_family("kilnnofamily").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT), "{e}");
        if net.wg_family().is_err() {
            let e = net.wireguard("kiln0").unwrap_err();
            assert!(e.to_string().contains("modprobe wireguard"), "{e}");
        }
    }

    #[test]
    fn missing_interface_is_named() {
        let mut net = RealNet::new().unwrap();
        let e = net.set_mtu_up("kiln-nonexist", 1420).unwrap_err();
        assert!(
            e.to_string().contains("kiln-nonexist") && e.to_string().contains("ENODEV"),
            "{e}"
        );
        let e = net.replace_addresses("bad/name", &[]).unwrap_err();
        assert!(e.to_string().contains("bad/name"), "{e}");
    }

    const NETNS_ENV: &str = "KILN_NETLINK_TEST_IN_NETNS";
    const NETNS_TEST: &str = "netlink::real::tests::rtnetlink_in_fresh_netns";

    fn env_in_netns() -> bool {
        std::env::var_os(NETNS_ENV).is_some()
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Links, addresses, route MTUs, nft and sysctls against the real kernel, in a fresh
    /// network namespace (this test re-runs itself under `unshare -n`), with `ip` and
    /// `nft` as referees. Says so and passes when namespaces are unavailable.
    #[test]
    fn rtnetlink_in_fresh_netns() {
        if !env_in_netns() {
            let exe = std::env::current_exe().unwrap();
            let out = Command::new("unshare")
                .arg("-n")
                .arg(&exe)
                .args(["--exact", NETNS_TEST, "--nocapture", "--test-threads=1"])
                .env(NETNS_ENV, "1")
                .output();
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("SKIPPED {NETNS_TEST}: cannot run unshare: {e}");
                    return;
                }
            };
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() && text.starts_with("unshare:") {
                eprintln!("SKIPPED {NETNS_TEST}: no network namespace here: {text}");
                return;
            }
            assert!(out.status.success(), "in the network namespace:\n{text}");
            assert!(
                text.contains("1 passed"),
                "the test did not run in the namespace:\n{text}"
            );
            return;
        }
        let mut net = RealNet::new().unwrap();
        net.set_mtu_up("lo", 65536).unwrap();
        assert_eq!(
            net.path_mtu("127.0.0.1".parse().unwrap()).unwrap(),
            ("lo".into(), 65536)
        );

        // the dummy module is missing on these hosts; a bridge is as good a test link
        let idx = net.ensure_link("kb0", "bridge").unwrap();
        assert_eq!(net.ensure_link("kb0", "bridge").unwrap(), idx, "idempotent");
        let e = net.ensure_wireguard("kb0").unwrap_err();
        assert!(e.to_string().contains("kind bridge"), "{e}");
        let e = net.ensure_wireguard("lo").unwrap_err();
        assert!(e.to_string().contains("plain device"), "{e}");
        net.set_mtu_up("kb0", 1400).unwrap();
        let link = ip(&["-o", "link", "show", "dev", "kb0"]);
        assert!(
            link.contains("mtu 1400") && link.contains("<") && link.contains("UP"),
            "{link}"
        );

        ip(&["addr", "add", "192.168.9.9/24", "dev", "kb0"]);
        ip(&["addr", "add", "192.168.9.10/24", "dev", "kb0"]);
        let want: Vec<Prefix> = ["10.77.0.5/16", "fd00::5/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        net.replace_addresses("kb0", &want).unwrap();
        let addrs = ip(&["-o", "addr", "show", "dev", "kb0"]);
        assert!(addrs.contains("inet 10.77.0.5/16"), "{addrs}");
        assert!(addrs.contains("inet6 fd00::5/64"), "{addrs}");
        assert!(!addrs.contains("192.168.9."), "{addrs}");
        net.replace_addresses("kb0", &want).unwrap();

        ip(&["addr", "add", "fe80::1234/64", "dev", "kb0"]);
        let want2: Vec<Prefix> = ["10.77.0.6/16", "fd00::6/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        net.replace_addresses("kb0", &want2).unwrap();
        let addrs = ip(&["-o", "addr", "show", "dev", "kb0"]);
        assert!(
            addrs.contains("inet 10.77.0.6/16") && addrs.contains("inet6 fd00::6/64"),
            "{addrs}"
        );
        assert!(
            !addrs.contains("10.77.0.5") && !addrs.contains("fd00::5/"),
            "{addrs}"
        );
        assert!(addrs.contains("fe80::1234/64"), "link-local stays: {addrs}");

        assert_eq!(
            net.path_mtu("10.77.3.4".parse().unwrap()).unwrap(),
            ("kb0".into(), 1400)
        );
        ip(&["route", "add", "10.99.0.0/16", "dev", "kb0", "mtu", "1300"]);
        assert_eq!(
            net.path_mtu("10.99.1.1".parse().unwrap()).unwrap(),
            ("kb0".into(), 1300)
        );
        let e = net.path_mtu("203.0.113.1".parse().unwrap()).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENETUNREACH), "{e}");

        net.sysctl("net/ipv4/conf/kb0/send_redirects", "0").unwrap();
        let v = std::fs::read_to_string("/proc/sys/net/ipv4/conf/kb0/send_redirects").unwrap();
        assert_eq!(v.trim(), "0");
        net.sysctl("net/ipv4/conf/kb0/send_redirects", "1").unwrap();
        let v = std::fs::read_to_string("/proc/sys/net/ipv4/conf/kb0/send_redirects").unwrap();
        assert_eq!(v.trim(), "1");

        let rules = super::super::mss_clamp_rules("kb0");
        net.apply_nft(&rules).unwrap();
        net.apply_nft(&rules).unwrap();
        let out = Command::new("nft")
            .args(["list", "table", "inet", "kiln-overlay"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            listed.matches("maxseg size set rt mtu").count(),
            3,
            "{listed}"
        );
        let e = net
            .apply_nft("table inet kiln-overlay { chain c { bogus } }")
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
