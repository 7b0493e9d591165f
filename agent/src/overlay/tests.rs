#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_enroll_proto::api::{
    ClusterJoin, EnrollAnswer, EnrollRequest, ErrorBody, ErrorCode, HeartbeatAnswer,
    HeartbeatRequest, Network, NodeInfo, Peer, PeerList, Role,
};
use kiln_enroll_proto::base64;
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::key::PublicKey;

use super::identity::{self, Identity};
use super::run::{self, Event};
use super::*;
use super::{enroll, mesh, settings, status};
use crate::netlink::{Net, NetError, PeerOp, Prefix, WgDevice, WgPeerState};
use crate::sys::fake::{fake_base, FakeSys as SharedFake};
use crate::sys::real::RealSys;
use crate::sys::{forward, Clock, Random};

type Log = Arc<Mutex<Vec<String>>>;

const MID: &str = "0123456789abcdef0123456789abcdef";
const HASH: &str = "abababababababababababababababababababababababababababababababab";

fn token_text() -> String {
    format!("KLN1{HASH}::abc123.{}", "s".repeat(32))
}

fn config_text() -> String {
    format!(
        "schema = 1\nhostname = \"node-a.example\"\n\n[enroll]\nserver = \"https://10.0.2.100:8443\"\ntoken = \"{}\"\n",
        token_text()
    )
}

/// The overlay's fake: the shared one (files, console, host names; its writes also go to
/// the log the other fakes write, to check what happens before what) with a sleep that
/// lets the watch thread run, a counter for random bytes, interface addresses and kicks.
struct FakeSys {
    base: SharedFake,
    addrs: Vec<(String, IpAddr)>,
    counter: u8,
    kicked: Vec<IpAddr>,
}

forward!(FakeSys => base: Files, Console, Resolve);
fake_base!(FakeSys => base);

impl FakeSys {
    fn new(log: &Log) -> FakeSys {
        let mut base = SharedFake {
            now: 1_000_000,
            shared_log: Some(log.clone()),
            ..SharedFake::default()
        };
        base.hosts.insert(
            "relay.example".into(),
            vec!["203.0.113.50".parse().unwrap()],
        );
        base.files
            .insert(MACHINE_ID_PATH.to_string(), format!("{MID}\n").into_bytes());
        base.files
            .insert(CONFIG_PATH.to_string(), config_text().into_bytes());
        FakeSys {
            base,
            addrs: vec![
                ("lo".into(), "127.0.0.1".parse().unwrap()),
                ("eth0".into(), "10.0.2.15".parse().unwrap()),
                ("eth0".into(), "fe80::1".parse().unwrap()),
                ("veth12".into(), "10.42.0.1".parse().unwrap()),
            ],
            counter: 1,
            kicked: Vec::new(),
        }
    }
}

impl Clock for FakeSys {
    fn now(&mut self) -> u64 {
        self.base.now
    }
    fn elapsed(&mut self) -> Duration {
        self.base.elapsed
    }
    fn sleep(&mut self, d: Duration) {
        self.base.slept.push(d);
        self.base.now += d.as_secs().max(1);
        // Lets the watch thread of a daemon test deliver its events.
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Random for FakeSys {
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        for b in buf.iter_mut() {
            *b = self.counter;
            self.counter = self.counter.wrapping_mul(13).wrapping_add(7);
        }
        Ok(())
    }
}

impl OverlaySys for FakeSys {
    fn next_event(&mut self, events: &Receiver<Event>, d: Duration) -> Option<Event> {
        if let Ok(ev) = events.try_recv() {
            return Some(ev);
        }
        self.sleep(d);
        events.try_recv().ok()
    }
    fn interface_addrs(&mut self) -> io::Result<Vec<(String, IpAddr)>> {
        Ok(self.addrs.clone())
    }

