//! The store contract, each behaviour checked once and run against both backends: SQLite
//! in a temporary folder and PostgreSQL 15 in a throwaway cluster ([`TempPostgres`]):
//! tokens, enrollment, heartbeats, the CA, the cluster and its first server, and the
//! migration from schema version 1.
//! PostgreSQL not starting fails the test with the harness's message.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use kiln_enroll::pgtest::TempPostgres;
use kiln_enroll::store::{
    self, logic, CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, K3sCluster,
    KubeadmCluster, NodeRecord, Pools, Refusal, Store, StoreError, TokenRecord,
};
use kiln_enroll_proto::api::{Join, Observation, Role};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::{nth_host, ula_prefix};
use kiln_enroll_proto::token::secret_hash;
use sha2::{Digest, Sha256};

/// One database, and how to open more handles on it ("replicas").
struct Db {
    kind: &'static str,
    url: String,
    sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<TempPostgres>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        // A folder that does not exist yet: open must make it.
        let path = dir.path().join("state").join("state.db");
        Db {
            kind: "sqlite",
            url: format!("sqlite:{}", path.display()),
            sqlite_path: Some(path),
            _dir: Some(dir),
            _pg: None,
        }
    }

    fn postgres() -> Db {
        let pg = TempPostgres::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
        eprintln!("postgres started in {:?}", pg.started_in());
        let url = pg.database("kiln").unwrap();
        Db {
            kind: "postgres",
            url,
            sqlite_path: None,
            _dir: None,
            _pg: Some(pg),
        }
    }

    fn open(&self) -> Box<dyn Store> {
        store::open(&self.url).unwrap_or_else(|e| panic!("{}: open: {e}", self.kind))
    }

    /// Asks the sqlite3 program (an independent reader) whether the file is sound.
    fn check_sqlite_file(&self) {
        let Some(path) = &self.sqlite_path else {
            return;
        };
        match Command::new("sqlite3")
            .arg(path)
            .arg("PRAGMA integrity_check; SELECT count(*) FROM nodes;")
            .output()
        {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "sqlite3: {out:?}");
                assert_eq!(text.lines().next(), Some("ok"), "integrity_check: {text}");
            }
            Err(e) => println!("sqlite3 CLI not installed ({e}): integrity_check not run"),
        }
    }
}

/// Runs `body` against a fresh SQLite database, then a fresh PostgreSQL database.
fn each_backend(body: impl Fn(&Db)) {
    let db = Db::sqlite();
    body(&db);
    db.check_sqlite_file();
    let db = Db::postgres();
    body(&db);
}

const NOW: u64 = 1_700_000_000;

fn secret(n: u32) -> String {
    let mut s = format!("{n:032}");
    s.truncate(32);
    s.replace('0', "s")
}

fn token(id: &str, uses: u32, ttl: u64) -> TokenRecord {
    TokenRecord {
        id: id.to_string(),
        secret_hash: secret_hash(&secret(1)),
        created: NOW,
        expires: NOW + ttl,
        uses_total: uses,
        uses_left: uses,
        role: Role::Worker,
        labels: BTreeMap::from([("zone".to_string(), "lab".to_string())]),
        revoked: false,
    }
}

fn key(n: u32) -> PublicKey {
    PublicKey(Sha256::digest(format!("key {n}")).into())
}

fn input(token_id: &str, n: u32, hostname: &str) -> EnrollInput {
    EnrollInput {
        token_id: token_id.to_string(),
        secret_hash: secret_hash(&secret(1)),
        public_key: key(n),
        credential_hash: Sha256::digest(format!("cred {n}")).into(),
        hostname: hostname.to_string(),
        arch: "x86_64".to_string(),
        endpoints: vec![format!("192.168.7.{}:51820", n % 250 + 1).parse().unwrap()],
        public_endpoint: None,
        now: NOW + 10,
    }
}

fn pools() -> Pools {
    Pools {
        v4: "10.77.0.0/16".parse().unwrap(),
        v6: logic::v6_pool(ula_prefix(&[1; 32])),
    }
}

fn new_node(db: &Db, s: &dyn Store, i: &EnrollInput, p: &Pools) -> NodeRecord {
    match s.enroll(i, p) {
        Ok(EnrollOutcome::New(n)) => n,
        other => panic!("{}: expected a new node, got {other:?}", db.kind),
    }
}

fn refused(db: &Db, got: Result<EnrollOutcome, StoreError>, want: Refusal) {
    match got {
        Err(StoreError::Refused(r)) if r == want => {}
        other => panic!("{}: expected {want:?}, got {other:?}", db.kind),
    }
}

