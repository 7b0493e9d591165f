//! The store contract, each behaviour checked once and run against both backends: SQLite
//! in a temporary folder and PostgreSQL 15 in a throwaway cluster ([`TempPostgres`]).
//! PostgreSQL not starting fails the test with the harness's message.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use kiln_enroll::pgtest::TempPostgres;
use kiln_enroll::store::{
    self, logic, CaPem, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, Pools, Refusal,
    Store, StoreError, TokenRecord,
};
use kiln_enroll_proto::api::{Observation, Role};
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