    fn kick(&mut self, to: IpAddr) -> io::Result<()> {
        self.kicked.push(to);
        Ok(())
    }
}

#[derive(Default)]
struct FakeNet {
    device: Option<WgDevice>,
    addrs: Vec<Prefix>,
    mtu: Option<u32>,
    path_mtu: u32,
    nft: Vec<String>,
    sysctls: Vec<(String, String)>,
    key: Option<[u8; 32]>,
    port: u16,
    set_calls: usize,
}

impl Net for FakeNet {
    fn ensure_wireguard(&mut self, ifname: &str) -> Result<u32, NetError> {
        assert_eq!(ifname, IFNAME);
        self.device.get_or_insert(WgDevice {
            ifindex: 9,
            public_key: None,
            listen_port: 0,
            peers: vec![],
        });
        Ok(9)
    }
    fn set_mtu_up(&mut self, _: &str, mtu: u32) -> Result<(), NetError> {
        self.mtu = Some(mtu);
        Ok(())
    }
    fn replace_addresses(&mut self, _: &str, addrs: &[Prefix]) -> Result<(), NetError> {
        self.addrs = addrs.to_vec();
        Ok(())
    }
    fn set_wireguard(
        &mut self,
        _: &str,
        key: &[u8; 32],
        port: u16,
        ops: &[PeerOp],
    ) -> Result<(), NetError> {
        self.set_calls += 1;
        self.key = Some(*key);
        self.port = port;
        let dev = self.device.as_mut().ok_or(NetError::Invalid {
            what: "no device".into(),
        })?;
        for op in ops {
            match op {
                PeerOp::Remove(k) => dev.peers.retain(|p| &p.public_key != k),
                PeerOp::Upsert(w) => {
                    match dev.peers.iter_mut().find(|p| p.public_key == w.public_key) {
                        Some(p) => {
                            p.allowed_ips = w.allowed_ips.clone();
                            p.keepalive = w.keepalive;
                            if w.endpoint.is_some() {
                                p.endpoint = w.endpoint;
                            }
                        }
                        None => dev.peers.push(WgPeerState {
                            public_key: w.public_key,
                            endpoint: w.endpoint,
                            allowed_ips: w.allowed_ips.clone(),
                            last_handshake: None,
                            rx_bytes: 0,
                            tx_bytes: 0,
                            keepalive: w.keepalive,
                        }),
                    }
                }
            }
        }
        Ok(())
    }
    fn wireguard(&mut self, _: &str) -> Result<WgDevice, NetError> {
        self.device.clone().ok_or(NetError::Invalid {
            what: "kiln0 does not exist".into(),
        })
    }
    fn path_mtu(&mut self, dest: IpAddr) -> Result<(String, u32), NetError> {
        assert_eq!(dest.to_string(), "10.0.2.100");
        Ok(("eth0".into(), self.path_mtu))
    }
    fn apply_nft(&mut self, ruleset: &str) -> Result<(), NetError> {
        self.nft.push(ruleset.to_string());
        Ok(())
    }
    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetError> {
        self.sysctls.push((key.into(), value.into()));
        Ok(())
    }
}

type Queue<T> = Mutex<VecDeque<Result<T, ApiError>>>;

#[derive(Default)]
struct FakeApi {
    enroll: Queue<EnrollAnswer>,
    peers: Queue<PeerList>,
    heartbeat: Queue<HeartbeatAnswer>,
    requests: Mutex<Vec<EnrollRequest>>,
    heartbeats: Mutex<Vec<HeartbeatRequest>>,
    log: Log,
}

fn next<T>(q: &Queue<T>, what: &str) -> Result<T, ApiError> {
    q.lock().unwrap().pop_front().unwrap_or_else(|| {
        Err(ApiError::Other {
            message: format!("{what}: nothing queued"),
            retry: true,
        })
    })
}

impl Api for FakeApi {
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollAnswer, ApiError> {
        self.log.lock().unwrap().push("api enroll".into());
        self.requests.lock().unwrap().push(req.clone());
        next(&self.enroll, "enroll")
    }
    fn peers(&self, auth: &NodeAuth, _since: u64, _wait: u32) -> Result<PeerList, ApiError> {
        assert_eq!(auth.name, "node-a");
        next(&self.peers, "peers")
    }
    fn heartbeat(
        &self,
        auth: &NodeAuth,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, ApiError> {
        assert_eq!(auth.credential.len(), 32);
        self.heartbeats.lock().unwrap().push(req.clone());
        next(&self.heartbeat, "heartbeat")
    }
}

fn refused(code: ErrorCode, msg: &str) -> ApiError {
    ApiError::Refused(ErrorBody::new(code, msg))
}

fn peer(name: &str, n: u8) -> Peer {
    Peer {
        name: name.into(),
        public_key: PublicKey([n; 32]),
        allowed_ips: vec![
            format!("10.77.0.{n}/32").parse().unwrap(),
            format!("fd00:1:2::{n}/128").parse().unwrap(),
        ],
        endpoints: vec![],
        public_endpoint: None,
        public: false,
        online: true,
    }
}

fn answer(own_key: PublicKey) -> EnrollAnswer {
    let mut me = peer("node-a", 2);
    me.public_key = own_key;
    EnrollAnswer {
        node: NodeInfo {
            name: "node-a".into(),
            address_v4: "10.77.0.2/16".parse().unwrap(),
            address_v6: "fd00:1:2::2/64".parse().unwrap(),
        },
        network: Network {
            pool_v4: "10.77.0.0/16".parse().unwrap(),
            pool_v6: "fd00:1:2::/64".parse().unwrap(),
            mtu: 1420,
            keepalive_secs: 25,
        },
        peers: PeerList {
            version: 3,
            peers: vec![
                me,
                Peer {
                    public_endpoint: Some("relay.example:51820".into()),
                    public: true,
                    ..peer("relay", 5)
                },
                Peer {
                    endpoints: vec!["10.0.2.15:51820".parse().unwrap()],
                    ..peer("natted", 7)
                },
            ],
        },
        heartbeat_secs: 30,
        cluster: ClusterJoin {
            role: Role::Worker,
            labels: BTreeMap::new(),
            join: None,
        },
    }
}

/// The identity the fake system's randomness makes (the daemon makes the same one).
fn made_identity(log: &Log) -> Identity {
    let mut sys = FakeSys::new(log);
    identity::load_or_create(&mut sys).unwrap()
}

struct Daemon {
    sys: FakeSys,
    net: FakeNet,
    api: Arc<FakeApi>,
    log: Log,
    made: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn new() -> Daemon {
        let log: Log = Arc::default();
        Daemon {
            sys: FakeSys::new(&log),
            net: FakeNet {
                path_mtu: 1500,
                ..FakeNet::default()
            },
            api: Arc::new(FakeApi {
                log: log.clone(),
                ..FakeApi::default()
            }),
            log,
            made: Arc::default(),
        }
    }

