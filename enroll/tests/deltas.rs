//! Peer-list deltas (API revision 2) through the real binary, on SQLite and PostgreSQL:
//! a node at version N gets exactly the changes since N (made by this server or by
//! another process on the same state), one too far behind gets the whole list, and
//! requests without the revision header get exactly what deployed agents expect.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use kiln_enroll_proto::api::{EnrollAnswer, ErrorCode, PeerDelta, PeerList};
use kiln_enroll_proto::client::{Client, NodeAuth};

macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite);
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres);
            }
        }
    };
}

both_backends!(deltas_hold_exactly_the_changes_since_a_version);
both_backends!(old_requests_keep_getting_whole_lists);

fn names(d: &PeerDelta) -> Vec<&str> {
    d.peers.iter().map(|p| p.name.as_str()).collect()
}

fn enroll(client: &Client, token: &str, host: &str) -> NodeAuth {
    let keys = node_keys(host);
    let a = client.enroll_v2(&request(token, &keys, host)).unwrap();
    NodeAuth {
        name: a.node.name,
        credential: keys.credential,
    }
}

fn deltas_hold_exactly_the_changes_since_a_version(backend: Backend) {
    let state = State::new(backend);
    let server = Server::start(&state, &[]);
    let client = server.client();
    let token = state.token(&["--ttl", "1h", "--uses", "20"]);
    let a = enroll(&client, &token, "da");
    for host in ["db", "dc", "dd"] {
        enroll(&client, &token, host);
    }

    // From 0: the whole list.
    let full = client.peer_changes(&a, 0, 0).unwrap();
    assert_eq!(full.since, None);
    assert_eq!(names(&full), ["da", "db", "dc", "dd"]);
    assert!(full.removed.is_empty());
    let mut mine = PeerList {
        version: 0,
        peers: Vec::new(),
    };
    full.clone().apply_to(&mut mine);
    let v1 = mine.version;

    // Up to date: an empty delta at once.
    let none = client.peer_changes(&a, v1, 0).unwrap();
    assert_eq!((none.version, none.since), (v1, Some(v1)));
    assert!(none.peers.is_empty() && none.removed.is_empty());

    // One revocation by another process on the same state, one enrollment here.
    state.ok(&["node", "revoke", "dc"]);
    enroll(&client, &token, "de");
    let d = client.peer_changes(&a, v1, 0).unwrap();
    assert_eq!(d.since, Some(v1));
    assert_eq!(names(&d), ["de"]);
    assert_eq!(d.removed, ["dc"]);
    d.apply_to(&mut mine);
    let whole = client.peers(&a, 0, 0).unwrap();
    assert_eq!(
        mine, whole,
        "the delta applied to the list at v1 is the list now"
    );
    let v2 = mine.version;

    // A long poll at v2 wakes with exactly the next change.
    let poll = {
        let client = server.client();
        let a = a.clone();
        std::thread::spawn(move || client.peer_changes(&a, v2, 30))
    };
    std::thread::sleep(Duration::from_millis(300));
    enroll(&client, &token, "df");
    let d = poll.join().unwrap().unwrap();
    assert_eq!((d.since, names(&d)), (Some(v2), vec!["df"]));
    assert!(d.removed.is_empty());
    d.apply_to(&mut mine);
    assert_eq!(mine, client.peers(&a, 0, 0).unwrap());
    let v3 = mine.version;

    // Most peers change (3 of the 5 live ones are revoked): too far behind for a
    // delta, the whole list comes instead.
    for n in ["db", "dd", "de"] {
        state.ok(&["node", "revoke", n]);
    }
    let d = client.peer_changes(&a, v3, 0).unwrap();
    assert_eq!(d.since, None);
    assert_eq!(names(&d), ["da", "df"]);
    d.apply_to(&mut mine);
    assert_eq!(mine, client.peers(&a, 0, 0).unwrap());

    // A version this server never had (a restored backup on the server side): whole.
    let d = client.peer_changes(&a, mine.version + 100, 0).unwrap();
    assert_eq!(d.since, None);
    assert_eq!(d.version, mine.version);

    // A revoked node's long poll ends with NodeRevoked in this revision too.
    let f = enroll(&client, &token, "dg");
    let v = client.peer_changes(&f, 0, 0).unwrap().version;
    let poll = {
        let client = server.client();
        let f = f.clone();
        std::thread::spawn(move || client.peer_changes(&f, v, 30))
    };
    std::thread::sleep(Duration::from_millis(300));
    state.ok(&["node", "revoke", &f.name]);
    let (status, body) = refusal(poll.join().unwrap());
    assert_eq!((status, body.error), (403, ErrorCode::NodeRevoked));
}

fn old_requests_keep_getting_whole_lists(backend: Backend) {
    let state = State::new(backend);
    let server = Server::start(&state, &[]);
    let client = server.client();
    let token = state.token(&["--ttl", "1h", "--uses", "5"]);
    // The revision-1 calls decode into the deployed agents' types, which refuse any
    // field they do not know.
    let ka = node_keys("oa");
    let first: EnrollAnswer = client.enroll(&request(&token, &ka, "oa")).unwrap();
    assert_eq!(first.peers.peers.len(), 1);
    let b = enroll(&client, &token, "ob");
    let second: EnrollAnswer = client
        .enroll(&request(&token, &node_keys("oc"), "oc"))
        .unwrap();
    let all: Vec<&str> = second.peers.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(all, ["oa", "ob", "oc"]);
    let a = NodeAuth {
        name: first.node.name.clone(),
        credential: ka.credential,
    };
    // A revision-1 poll at the current version still gets the whole list on a change.
    let v = client.peers(&a, 0, 0).unwrap().version;
    assert_eq!(v, second.peers.version);
    let poll = {
        let client = server.client();
        let a = a.clone();
        std::thread::spawn(move || client.peers(&a, v, 30))
    };
    std::thread::sleep(Duration::from_millis(300));
    state.ok(&["node", "revoke", &b.name]);
    let list = poll.join().unwrap().unwrap();
    let all: Vec<&str> = list.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(all, ["oa", "oc"]);
    assert!(list.version > v);
    // The same bytes a revision-2 client would rebuild.
    let mut rebuilt = PeerList {
        version: 0,
        peers: Vec::new(),
    };
    client
        .peer_changes(&a, 0, 0)
        .unwrap()
        .apply_to(&mut rebuilt);
    assert_eq!(rebuilt, list);
    // Without the header the answer names revision 2 but is revision 1's body.
    let (status, body) = raw_request(
        &server,
        format!(
            "GET /v1/peers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}.{}\r\n\r\n",
            a.name, a.credential
        )
        .as_bytes(),
    );
    assert_eq!(status, 200);
    let raw: PeerList = serde_json::from_str(&body).unwrap();
    assert_eq!(raw, list);
}