fn uses_left(s: &dyn Store, id: &str) -> u32 {
    s.tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap()
        .uses_left
}

#[test]
fn tokens_are_created_listed_and_revoked() {
    each_backend(|db| {
        let s = db.open();
        let b = token("bbbbbb", 3, 3600);
        let mut a = token("aaaaaa", 1, 60);
        a.role = Role::Server;
        a.labels.clear();
        s.create_token(&b).unwrap();
        s.create_token(&a).unwrap();
        assert_eq!(
            s.tokens().unwrap(),
            vec![a.clone(), b.clone()],
            "{}",
            db.kind
        );
        // Ids are random; a clash must fail, not overwrite.
        let Err(StoreError::Backend { what, retry }) = s.create_token(&a) else {
            panic!("{}: duplicate id accepted", db.kind)
        };
        assert!(
            what.contains("token aaaaaa") && !retry,
            "{}: {what}",
            db.kind
        );
        assert!(s.revoke_token("bbbbbb").unwrap());
        assert!(!s.revoke_token("zzzzzz").unwrap());
        let listed = s.tokens().unwrap();
        assert!(
            listed[1].revoked && !listed[0].revoked,
            "{}: {listed:?}",
            db.kind
        );
        // Another handle (a restart) sees the same.
        assert_eq!(db.open().tokens().unwrap(), listed, "{}", db.kind);
    });
}

#[test]
fn enrollment_records_the_node_takes_a_use_and_bumps_the_version() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("tok001", 2, 3600)).unwrap();
        assert_eq!(s.peers_version().unwrap(), 0);
        let mut i = input("tok001", 1, "web");
        i.public_endpoint = Some("198.51.100.4:51820".into());
        let n = new_node(db, &*s, &i, &pools());
        assert_eq!(n.name, "web");
        assert_eq!(n.address_v4.to_string(), "10.77.0.1");
        assert_eq!(Some(n.address_v6), nth_host(&pools().v6, 1), "{}", db.kind);
        assert_eq!(
            (n.role, n.labels.get("zone").map(String::as_str)),
            (Role::Worker, Some("lab"))
        );
        assert_eq!(
            (n.enrolled, n.online, n.revoked, n.last_heartbeat),
            (NOW + 10, true, false, None)
        );
        assert_eq!(n.public_endpoint, i.public_endpoint);
        assert_eq!(uses_left(&*s, "tok001"), 1, "{}", db.kind);
        assert_eq!(s.peers_version().unwrap(), 1, "{}", db.kind);
        assert_eq!(s.node("web").unwrap(), Some(n.clone()), "{}", db.kind);
        assert_eq!(s.node("nope").unwrap(), None);
        // Same hostname, other key: next address, suffixed name.
        let m = new_node(db, &*s, &input("tok001", 2, "web"), &pools());
        assert_eq!(
            (m.name.as_str(), m.address_v4.to_string()),
            ("web-2", "10.77.0.2".into())
        );
        let (v, nodes) = s.snapshot().unwrap();
        assert_eq!((v, nodes), (2, vec![n, m]), "{}", db.kind);
    });
}

#[test]
fn the_same_node_retrying_gets_its_record_without_using_the_token() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("once01", 1, 3600)).unwrap();
        let first = new_node(db, &*s, &input("once01", 1, "a"), &pools());
        // Later, after expiry, with the token used up: still the same record.
        let mut again = input("once01", 1, "other-name");
        again.now = NOW + 7200;
        match s.enroll(&again, &pools()) {
            Ok(EnrollOutcome::Existing(n)) => assert_eq!(n, first, "{}", db.kind),
            other => panic!("{}: {other:?}", db.kind),
        }
        assert_eq!(uses_left(&*s, "once01"), 0);
        assert_eq!(s.peers_version().unwrap(), 1, "{}: retry bumped", db.kind);
        // Another key with the used-up token.
        refused(
            db,
            s.enroll(&input("once01", 2, "b"), &pools()),
            Refusal::TokenUsedUp,
        );
        assert_eq!(s.nodes().unwrap().len(), 1);
    });
}