    fn run(&mut self) -> u8 {
        let settings = settings::load_settings(&mut self.sys).unwrap().unwrap();
        let api = self.api.clone();
        let made = self.made.clone();
        let log = self.log.clone();
        let make_api = move |url: &str, pin: [u8; 32]| -> Result<Arc<dyn Api>, String> {
            made.lock()
                .unwrap()
                .push(format!("{url} {}", kiln_enroll_proto::token::to_hex(&pin)));
            log.lock().unwrap().push("make api".into());
            Ok(api.clone() as Arc<dyn Api>)
        };
        let spawn = |api: Arc<dyn Api>, auth: NodeAuth, since: u64, tx| {
            std::thread::spawn(move || {
                run::watch(api, auth, since, tx, |_| {
                    std::thread::sleep(Duration::from_millis(1))
                })
            });
        };
        run::daemon(&mut self.sys, &mut self.net, &make_api, &settings, &spawn)
    }
}

#[test]
fn daemon_enrolls_after_retries_brings_up_kiln0_and_leaves_when_revoked() {
    let mut d = Daemon::new();
    let id = made_identity(&Log::default());
    d.net.path_mtu = 1400;
    {
        let mut q = d.api.enroll.lock().unwrap();
        q.push_back(Err(ApiError::Other {
            message: "connect 10.0.2.100:8443: refused".into(),
            retry: true,
        }));
        q.push_back(Err(refused(ErrorCode::Unavailable, "database down")));
        q.push_back(Ok(answer(id.public_key)));
    }
    {
        let mut q = d.api.heartbeat.lock().unwrap();
        q.push_back(Ok(HeartbeatAnswer {
            heartbeat_secs: 30,
            peers_version: 3,
        }));
        q.push_back(Err(refused(ErrorCode::NodeRevoked, "revoked by admin")));
    }
    assert_eq!(d.run(), 2);
    let log = d.log.lock().unwrap().clone();
    // The identity is on disk before anything goes out.
    let first_write = log
        .iter()
        .position(|l| l == &format!("write {IDENTITY_PATH}"))
        .unwrap();
    let first_api = log.iter().position(|l| l == "make api").unwrap();
    assert!(first_write < first_api, "{log:?}");
    assert_eq!(
        d.made.lock().unwrap()[0],
        format!("https://10.0.2.100:8443 {HASH}")
    );
    // Backoff: 2 s then 4 s, each with up to a quarter of jitter.
    let s = &d.sys.slept;
    assert!(
        s[0] >= Duration::from_secs(2) && s[0] <= Duration::from_millis(2500),
        "{s:?}"
    );
    assert!(
        s[1] >= Duration::from_secs(4) && s[1] <= Duration::from_secs(5),
        "{s:?}"
    );
    let req = &d.api.requests.lock().unwrap()[0];
    assert_eq!(req.hostname, "node-a");
    assert_eq!(
        req.endpoints,
        vec!["10.0.2.15:51820".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(req.token, token_text());
    assert_eq!(req.public_key, id.public_key);
    assert!(
        d.sys
            .has_line("kiln-overlay: enrolled as node-a 10.77.0.2 fd00:1:2::2 mtu 1320 (2 peers)"),
        "{:?}",
        d.sys.lines
    );
    assert_eq!(d.net.mtu, Some(1320), "path MTU 1400 - 80");
    assert_eq!(d.net.key, Some(id.private_key));
    assert_eq!(d.net.port, 51820);
    assert!(d.net.nft[0].contains("kiln0"));
    assert!(d
        .net
        .sysctls
        .contains(&("net/ipv4/conf/kiln0/send_redirects".into(), "0".into())));
    assert!(
        d.sys
            .has_line("kiln-overlay: peer relay direct 203.0.113.50:51820"),
        "{:?}",
        d.sys.lines
    );
    // natted's only endpoint is our own address: straight to the relay.
    assert!(
        d.sys.has_line("kiln-overlay: peer natted via relay"),
        "{:?}",
        d.sys.lines
    );
    // Revoked: peers and addresses gone, enrollment forgotten, one ERROR line.
    assert!(d.net.device.as_ref().unwrap().peers.is_empty());
    assert!(d.net.addrs.is_empty());
    assert!(!d.sys.files.contains_key(ENROLLMENT_PATH));
    assert!(d.sys.files.contains_key(IDENTITY_PATH));
    let last = d.sys.lines.last().unwrap();
    assert!(
        last.starts_with("kiln-overlay: ERROR: this node was revoked"),
        "{last}"
    );
    // The heartbeat carried the kernel's view.
    let hb = &d.api.heartbeats.lock().unwrap()[0];
    assert_eq!(hb.observations.len(), 1, "{hb:?}");
    assert_eq!(
        hb.endpoints,
        vec!["10.0.2.15:51820".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn refusals_stop_with_the_servers_words() {
    let cases = [
        (
            refused(ErrorCode::TokenUsedUp, "token abc123 has no uses left"),
            "kiln-overlay: ERROR: enrollment refused (token_used_up): token abc123 has no uses left",
        ),
        (
            ApiError::PinMismatch {
                expected: HASH.into(),
                presented: vec!["cd".repeat(32)],
            },
            "kiln-overlay: ERROR: the server's certificate does not match the token's CA hash (possible man in the middle)",
        ),
    ];
    for (err, want) in cases {
        let mut d = Daemon::new();
        d.api.enroll.lock().unwrap().push_back(Err(err));
        assert_eq!(d.run(), 2);
        assert!(
            d.sys.lines.iter().any(|l| l.starts_with(want)),
            "{:?}",
            d.sys.lines
        );
        assert!(!d.sys.files.contains_key(ENROLLMENT_PATH));
        assert!(d.net.device.is_none(), "nothing configured");
        assert!(d.sys.slept.is_empty(), "no retry");
    }
}

#[test]
fn a_cloned_disk_is_refused_before_any_network_io() {
    let mut d = Daemon::new();
    let mut id = made_identity(&Log::default());
    id.machine_id = "ffffffffffffffffffffffffffffffff".into();
    id.product_uuid = Some("4c4c4544-0000-1111-2222-333344445555".into());
    d.sys
        .files
        .insert(IDENTITY_PATH.into(), identity::render(&id));
    d.sys.files.insert(
        PRODUCT_UUID_PATH.into(),
        b"4C4C4544-9999-1111-2222-333344445555\n".to_vec(),
    );
    assert_eq!(d.run(), 2);
    let all = d.sys.lines.join("\n");
    for want in [
        "cloned disk",
        &format!("machine-id: stored ffffffffffffffffffffffffffffffff, this machine {MID}"),
        "DMI product UUID: stored 4c4c4544-0000-1111-2222-333344445555, this machine 4c4c4544-9999-1111-2222-333344445555",
        "delete /var/lib/kiln",
    ] {
        assert!(all.contains(want), "missing {want:?} in {all}");
    }
    assert!(d.made.lock().unwrap().is_empty(), "no client was even made");
    assert!(d.log.lock().unwrap().is_empty(), "nothing written or sent");
}

#[test]
fn the_mesh_comes_up_from_cache_while_the_server_is_down() {
    let mut d = Daemon::new();
    let id = made_identity(&Log::default());
    d.sys
        .files
        .insert(IDENTITY_PATH.into(), identity::render(&id));
    let e = state::Enrollment {
        server: "https://10.0.2.100:8443".into(),
        ca_hash: [0xab; 32],
        answer: answer(id.public_key),
    };
    state::save_enrollment(&mut d.sys, &e).unwrap();
    let mut cached = e.answer.peers.clone();
    cached.version = 9;
    cached.peers.push(peer("later", 9));
    state::save_peers(&mut d.sys, &cached).unwrap();
    d.log.lock().unwrap().clear();
    d.api
        .heartbeat
        .lock()
        .unwrap()
        .push_back(Err(ApiError::Other {
            message: "connect 10.0.2.100:8443: connection refused".into(),
            retry: true,
        }));
    // Then, after a while, the server is back and says the node is revoked.
    for _ in 0..3 {
        d.api
            .heartbeat
            .lock()
            .unwrap()
            .push_back(Err(ApiError::Other {
                message: "connect 10.0.2.100:8443: connection refused".into(),
                retry: true,
            }));
    }
    d.api
        .heartbeat
        .lock()
        .unwrap()
        .push_back(Err(refused(ErrorCode::NodeRevoked, "gone")));
    assert_eq!(d.run(), 2);
    assert!(
        d.sys.has_line("kiln-overlay: mesh up from cache as node-a 10.77.0.2 fd00:1:2::2 mtu 1420 (3 peers) (kiln-enroll unreachable: connect 10.0.2.100:8443: connection refused)"),
        "{:?}",
        d.sys.lines
    );
    assert!(
        d.api.requests.lock().unwrap().is_empty(),
        "no second enrollment"
    );
    assert!(
        d.sys.has_line("kiln-overlay: peer later "),
        "{:?}",
        d.sys.lines
    );
    // The outage is printed once, not at every heartbeat.
    let outages = d
        .sys
        .lines
        .iter()
        .filter(|l| l.contains("unreachable: connect"))
        .count();
    assert_eq!(outages, 1, "{:?}", d.sys.lines);
}

#[test]
fn tick_takes_new_peer_lists_and_reports_bad_entries() {
    let (mut d, mut mesh, e) = mesh_up(answer);
    let before = d.net.set_calls;
    let (tx, rx) = std::sync::mpsc::channel();
    // Nothing new: nothing is written to the kernel.
    assert_eq!(
        run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx),
        None
    );
    assert_eq!(d.net.set_calls, before);
    // A first handshake is news: the server hears of it at once, not in 30 s.
    d.net.device.as_mut().unwrap().peers[0].last_handshake = Some(d.sys.now);
    d.api
        .heartbeat
        .lock()
        .unwrap()
        .push_back(Ok(HeartbeatAnswer {
            heartbeat_secs: 30,
            peers_version: 3,
        }));
    for _ in 0..3 {
        assert_eq!(
            run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx),
            None
        );
    }
    let hbs = d.api.heartbeats.lock().unwrap().clone();
    assert_eq!(hbs.len(), 1, "one heartbeat for the news, then the period");
    assert_eq!(hbs[0].observations[0].last_handshake, Some(d.sys.now));
    let mut list = e.answer.peers.clone();
    list.version = 4;
    list.peers.retain(|p| p.name != "natted");
    list.peers.push(Peer {
        allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
        ..peer("evil", 8)
    });
    tx.send(Event::Peers(list.clone())).unwrap();
    assert_eq!(
        run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx),
        None
    );
    assert!(
        d.sys
            .has_line("kiln-overlay: ERROR: peer list version 4: peer \"evil\""),
        "{:?}",
        d.sys.lines
    );
    assert!(d.sys.has_line("kiln-overlay: peer natted removed"));
    let saved: PeerList = serde_json::from_slice(&d.sys.files[PEERS_PATH]).unwrap();
    assert_eq!(saved, list);
    let dev = d.net.device.clone().unwrap();
    assert_eq!(dev.peers.len(), 1, "only the relay: {dev:?}");
    assert_eq!(
        dev.peers[0].allowed_ips.len(),
        2,
        "natted's addresses left the relay"
    );
    let status: state::StatusFile = serde_json::from_slice(&d.sys.files[STATUS_PATH]).unwrap();
    assert_eq!(status.paths["relay"], "direct 203.0.113.50:51820");
    assert_eq!(status.mtu, 1420);
    tx.send(Event::Revoked("refused (node_revoked): x".into()))
        .unwrap();
    assert_eq!(
        run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx),
        Some(2)
    );
}

#[test]
fn the_watch_sends_new_versions_and_stops_when_revoked() {
    let api = Arc::new(FakeApi::default());
    {
        let mut q = api.peers.lock().unwrap();
        q.push_back(Ok(PeerList {
            version: 5,
            peers: vec![],
        }));
        q.push_back(Ok(PeerList {
            version: 5,
            peers: vec![],
        }));
        q.push_back(Err(ApiError::Other {
            message: "timeout".into(),
            retry: true,
        }));
        q.push_back(Ok(PeerList {
            version: 6,
            peers: vec![],
        }));
        q.push_back(Err(refused(ErrorCode::NodeRevoked, "revoked")));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let auth = NodeAuth {
        name: "node-a".into(),
        credential: "c".repeat(32),
    };
    run::watch(api, auth, 3, tx, |_| {});
    let got: Vec<Event> = rx.try_iter().collect();
    assert_eq!(
        got,
        vec![
            Event::Peers(PeerList {
                version: 5,
                peers: vec![]
            }),
            Event::Trouble("timeout".into()),
            Event::Peers(PeerList {
                version: 6,
                peers: vec![]
            }),
            Event::Revoked("refused (node_revoked): revoked".into()),
        ]
    );
}

#[test]
fn endpoints_skip_loopback_link_local_overlay_and_containers() {
    let addrs: Vec<(String, IpAddr)> = [
        ("lo", "127.0.0.1"),
        ("lo", "::1"),
        ("eth0", "192.168.1.5"),
        ("eth0", "fe80::5"),
        ("eth0", "2001:db8::5"),
        ("eth1", "169.254.3.3"),
        ("kiln0", "10.77.0.2"),
        ("other", "10.77.0.9"),
        ("docker0", "172.17.0.1"),
        ("cni0", "10.42.0.1"),
        ("flannel.1", "10.42.0.0"),
        ("br-1234", "172.18.0.1"),
        ("kube-ipvs0", "10.43.0.1"),
        ("vethab", "10.42.0.5"),
        ("wlan0", "192.168.1.5"),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
    .collect();
    let got = enroll::local_endpoints(&addrs, 51820, &["10.77.0.0/16".parse().unwrap()]);
    let got: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["192.168.1.5:51820", "[2001:db8::5]:51820"]);
}

#[test]
fn backoff_doubles_to_a_minute_with_bounded_jitter() {
    let secs: Vec<u64> = (0..8).map(|a| run::BACKOFF.delay(a, 0).as_secs()).collect();
    assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(run::BACKOFF.delay(0, 255), Duration::from_millis(2500));
    assert_eq!(run::BACKOFF.delay(9, 255), Duration::from_secs(75));
}

#[test]
fn enroll_command_arguments() {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let a =
        settings::parse_enroll_args(&args(&["--server", "https://h", "--token", &token_text()]))
            .unwrap();
    assert_eq!(a.server.to_string(), "https://h:8443");
    assert_eq!(a.listen_port, 51820);
    let a = settings::parse_enroll_args(&args(&[
        "--server=https://[fd00::1]:9",
        &format!("--token={}", token_text()),
        "--endpoint",
        "203.0.113.1:51820",
        "--listen-port",
        "4000",
    ]))
    .unwrap();
    assert_eq!(a.server.to_string(), "https://[fd00::1]:9");
    assert_eq!(a.endpoint.as_deref(), Some("203.0.113.1:51820"));
    assert_eq!(a.listen_port, 4000);
    for (bad, why) in [
        (
            args(&["--token", &token_text()]),
            "--server URL is required",
        ),
        (args(&["--server", "http://h"]), "https://"),
        (
            args(&["--server", "https://h", "--token", "KLN1x"]),
            "--token: malformed token",
        ),
        (args(&["--server"]), "--server needs a value"),
        (args(&["--bogus"]), "unknown argument"),
        (
            args(&[
                "--server",
                "https://h",
                "--token",
                &token_text(),
                "--listen-port",
                "0",
            ]),
            "not a port",
        ),
    ] {
        let e = settings::parse_enroll_args(&bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
        assert!(!e.contains(&"s".repeat(32)), "secret leaked: {e}");
    }
}

#[test]
fn enroll_command_exit_codes() {
    let id = made_identity(&Log::default());
    let args = settings::EnrollArgs {
        server: crate::config::schema::ServerUrl::parse("https://10.0.2.100").unwrap(),
        token: kiln_enroll_proto::token::Token::parse(&token_text()).unwrap(),
        endpoint: None,
        listen_port: 51820,
    };
    for (result, code, want) in [
        (Ok(answer(id.public_key)), 0, "kiln-overlay: enrolled as node-a 10.77.0.2 fd00:1:2::2 (2 peers, server https://10.0.2.100:8443)"),
        (Err(refused(ErrorCode::TokenExpired, "token abc123 expired")), 2, "kiln-overlay: ERROR: enrollment refused (token_expired): token abc123 expired"),
        (Err(refused(ErrorCode::RateLimited, "slow down")), 1, "kiln-overlay: ERROR: enrollment failed: refused (rate_limited): slow down"),
        (Err(ApiError::Other { message: "connect: refused".into(), retry: true }), 1, "kiln-overlay: ERROR: enrollment failed: connect: refused"),
        (Err(ApiError::PinMismatch { expected: HASH.into(), presented: vec![] }), 2, "possible man in the middle"),
    ] {
        let mut d = Daemon::new();
        d.api.enroll.lock().unwrap().push_back(result);
        let api = d.api.clone();
        let make = move |_: &str, _: [u8; 32]| -> Result<Arc<dyn Api>, String> { Ok(api.clone()) };
        assert_eq!(enroll::enroll_once(&mut d.sys, &make, &args), code, "{:?}", d.sys.lines);
        assert!(d.sys.lines.iter().any(|l| l.contains(want)), "{want}: {:?}", d.sys.lines);
        assert_eq!(d.sys.files.contains_key(ENROLLMENT_PATH), code == 0);
    }
}

#[test]
fn status_lists_node_and_peers() {
    let mut d = Daemon::new();
    let id = made_identity(&Log::default());
    assert_eq!(status::status(&mut d.sys, &mut d.net), 1);
    assert!(d.sys.has_line("not enrolled"));
    let e = state::Enrollment {
        server: "https://10.0.2.100:8443".into(),
        ca_hash: [0xab; 32],
        answer: answer(id.public_key),
    };
    state::save_enrollment(&mut d.sys, &e).unwrap();
    state::save_status(
        &mut d.sys,
        &state::StatusFile {
            mtu: 1380,
            paths: [("relay".to_string(), "direct 203.0.113.50:51820".to_string())].into(),
        },
    )
    .unwrap();
    d.net.ensure_wireguard(IFNAME).unwrap();
    d.net.device.as_mut().unwrap().peers.push(WgPeerState {
        public_key: [5; 32],
        endpoint: Some("203.0.113.50:51820".parse().unwrap()),
        allowed_ips: vec![],
        last_handshake: Some(d.sys.now - 12),
        rx_bytes: 0,
        tx_bytes: 0,
        keepalive: 25,
    });
    d.sys.lines.clear();
    assert_eq!(status::status(&mut d.sys, &mut d.net), 0);
    assert_eq!(
        d.sys.lines,
        [
            "node node-a 10.77.0.2/16 fd00:1:2::2/64 mtu 1380 server https://10.0.2.100:8443 peers-version 3",
            "peer natted 10.77.0.7 - endpoint - handshake never",
            "peer relay 10.77.0.5 direct 203.0.113.50:51820 endpoint 203.0.113.50:51820 handshake 12s ago",
        ]
    );
}

#[test]
fn settings_need_server_and_token() {
    let log = Log::default();
    let mut sys = FakeSys::new(&log);
    sys.files.remove(CONFIG_PATH);
    assert_eq!(settings::load_settings(&mut sys).unwrap(), None);
    sys.files
        .insert(CONFIG_PATH.into(), b"hostname = \"x\"\n".to_vec());
    assert_eq!(settings::load_settings(&mut sys).unwrap(), None);
    sys.files.insert(
        CONFIG_PATH.into(),
        b"[enroll]\nserver = \"https://h\"\n".to_vec(),
    );
    let f = settings::load_settings(&mut sys).unwrap_err();
    assert_eq!(f.code, 2);
    assert!(
        f.message.contains("needs both server and token"),
        "{}",
        f.message
    );
    sys.files
        .insert(CONFIG_PATH.into(), config_text().into_bytes());
    let s = settings::load_settings(&mut sys).unwrap().unwrap();
    assert_eq!(
        (s.hostname.as_str(), s.listen_port, s.mtu),
        ("node-a", 51820, None)
    );
}

// ---------------------------------------------------------------------------------------
// Identity.

#[test]
fn identity_is_made_once_and_matches_wg() {
    let log = Log::default();
    let mut sys = FakeSys::new(&log);
    let id = identity::load_or_create(&mut sys).unwrap();
    let stored = sys.files[IDENTITY_PATH].clone();
    let again = identity::load_or_create(&mut sys).unwrap();
    assert_eq!(id, again);
    assert_eq!(sys.files[IDENTITY_PATH], stored, "not rewritten");
    assert_eq!(id.credential.len(), 32);
    assert!(id
        .credential
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert!(
        !format!("{id:?}").contains(&id.credential),
        "Debug hides secrets"
    );
    // wg is the referee for the public key.
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg (wireguard-tools) is needed for this test: apt-get install wireguard-tools");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", base64::encode(&id.private_key)).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        id.public_key.to_string()
    );
}

#[test]
fn damaged_identity_files_are_refused() {
    let log = Log::default();
    let mut sys = FakeSys::new(&log);
    let id = identity::load_or_create(&mut sys).unwrap();
    let text = String::from_utf8(identity::render(&id)).unwrap();
    let other = identity::public_of(&[9; 32]).to_string();
    for (bad, why) in [
        (
            text.replace(&id.public_key.to_string(), &other),
            "does not belong",
        ),
        (text.replace(&id.credential, "short"), "credential"),
        (
            text.replace("\"version\": 1", "\"version\": 2"),
            "version 2",
        ),
        (text.replace('{', "{\"x\": 1,"), "unknown field"),
    ] {
        sys.files.insert(IDENTITY_PATH.into(), bad.into_bytes());
        let f = identity::load_or_create(&mut sys).unwrap_err();
        assert!(
            f.message.contains(why) && f.message.contains("delete /var/lib/kiln"),
            "{}",
            f.message
        );
        assert_eq!(f.code, 2);
    }
    let mut sys = FakeSys::new(&log);
    sys.files.insert(MACHINE_ID_PATH.into(), b"\n".to_vec());
    assert_eq!(identity::load_or_create(&mut sys).unwrap_err().code, 1);
}

#[test]
fn credentials_are_unbiased() {
    // Bytes 252-255 would favour the first characters; they are skipped.
    let mut r = vec![255u8; 10];
    r.extend((0..40).map(|i| i as u8));
    let c = identity::credential_from(&r).unwrap();
    assert!(c.starts_with("abcdefghijklmnopqrstuvwxyz012345"), "{c}");
    assert_eq!(identity::credential_from(&[255; 64]), None);
}

#[test]
fn api_errors_say_what_to_do_and_whether_to_retry() {
    assert!(!refused(ErrorCode::TokenInvalid, "x").retryable());
    assert!(refused(ErrorCode::RateLimited, "x").retryable());
    assert!(refused(ErrorCode::NodeRevoked, "x").is_revoked());
    assert!(!refused(ErrorCode::Unauthorized, "x").is_revoked());
    let pin = ApiError::PinMismatch {
        expected: "aa".into(),
        presented: vec!["bb".into(), "cc".into()],
    };
    assert!(!pin.retryable());
    assert!(pin
        .to_string()
        .contains("the token pins aa, the server presented [bb, cc]"));
}

#[test]
fn every_probe_window_kicks_a_handshake_at_the_peer() {
    let (mut d, mut mesh, _) = mesh_up(|key| {
        let mut a = answer(key);
        // No relay: the LAN peer is probed window after window at its one endpoint.
        a.peers.peers.retain(|p| p.name != "relay");
        for p in a.peers.peers.iter_mut().filter(|p| p.name == "natted") {
            p.endpoints = vec!["10.0.2.16:51820".parse().unwrap()];
        }
        a
    });
    let (_tx, rx) = std::sync::mpsc::channel();
    let natted: IpAddr = "10.77.0.7".parse().unwrap();
    run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx);
    assert_eq!(d.sys.kicked, vec![natted], "{:?}", d.sys.lines);
    // Within the window: no second packet.
    d.sys.now += 2;
    run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx);
    assert_eq!(d.sys.kicked.len(), 1);
    // The next window at the same endpoint is a new chance: the kernel may have given up.
    d.sys.now += super::plan::PROBE_WINDOW_SECS;
    run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx);
    assert_eq!(d.sys.kicked, vec![natted, natted]);
}

/// A daemon whose kiln0 is up with [`answer`]'s peers, heartbeats off: (daemon, mesh,
/// enrollment).
fn mesh_up(a: impl FnOnce(PublicKey) -> EnrollAnswer) -> (Daemon, mesh::Mesh, state::Enrollment) {
    let mut d = Daemon::new();
    let id = made_identity(&Log::default());
    let e = state::Enrollment {
        server: "https://10.0.2.100:8443".into(),
        ca_hash: [0xab; 32],
        answer: a(id.public_key),
    };
    let s = settings::load_settings(&mut d.sys).unwrap().unwrap();
    let mut mesh = mesh::Mesh::new(id, e.clone(), &s);
    mesh.mtu = 1420;
    mesh.next_heartbeat = u64::MAX;
    mesh::accept_peers(&mut d.sys, &mut mesh, e.answer.peers.clone(), false);
    mesh::bring_up(&mut d.sys, &mut d.net, &mut mesh).unwrap();
    (d, mesh, e)
}

#[test]
fn a_direct_peer_is_asked_at_once_and_every_second_until_it_answers() {
    let (mut d, mut mesh, _) = mesh_up(answer);
    // kiln0 came up now (bringing it up does not move the fake clock).
    let up = d.sys.now;
    let relay: IpAddr = "10.77.0.5".parse().unwrap();
    let kicks = |d: &Daemon| d.sys.kicked.iter().filter(|k| **k == relay).count();
    // The relay (public, direct) is asked as soon as kiln0 is up, not at its keepalive.
    assert_eq!(kicks(&d), 1, "{:?}", d.sys.kicked);
    let (_tx, rx) = std::sync::mpsc::channel();
    let calls = d.net.set_calls;
    let tick = |d: &mut Daemon, mesh: &mut mesh::Mesh| {
        assert_eq!(
            run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), mesh, None, &rx),
            None
        );
    };
    // Within the same tick: nothing again.
    tick(&mut d, &mut mesh);
    assert_eq!((kicks(&d), d.net.set_calls), (1, calls));
    // It dropped that initiation (it did not know us yet): every second, the kernel peer
    // is made anew (lifting the kernel's 5 s pause between initiations) and kicked.
    for round in 1..=3 {
        d.sys.now += run::INITIATE_EVERY.as_secs();
        tick(&mut d, &mut mesh);
        assert_eq!(kicks(&d), 1 + round, "round {round}");
        assert_eq!(d.net.set_calls, calls + round, "round {round}");
        let dev = d.net.device.clone().unwrap();
        let p = dev.peers.iter().find(|p| p.public_key == [5; 32]).unwrap();
        assert_eq!(
            (p.endpoint, p.keepalive),
            (Some("203.0.113.50:51820".parse().unwrap()), 25),
            "the peer is made again as it was"
        );
    }
    assert!(mesh.still_initiating(d.sys.now));
    // After INITIATE_SECS the kernel's own retries carry on alone, and the daemon goes
    // back to waking every TICK.
    d.sys.now = up + run::INITIATE_SECS + 1;
    assert!(!mesh.still_initiating(d.sys.now));
    tick(&mut d, &mut mesh);
    let (k, c) = (kicks(&d), d.net.set_calls);
    d.sys.now += run::TICK.as_secs();
    tick(&mut d, &mut mesh);
    assert_eq!((kicks(&d), d.net.set_calls), (k, c));
    // The first handshake is printed once, with how long after the peer was added (here:
    // when kiln0 came up) it came.
    let dev = d.net.device.as_mut().unwrap();
    let p = dev
        .peers
        .iter_mut()
        .find(|p| p.public_key == [5; 32])
        .unwrap();
    p.last_handshake = Some(up + 3);
    tick(&mut d, &mut mesh);
    tick(&mut d, &mut mesh);
    let lines: Vec<&String> = d
        .sys
        .lines
        .iter()
        .filter(|l| l.contains("first handshake"))
        .collect();
    assert_eq!(
        lines,
        ["kiln-overlay: peer relay first handshake, 3 s after it was added"],
        "{:?}",
        d.sys.lines
    );
}