#[test]
fn bad_tokens_are_refused_and_change_nothing() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("expire", 5, 60)).unwrap();
        s.create_token(&token("revokd", 5, 3600)).unwrap();
        s.revoke_token("revokd").unwrap();
        let mut late = input("expire", 1, "a");
        late.now = NOW + 60;
        refused(db, s.enroll(&late, &pools()), Refusal::TokenExpired);
        refused(
            db,
            s.enroll(&input("revokd", 1, "a"), &pools()),
            Refusal::TokenRevoked,
        );
        let mut wrong = input("expire", 1, "a");
        wrong.secret_hash = secret_hash(&secret(2));
        refused(db, s.enroll(&wrong, &pools()), Refusal::TokenInvalid);
        // Unknown id: the same refusal as a wrong secret.
        refused(
            db,
            s.enroll(&input("nosuch", 1, "a"), &pools()),
            Refusal::TokenInvalid,
        );
        assert_eq!(uses_left(&*s, "expire"), 5);
        assert_eq!(uses_left(&*s, "revokd"), 5);
        assert!(s.nodes().unwrap().is_empty());
        assert_eq!(s.peers_version().unwrap(), 0, "{}", db.kind);
    });
}

#[test]
fn an_exhausted_pool_refuses_without_using_the_token() {
    each_backend(|db| {
        let s = db.open();
        let small = Pools {
            v4: "10.99.0.4/30".parse().unwrap(),
            v6: pools().v6,
        };
        s.create_token(&token("pool01", 5, 3600)).unwrap();
        let a = new_node(db, &*s, &input("pool01", 1, "a"), &small);
        let b = new_node(db, &*s, &input("pool01", 2, "b"), &small);
        assert_eq!(
            (a.address_v4.to_string(), b.address_v4.to_string()),
            ("10.99.0.5".into(), "10.99.0.6".into()),
            "{}",
            db.kind
        );
        refused(
            db,
            s.enroll(&input("pool01", 3, "c"), &small),
            Refusal::PoolExhausted,
        );
        assert_eq!(uses_left(&*s, "pool01"), 3, "{}", db.kind);
        // A revoked node's address is never handed out again.
        assert!(s.revoke_node("a").unwrap());
        refused(
            db,
            s.enroll(&input("pool01", 3, "c"), &small),
            Refusal::PoolExhausted,
        );
        assert_eq!(uses_left(&*s, "pool01"), 3, "{}", db.kind);
    });
}

#[test]
fn another_enrollment_of_the_same_key_is_a_conflict() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("conf01", 5, 3600)).unwrap();
        s.create_token(&token("conf02", 5, 3600)).unwrap();
        new_node(db, &*s, &input("conf01", 1, "a"), &pools());
        let mut clone = input("conf01", 1, "a");
        clone.credential_hash = [42; 32];
        refused(db, s.enroll(&clone, &pools()), Refusal::NodeConflict);
        // Same key and credential through another token: also not the same enrollment.
        refused(
            db,
            s.enroll(&input("conf02", 1, "a"), &pools()),
            Refusal::NodeConflict,
        );
        assert_eq!((uses_left(&*s, "conf01"), uses_left(&*s, "conf02")), (4, 5));
        assert_eq!(s.nodes().unwrap().len(), 1);
    });
}

#[test]
fn a_revoked_node_is_refused_and_left_out_of_the_peer_list() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("revn01", 5, 3600)).unwrap();
        new_node(db, &*s, &input("revn01", 1, "a"), &pools());
        new_node(db, &*s, &input("revn01", 2, "b"), &pools());
        assert!(s.revoke_node("a").unwrap());
        assert!(!s.revoke_node("zz").unwrap());
        assert_eq!(s.peers_version().unwrap(), 3, "{}", db.kind);
        // Revoking twice changes nothing a peer sees.
        assert!(s.revoke_node("a").unwrap());
        assert_eq!(s.peers_version().unwrap(), 3, "{}", db.kind);
        refused(
            db,
            s.enroll(&input("revn01", 1, "a"), &pools()),
            Refusal::NodeRevoked,
        );
        let (v, nodes) = s.snapshot().unwrap();
        let list = logic::peer_list(v, &nodes);
        let names: Vec<&str> = list.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b"], "{}", db.kind);
        let hb = HeartbeatInput {
            endpoints: vec![],
            public_endpoint: None,
            observations: vec![],
        };
        assert_eq!(
            s.heartbeat("a", &hb, NOW + 20, 120),
            Err(StoreError::Refused(Refusal::NodeRevoked))
        );
        assert_eq!(
            s.heartbeat("ghost", &hb, NOW + 20, 120),
            Err(StoreError::Refused(Refusal::UnknownNode))
        );
    });
}