#[test]
fn a_peer_that_answered_is_never_made_again() {
    let (mut d, mut mesh, _) = mesh_up(answer);
    let now = d.sys.now;
    let dev = d.net.device.as_mut().unwrap();
    dev.peers
        .iter_mut()
        .find(|p| p.public_key == [5; 32])
        .unwrap()
        .last_handshake = Some(now);
    let (_tx, rx) = std::sync::mpsc::channel();
    let calls = d.net.set_calls;
    for _ in 0..5 {
        d.sys.now += run::TICK.as_secs();
        run::tick(&mut d.sys, &mut d.net, d.api.as_ref(), &mut mesh, None, &rx);
    }
    let dev = d.net.device.clone().unwrap();
    let p = dev.peers.iter().find(|p| p.public_key == [5; 32]).unwrap();
    assert_eq!(p.last_handshake, Some(now), "the session was kept");
    // `natted`'s LAN probe window (20 s) has not run out either: nothing was written.
    assert_eq!(d.net.set_calls, calls);
}

#[test]
fn the_real_system_hands_over_a_peer_list_as_soon_as_it_arrives() {
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.send(Event::Trouble("x".into())).unwrap();
        tx
    });
    let started = std::time::Instant::now();
    let ev = RealSys::default().next_event(&rx, Duration::from_secs(30));
    assert_eq!(ev, Some(Event::Trouble("x".into())));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let _tx = sender.join().unwrap();
    // Nothing more: the wait ends after its time.
    assert_eq!(
        RealSys::default().next_event(&rx, Duration::from_millis(20)),
        None
    );
}