#[test]
fn heartbeats_and_expiry_move_nodes_online_and_offline() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("hbt001", 5, 3600)).unwrap();
        let a = new_node(db, &*s, &input("hbt001", 1, "a"), &pools());
        new_node(db, &*s, &input("hbt001", 2, "b"), &pools());
        let v0 = s.peers_version().unwrap();
        // Same endpoints as enrolled: recorded, nothing a peer sees changed.
        let same = HeartbeatInput {
            endpoints: a.endpoints.clone(),
            public_endpoint: None,
            observations: vec![],
        };
        s.heartbeat("a", &same, NOW + 20, 120).unwrap();
        assert_eq!(s.node("a").unwrap().unwrap().last_heartbeat, Some(NOW + 20));
        assert_eq!(s.peers_version().unwrap(), v0, "{}", db.kind);
        let moved = HeartbeatInput {
            endpoints: vec!["10.0.0.9:51820".parse().unwrap()],
            ..same.clone()
        };
        s.heartbeat("a", &moved, NOW + 30, 120).unwrap();
        assert_eq!(s.peers_version().unwrap(), v0 + 1, "{}", db.kind);
        // b enrolled at NOW+10 and stayed silent; a was heard at NOW+30.
        assert_eq!(s.expire(NOW + 100, 90).unwrap(), 0);
        assert_eq!(s.expire(NOW + 101, 90).unwrap(), 1, "{}", db.kind);
        assert_eq!(s.peers_version().unwrap(), v0 + 2, "{}", db.kind);
        assert_eq!(s.expire(NOW + 102, 90).unwrap(), 0);
        assert_eq!(s.peers_version().unwrap(), v0 + 2, "{}", db.kind);
        let (v, nodes) = s.snapshot().unwrap();
        let list = logic::peer_list(v, &nodes);
        assert!(list.peers[0].online && !list.peers[1].online, "{list:?}");
        assert!(list.peers[1].endpoints.is_empty());
        // b speaks again.
        let b_hb = HeartbeatInput {
            endpoints: vec!["10.0.0.10:51820".parse().unwrap()],
            public_endpoint: None,
            observations: vec![],
        };
        s.heartbeat("b", &b_hb, NOW + 110, 120).unwrap();
        let b = s.node("b").unwrap().unwrap();
        assert!(b.online && b.last_heartbeat == Some(NOW + 110));
        assert_eq!(s.peers_version().unwrap(), v0 + 3, "{}", db.kind);
        assert_eq!(
            s.expire(NOW + 125, 90).unwrap(),
            1,
            "{}: a (NOW+30) expires",
            db.kind
        );
    });
}

#[test]
fn a_peer_reaching_the_claimed_endpoint_makes_a_node_public() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("pub001", 5, 3600)).unwrap();
        let mut ia = input("pub001", 1, "a");
        ia.public_endpoint = Some("203.0.113.10:51820".into());
        new_node(db, &*s, &ia, &pools());
        new_node(db, &*s, &input("pub001", 2, "b"), &pools());
        let seen = |at: u64| HeartbeatInput {
            endpoints: vec![],
            public_endpoint: None,
            observations: vec![Observation {
                public_key: key(1),
                endpoint: Some("203.0.113.10:51820".parse().unwrap()),
                last_handshake: Some(at),
            }],
        };
        // A handshake 10 minutes old proves nothing.
        s.heartbeat("b", &seen(NOW), NOW + 600, 120).unwrap();
        assert!(
            !s.node("a").unwrap().unwrap().public_verified,
            "{}",
            db.kind
        );
        let v = s.peers_version().unwrap();
        s.heartbeat("b", &seen(NOW + 590), NOW + 600, 120).unwrap();
        assert!(s.node("a").unwrap().unwrap().public_verified, "{}", db.kind);
        assert_eq!(s.peers_version().unwrap(), v + 1, "{}", db.kind);
        let (v, nodes) = s.snapshot().unwrap();
        let list = logic::peer_list(v, &nodes);
        assert!(
            list.peers[0].public && !list.peers[1].public,
            "{}: {list:?}",
            db.kind
        );
    });
}

#[test]
fn a_hundred_threads_share_a_token_of_37_uses() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("race37", 37, 3600)).unwrap();
        let outcomes: Vec<Result<EnrollOutcome, StoreError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..100)
                .map(|n| {
                    let s = &*s;
                    sc.spawn(move || s.enroll(&input("race37", n, "node"), &pools()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut new = Vec::new();
        for o in outcomes {
            match o {
                Ok(EnrollOutcome::New(n)) => new.push(n),
                Err(StoreError::Refused(Refusal::TokenUsedUp)) => {}
                other => panic!("{}: {other:?}", db.kind),
            }
        }
        assert_eq!(new.len(), 37, "{}", db.kind);
        let addrs: BTreeSet<_> = new.iter().map(|n| n.address_v4).collect();
        let names: BTreeSet<_> = new.iter().map(|n| n.name.clone()).collect();
        assert_eq!((addrs.len(), names.len()), (37, 37), "{}", db.kind);
        // Lowest free first: exactly .1 to .37.
        assert_eq!(addrs.iter().last().unwrap().to_string(), "10.77.0.37");
        assert_eq!(uses_left(&*s, "race37"), 0, "{}", db.kind);
        assert_eq!(s.nodes().unwrap().len(), 37);
        assert_eq!(s.peers_version().unwrap(), 37, "{}", db.kind);
    });
}

#[test]
fn two_replicas_enrolling_at_once_never_share_an_address() {
    each_backend(|db| {
        let one = db.open();
        let two = db.open();
        one.create_token(&token("repl01", 1000, 3600)).unwrap();
        std::thread::scope(|sc| {
            for t in 0..4u32 {
                let s = if t % 2 == 0 { &*one } else { &*two };
                sc.spawn(move || {
                    for k in 0..15u32 {
                        let n = t * 100 + k;
                        s.enroll(&input("repl01", n, "r"), &pools()).unwrap();
                    }
                });
            }
        });
        let nodes = two.nodes().unwrap();
        let addrs: BTreeSet<_> = nodes.iter().map(|n| n.address_v4).collect();
        let v6: BTreeSet<_> = nodes.iter().map(|n| n.address_v6).collect();
        assert_eq!(
            (nodes.len(), addrs.len(), v6.len()),
            (60, 60, 60),
            "{}",
            db.kind
        );
        assert_eq!(uses_left(&*one, "repl01"), 940, "{}", db.kind);
    });
}

#[test]
fn the_first_ca_wins_for_every_handle() {
    each_backend(|db| {
        let handles: Vec<Box<dyn Store>> = (0..4).map(|_| db.open()).collect();
        let got: Vec<CaPem> = std::thread::scope(|sc| {
            let joins: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    sc.spawn(move || {
                        let make = move || {
                            Ok(CaPem {
                                cert_pem: format!("cert {i}"),
                                key_pem: format!("key {i}"),
                            })
                        };
                        s.ca(&make).unwrap()
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{}: {got:?}", db.kind);
        assert_eq!(got[0].key_pem.replace("key", "cert"), got[0].cert_pem);
        // Once stored, the generator is not asked again.
        let again = db
            .open()
            .ca(&|| Err("must not be called".to_string()))
            .unwrap();
        assert_eq!(again, got[0], "{}", db.kind);
    });
}

#[test]
fn reopening_migrates_nothing_twice_and_keeps_the_data() {
    each_backend(|db| {
        let s = db.open();
        s.create_token(&token("keep01", 2, 3600)).unwrap();
        new_node(db, &*s, &input("keep01", 1, "a"), &pools());
        drop(s);
        let s = db.open();
        let s2 = db.open();
        assert_eq!(s.nodes().unwrap(), s2.nodes().unwrap());
        assert_eq!(
            (s.peers_version().unwrap(), uses_left(&*s, "keep01")),
            (1, 1)
        );
    });
}

#[test]
fn sqlite_files_are_private_and_errors_name_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let db = Db::sqlite();
    drop(db.open());
    let path = db.sqlite_path.as_ref().unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    // A regular file where a folder should be.
    let bad = path.join("x.db");
    let Err(e) = store::open(&format!("sqlite:{}", bad.display())) else {
        panic!("opened below a file")
    };
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(!e.retryable());
}

#[test]
fn an_unreachable_postgres_is_a_retryable_error_naming_host_not_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Err(e) = store::open(&format!("postgres://kiln:hunter2@127.0.0.1:{port}/kiln")) else {
        panic!("connected to a closed port")
    };
    let text = e.to_string();
    assert!(e.retryable(), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}/kiln")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

fn server_token(id: &str, uses: u32) -> TokenRecord {
    let mut t = token(id, uses, 3600);
    t.role = Role::Server;
    t
}

fn k3s_cluster(url: Option<&str>) -> Cluster {
    Cluster::K3s(K3sCluster {
        server_url: url.map(str::to_string),
        init_node: None,
        token: "server-secret".to_string(),
        agent_token: "agent-secret".to_string(),
    })
}

fn first_server(s: &dyn Store) -> Option<String> {
    match s.cluster().unwrap() {
        Some(Cluster::K3s(k)) => k.init_node,
        other => panic!("not a k3s cluster: {other:?}"),
    }
}

#[test]
fn the_first_k3s_server_is_chosen_inside_its_enrollment() {
    each_backend(|db| {
        let s = db.open();
        assert_eq!(s.cluster().unwrap(), None, "{}", db.kind);
        assert!(s.set_cluster(&k3s_cluster(None), false).unwrap());
        s.create_token(&token("wrk001", 5, 3600)).unwrap();
        s.create_token(&server_token("srv001", 5)).unwrap();
        // A worker first: nobody starts the cluster yet.
        let w = new_node(db, &*s, &input("wrk001", 1, "w"), &pools());
        assert_eq!(first_server(&*s), None, "{}", db.kind);
        assert_eq!(s.claim_first_server(&w.name).unwrap(), s.cluster().unwrap());
        assert_eq!(first_server(&*s), None, "{}: a worker claimed", db.kind);
        let a = new_node(db, &*s, &input("srv001", 2, "a"), &pools());
        assert_eq!(first_server(&*s).as_deref(), Some("a"), "{}", db.kind);
        // Retrying, a second server, a claim by it: the first stays.
        match s.enroll(&input("srv001", 2, "a"), &pools()) {
            Ok(EnrollOutcome::Existing(n)) => assert_eq!(n, a),
            other => panic!("{}: {other:?}", db.kind),
        }
        new_node(db, &*s, &input("srv001", 3, "b"), &pools());
        s.claim_first_server("b").unwrap();
        assert_eq!(first_server(&*s).as_deref(), Some("a"), "{}", db.kind);
        // What each is told follows from the stored choice.
        let c = s.cluster().unwrap().unwrap();
        let nodes = s.nodes().unwrap();
        let by = |n: &str| nodes.iter().find(|x| x.name == n).unwrap();
        let Join::K3s(ja) = logic::join_for(&c, by("a"), Some(by("a"))) else {
            panic!()
        };
        let Join::K3s(jb) = logic::join_for(&c, by("b"), Some(by("a"))) else {
            panic!()
        };
        let Join::K3s(jw) = logic::join_for(&c, by("w"), Some(by("a"))) else {
            panic!()
        };
        assert!(ja.init && !jb.init && !jw.init, "{}", db.kind);
        let url = format!("https://{}:6443", a.address_v4);
        assert_eq!(jb.server_url.as_deref(), Some(url.as_str()));
        assert_eq!(jw.server_url.as_deref(), Some(url.as_str()));
        assert_eq!(
            (jw.token.as_str(), jw.agent_token),
            ("agent-secret", None),
            "{}",
            db.kind
        );
        // A replaced cluster forgets its first server; a server enrolled earlier takes it
        // when it asks.
        assert!(!s.set_cluster(&k3s_cluster(None), false).unwrap());
        assert!(s.set_cluster(&k3s_cluster(None), true).unwrap());
        assert_eq!(first_server(&*s), None, "{}", db.kind);
        s.claim_first_server("b").unwrap();
        assert_eq!(first_server(&*s).as_deref(), Some("b"), "{}", db.kind);
        // A cluster with a given URL never gets a first server.
        assert!(s
            .set_cluster(&k3s_cluster(Some("https://k3s.example:6443")), true)
            .unwrap());
        new_node(db, &*s, &input("srv001", 4, "c"), &pools());
        assert_eq!(first_server(&*s), None, "{}", db.kind);
    });
}

#[test]
fn twenty_servers_enrolling_at_once_make_exactly_one_first_server() {
    each_backend(|db| {
        let one = db.open();
        let two = db.open();
        one.set_cluster(&k3s_cluster(None), false).unwrap();
        one.create_token(&server_token("srv020", 20)).unwrap();
        let nodes: Vec<NodeRecord> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..20u32)
                .map(|n| {
                    let s = if n % 2 == 0 { &*one } else { &*two };
                    sc.spawn(move || new_node(db, s, &input("srv020", n, "srv"), &pools()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let c = two.cluster().unwrap().unwrap();
        let first = first_server(&*two).unwrap();
        let first_rec = nodes.iter().find(|n| n.name == first).unwrap();
        let inits = nodes
            .iter()
            .filter(|n| match logic::join_for(&c, n, Some(first_rec)) {
                Join::K3s(k) => k.init,
                Join::Kubeadm(_) => false,
            })
            .count();
        assert_eq!(inits, 1, "{}", db.kind);
    });
}

#[test]
fn a_kubeadm_cluster_is_stored_replaced_and_cleared() {
    each_backend(|db| {
        let s = db.open();
        let kubeadm = Cluster::Kubeadm(KubeadmCluster {
            endpoint: "10.77.0.1:6443".to_string(),
            token: "abcdef.0123456789abcdef".to_string(),
            ca_cert_hashes: vec![
                format!("sha256:{}", "ab".repeat(32)),
                format!("sha256:{}", "cd".repeat(32)),
            ],
            certificate_key: Some("ef".repeat(32)),
        });
        assert!(s.set_cluster(&kubeadm, false).unwrap());
        assert_eq!(
            db.open().cluster().unwrap(),
            Some(kubeadm.clone()),
            "{}",
            db.kind
        );
        // Debug output (what could reach a log) carries no secret.
        let debug = format!("{kubeadm:?}");
        assert!(!debug.contains("0123456789abcdef") && !debug.contains(&"ef".repeat(32)));
        assert!(!s.set_cluster(&k3s_cluster(None), false).unwrap());
        assert_eq!(s.cluster().unwrap(), Some(kubeadm), "{}", db.kind);
        assert!(s.set_cluster(&k3s_cluster(None), true).unwrap());
        assert_eq!(s.cluster().unwrap(), Some(k3s_cluster(None)), "{}", db.kind);
        assert!(s.clear_cluster().unwrap());
        assert!(!s.clear_cluster().unwrap());
        assert_eq!(s.cluster().unwrap(), None, "{}", db.kind);
    });
}

/// Schema version 1 exactly as kiln-enroll wrote it before the cluster table existed.
const SCHEMA_1_SQLITE: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE ca (id INTEGER PRIMARY KEY CHECK (id = 1), cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, created INTEGER NOT NULL,
    expires INTEGER NOT NULL, uses_total INTEGER NOT NULL, uses_left INTEGER NOT NULL,
    role TEXT NOT NULL, labels TEXT NOT NULL, revoked INTEGER NOT NULL);
CREATE TABLE nodes (name TEXT PRIMARY KEY, public_key BLOB NOT NULL UNIQUE,
    credential_hash BLOB NOT NULL, token_id TEXT NOT NULL, address_v4 TEXT NOT NULL UNIQUE,
    address_v6 TEXT NOT NULL UNIQUE, arch TEXT NOT NULL, role TEXT NOT NULL, labels TEXT NOT NULL,
    enrolled INTEGER NOT NULL, revoked INTEGER NOT NULL, last_heartbeat INTEGER,
    online INTEGER NOT NULL, endpoints TEXT NOT NULL, public_endpoint TEXT,
    public_verified INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('peers_version', '1'), ('schema_version', '1');
";

const SCHEMA_1_POSTGRES: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE ca (id INTEGER PRIMARY KEY CHECK (id = 1), cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash BYTEA NOT NULL, created BIGINT NOT NULL,
    expires BIGINT NOT NULL, uses_total BIGINT NOT NULL, uses_left BIGINT NOT NULL,
    role TEXT NOT NULL, labels TEXT NOT NULL, revoked BOOLEAN NOT NULL);
CREATE TABLE nodes (name TEXT PRIMARY KEY, public_key BYTEA NOT NULL UNIQUE,
    credential_hash BYTEA NOT NULL, token_id TEXT NOT NULL, address_v4 TEXT NOT NULL UNIQUE,
    address_v6 TEXT NOT NULL UNIQUE, arch TEXT NOT NULL, role TEXT NOT NULL, labels TEXT NOT NULL,
    enrolled BIGINT NOT NULL, revoked BOOLEAN NOT NULL, last_heartbeat BIGINT,
    online BOOLEAN NOT NULL, endpoints TEXT NOT NULL, public_endpoint TEXT,
    public_verified BOOLEAN NOT NULL);
INSERT INTO meta (key, value) VALUES ('peers_version', '1'), ('schema_version', '1');
";

/// The version-1 rows: one server token with one use taken by node `old`.
const OLD_TOKEN: &str = "INSERT INTO tokens VALUES ('old001', $1, 1700000000, 1700003600, 2, 1, \
                         'server', '{\"zone\":\"lab\"}', false)";
const OLD_NODE: &str = "INSERT INTO nodes VALUES ('old', $1, $2, 'old001', '10.77.0.1', \
                        'fd00::1', 'x86_64', 'server', '{\"zone\":\"lab\"}', 1700000010, false, \
                        NULL, true, '[\"192.168.7.2:51820\"]', NULL, false)";

fn schema_version_of(db: &Db) -> String {
    let q = "SELECT value FROM meta WHERE key = 'schema_version'";
    match &db.sqlite_path {
        Some(p) => rusqlite::Connection::open(p)
            .unwrap()
            .query_row(q, [], |r| r.get(0))
            .unwrap(),
        None => postgres::Client::connect(&db.url, postgres::NoTls)
            .unwrap()
            .query_one(q, &[])
            .unwrap()
            .get(0),
    }
}

#[test]
fn a_schema_1_database_is_migrated_keeping_nodes_and_tokens() {
    each_backend(|db| {
        let secret_h = secret_hash(&secret(1)).to_vec();
        let pk = key(1).0.to_vec();
        let cred: Vec<u8> = Sha256::digest("cred 1").to_vec();
        match &db.sqlite_path {
            Some(p) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let c = rusqlite::Connection::open(p).unwrap();
                c.execute_batch(SCHEMA_1_SQLITE).unwrap();
                c.execute(&OLD_TOKEN.replace("$1", "?1"), [&secret_h])
                    .unwrap();
                c.execute(
                    &OLD_NODE.replace("$1", "?1").replace("$2", "?2"),
                    [&pk, &cred],
                )
                .unwrap();
                drop(c);
                // As private as kiln-enroll made its files then (it refuses others).
                use std::os::unix::fs::PermissionsExt;
                let set = |path: &std::path::Path, mode: u32| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
                };
                set(p, 0o600);
                set(p.parent().unwrap(), 0o700);
            }
            None => {
                let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
                c.batch_execute(SCHEMA_1_POSTGRES).unwrap();
                c.execute(OLD_TOKEN, &[&secret_h]).unwrap();
                c.execute(OLD_NODE, &[&pk, &cred]).unwrap();
            }
        }
        assert_eq!(schema_version_of(db), "1");
        let s = db.open();
        assert_eq!(schema_version_of(db), "3", "{}", db.kind);
        // Schema 3's rows count as changed at the version of the migration: a node at
        // that version has nothing new, one at 0 gets them.
        assert_eq!(s.refresh().unwrap(), 1);
        let (_, d) = s.feed().changes(1);
        let d: kiln_enroll_proto::api::PeerDelta = serde_json::from_slice(&d).unwrap();
        assert!(
            d.peers.is_empty() && d.since == Some(1),
            "{}: {d:?}",
            db.kind
        );
        let (_, d) = s.feed().changes(0);
        let d: kiln_enroll_proto::api::PeerDelta = serde_json::from_slice(&d).unwrap();
        assert_eq!(d.peers.len(), 1, "{}", db.kind);
        let tokens = s.tokens().unwrap();
        assert_eq!(tokens.len(), 1, "{}", db.kind);
        assert_eq!(
            (tokens[0].id.as_str(), tokens[0].uses_left, tokens[0].role),
            ("old001", 1, Role::Server)
        );
        let old = s.node("old").unwrap().unwrap();
        assert_eq!(
            (old.address_v4.to_string(), old.token_id.as_str(), old.role),
            ("10.77.0.1".to_string(), "old001", Role::Server),
            "{}",
            db.kind
        );
        assert_eq!(s.peers_version().unwrap(), 1);
        assert_eq!(s.cluster().unwrap(), None);
        // The old node keeps working: its retry is recognised; a cluster set now reaches it.
        let mut again = input("old001", 1, "old");
        again.now = NOW + 5000;
        match s.enroll(&again, &pools()) {
            Ok(EnrollOutcome::Existing(n)) => assert_eq!(n, old, "{}", db.kind),
            other => panic!("{}: {other:?}", db.kind),
        }
        assert!(s.set_cluster(&k3s_cluster(None), false).unwrap());
        s.claim_first_server("old").unwrap();
        assert_eq!(first_server(&*s).as_deref(), Some("old"), "{}", db.kind);
        // Opening again migrates nothing twice.
        drop(s);
        let s = db.open();
        assert_eq!(s.nodes().unwrap().len(), 1);
        assert_eq!(first_server(&*s).as_deref(), Some("old"), "{}", db.kind);
    });
}
