//! Cluster join parameters through the real `kiln-enroll` binary, against SQLite and
//! PostgreSQL: `cluster init/show/clear`, the join each role gets in its enrollment
//! answer and on `GET /v1/cluster`, the race for the first k3s server, and that secrets
//! never reach a node that must not have them or the operator's terminal.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use common::*;
use kiln_enroll_proto::api::{ClusterJoin, EnrollAnswer, Join, K3sJoin, KubeadmJoin, Role};
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::validate::validate_join;

/// Each scenario runs once per backend.
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

both_backends!(k3s_joins_follow_the_role_and_the_first_server);
both_backends!(twenty_servers_at_once_make_one_first_server);
both_backends!(kubeadm_keeps_the_certificate_key_from_workers);

const SERVER_TOKEN: &str = "Srv-Token-7f3a9c1e5b2d48a6";
const AGENT_TOKEN: &str = "Agt-Token-0b8e6d4c2a19f375";
const KUBEADM_TOKEN: &str = "q1w2e3.r4t5y6u7i8o9p0a1";

fn write_file(state: &State, name: &str, text: &str) -> PathBuf {
    let p = state.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn auth(answer: &EnrollAnswer, seed: &str) -> NodeAuth {
    NodeAuth {
        name: answer.node.name.clone(),
        credential: node_keys(seed).credential,
    }
}

/// One request over pinned TLS, as raw text: what a node receives, byte for byte.
fn raw_call(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&NodeAuth>,
    body: &str,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: kiln-enroll\r\n");
    if let Some(a) = auth {
        head.push_str(&format!(
            "Authorization: Bearer {}.{}\r\n",
            a.name, a.credential
        ));
    }
    let req = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    let (status, text) = raw_request(server, req.as_bytes());
    assert_eq!(status, 200, "{method} {path}: {text}");
    text
}

/// Enrolls over raw TLS; the raw answer and its decoded form.
fn raw_enroll(server: &Server, token: &str, seed: &str, host: &str) -> (String, EnrollAnswer) {
    let body = serde_json::to_string(&request(token, &node_keys(seed), host)).unwrap();
    let text = raw_call(server, "POST", "/v1/enroll", None, &body);
    let answer = serde_json::from_str(&text).unwrap();
    (text, answer)
}

fn raw_cluster(server: &Server, a: &NodeAuth) -> (String, ClusterJoin) {
    let text = raw_call(server, "GET", "/v1/cluster", Some(a), "");
    let join = serde_json::from_str(&text).unwrap();
    (text, join)
}

fn k3s(join: &Option<Join>) -> K3sJoin {
    match join {
        Some(Join::K3s(k)) => k.clone(),
        other => panic!("expected a k3s join, got {other:?}"),
    }
}

fn kubeadm(join: &Option<Join>) -> KubeadmJoin {
    match join {
        Some(Join::Kubeadm(k)) => k.clone(),
        other => panic!("expected a kubeadm join, got {other:?}"),
    }
}

/// What a node checks before using a join must pass for everything the server sends.
fn valid(c: &ClusterJoin) {
    if let Some(j) = &c.join {
        validate_join(j, c.role).unwrap_or_else(|e| panic!("{e}: {c:?}"));
    }
}

fn k3s_joins_follow_the_role_and_the_first_server(backend: Backend) {
    let state = State::new(backend);
    let server = Server::start(&state, &[]);
    let workers = state.token(&["--uses", "5", "--label", "kiln.dev/pool=edge"]);
    let servers = state.token(&["--uses", "5", "--role", "server"]);
    // Enrolled before any cluster exists: no join, and it learns one later.
    let early = server
        .client()
        .enroll(&request(&workers, &node_keys("early"), "early"))
        .unwrap();
    assert_eq!(early.cluster.join, None);
    assert_eq!(
        early
            .cluster
            .labels
            .get("kiln.dev/pool")
            .map(String::as_str),
        Some("edge")
    );

    let tf = write_file(&state, "server.token", &format!("{SERVER_TOKEN}\n"));
    let af = write_file(&state, "agent.token", &format!("  {AGENT_TOKEN}\n"));
    state.ok(&[
        "cluster",
        "init",
        "k3s",
        "--token-file",
        tf.to_str().unwrap(),
        "--agent-token-file",
        af.to_str().unwrap(),
    ]);

    // A worker before any server: the agent token, no URL yet (it waits).
    let (raw, w1) = raw_enroll(&server, &workers, "w1", "w1");
    assert!(
        !raw.contains(SERVER_TOKEN),
        "worker saw the server token: {raw}"
    );
    let j = k3s(&w1.cluster.join);
    assert_eq!(
        j,
        K3sJoin {
            server_url: None,
            init: false,
            token: AGENT_TOKEN.to_string(),
            agent_token: None,
        }
    );
    valid(&w1.cluster);
    let (raw, early_now) = raw_cluster(&server, &auth(&early, "early"));
    assert!(!raw.contains(SERVER_TOKEN), "{raw}");
    assert_eq!(k3s(&early_now.join), j);
    assert_eq!(early_now.role, Role::Worker);

    // The first server starts the cluster.
    let s1_req = request(&servers, &node_keys("s1"), "s1");
    let s1 = server.client().enroll(&s1_req).unwrap();
    assert_eq!(
        k3s(&s1.cluster.join),
        K3sJoin {
            server_url: None,
            init: true,
            token: SERVER_TOKEN.to_string(),
            agent_token: Some(AGENT_TOKEN.to_string()),
        }
    );
    valid(&s1.cluster);
    // Its retry gets the same join: init stays with it.
    let again = server.client().enroll(&s1_req).unwrap();
    assert_eq!(again.cluster, s1.cluster);
    assert_eq!(
        server.client().cluster(&auth(&s1, "s1")).unwrap(),
        s1.cluster
    );

    // Everyone else now joins it at its overlay address.
    let url = format!("https://{}:6443", s1.node.address_v4.addr);
    for (a, seed) in [(&w1, "w1"), (&early, "early")] {
        let (raw, c) = raw_cluster(&server, &auth(a, seed));
        assert!(!raw.contains(SERVER_TOKEN), "{raw}");
        let j = k3s(&c.join);
        assert_eq!(
            (
                j.server_url.as_deref(),
                j.init,
                j.token.as_str(),
                j.agent_token
            ),
            (Some(url.as_str()), false, AGENT_TOKEN, None)
        );
        valid(&c);
    }
    let (raw, w2) = raw_enroll(&server, &workers, "w2", "w2");
    assert!(!raw.contains(SERVER_TOKEN), "{raw}");
    assert_eq!(
        k3s(&w2.cluster.join).server_url.as_deref(),
        Some(url.as_str())
    );
    let s2 = server
        .client()
        .enroll(&request(&servers, &node_keys("s2"), "s2"))
        .unwrap();
    assert_eq!(
        k3s(&s2.cluster.join),
        K3sJoin {
            server_url: Some(url.clone()),
            init: false,
            token: SERVER_TOKEN.to_string(),
            agent_token: Some(AGENT_TOKEN.to_string()),
        }
    );
    valid(&s2.cluster);
    assert_eq!(
        server.client().cluster(&auth(&s2, "s2")).unwrap(),
        s2.cluster
    );

    // The operator sees where nodes join, never a token.
    let shown = state.ok(&["cluster", "show"]) + &state.ok(&["cluster", "show", "--json"]);
    assert!(
        !shown.contains(SERVER_TOKEN) && !shown.contains(AGENT_TOKEN),
        "{shown}"
    );
    assert!(
        shown.contains(&url) && shown.contains("first server s1"),
        "{shown}"
    );
    assert!(shown.contains("<set>"), "{shown}");
    assert!(
        !server.log_text().contains(SERVER_TOKEN),
        "tokens in the log"
    );

    // Revoking the first server keeps its URL (the cluster lives on in the others).
    state.ok(&["node", "revoke", "s1"]);
    let (_, c) = raw_cluster(&server, &auth(&w1, "w1"));
    assert_eq!(k3s(&c.join).server_url.as_deref(), Some(url.as_str()));
    assert!(state.ok(&["cluster", "show"]).contains("revoked since"));

    // Cleared: nodes are told no join any more.
    state.ok(&["cluster", "clear"]);
    assert_eq!(
        server.client().cluster(&auth(&s2, "s2")).unwrap().join,
        None
    );
}

fn twenty_servers_at_once_make_one_first_server(backend: Backend) {
    const N: usize = 20;
    let state = State::new(backend);
    let server = Server::start(&state, &[]);
    state.ok(&["cluster", "init", "k3s"]);
    let servers = state.token(&["--uses", &N.to_string(), "--role", "server"]);
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let client = server.client();
            let req = request(&servers, &node_keys(&format!("srv-{i}")), "srv");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                client.enroll(&req).unwrap()
            })
        })
        .collect();
    let answers: Vec<EnrollAnswer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let inits: Vec<&EnrollAnswer> = answers
        .iter()
        .filter(|a| k3s(&a.cluster.join).init)
        .collect();
    assert_eq!(
        inits.len(),
        1,
        "{} nodes were told to start the cluster",
        inits.len()
    );
    let url = format!("https://{}:6443", inits[0].node.address_v4.addr);
    let mut tokens = std::collections::BTreeSet::new();
    for a in &answers {
        let j = k3s(&a.cluster.join);
        valid(&a.cluster);
        if !j.init {
            assert_eq!(
                j.server_url.as_deref(),
                Some(url.as_str()),
                "{}",
                a.node.name
            );
        }
        tokens.insert((j.token, j.agent_token.unwrap()));
    }
    // One generated pair for everyone: 48 hex characters each, distinct.
    assert_eq!(tokens.len(), 1);
    let (t, at) = tokens.into_iter().next().unwrap();
    assert!(
        t.len() == 48 && t.bytes().all(|b| b.is_ascii_hexdigit()),
        "{t}"
    );
    assert!(at.len() == 48 && at != t);
    let shown = state.ok(&["cluster", "show", "--json"]);
    assert!(!shown.contains(&t) && !shown.contains(&at), "{shown}");
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["first_server"], inits[0].node.name.as_str());
    assert_eq!(v["server_url"], url.as_str());
}

fn kubeadm_keeps_the_certificate_key_from_workers(backend: Backend) {
    let state = State::new(backend);
    let server = Server::start(&state, &[]);
    let key = "9c".repeat(32);
    let hash = format!("sha256:{}", "4e".repeat(32));
    let tf = write_file(&state, "kubeadm.token", &format!("{KUBEADM_TOKEN}\n"));
    state.ok(&[
        "cluster",
        "init",
        "kubeadm",
        "--endpoint",
        "10.77.0.1:6443",
        "--token-file",
        tf.to_str().unwrap(),
        "--ca-cert-hash",
        &hash.to_uppercase().replace("SHA256", "sha256"),
        "--certificate-key",
        &key,
    ]);
    let workers = state.token(&["--uses", "2"]);
    let servers = state.token(&["--uses", "2", "--role", "server"]);
    let (raw, w) = raw_enroll(&server, &workers, "kw", "kw");
    assert!(
        !raw.contains(&key),
        "a worker got the certificate key: {raw}"
    );
    let want_worker = KubeadmJoin {
        api_server_endpoint: "10.77.0.1:6443".to_string(),
        token: KUBEADM_TOKEN.to_string(),
        ca_cert_hashes: vec![hash.clone()],
        certificate_key: None,
    };
    assert_eq!(kubeadm(&w.cluster.join), want_worker);
    valid(&w.cluster);
    let (raw, c) = raw_cluster(&server, &auth(&w, "kw"));
    assert!(!raw.contains(&key), "{raw}");
    assert_eq!(kubeadm(&c.join), want_worker);
    let s = server
        .client()
        .enroll(&request(&servers, &node_keys("ks"), "ks"))
        .unwrap();
    assert_eq!(
        kubeadm(&s.cluster.join),
        KubeadmJoin {
            certificate_key: Some(key.clone()),
            ..want_worker
        }
    );
    valid(&s.cluster);
    let shown = state.ok(&["cluster", "show"]) + &state.ok(&["cluster", "show", "--json"]);
    assert!(
        !shown.contains(KUBEADM_TOKEN) && !shown.contains(&key),
        "{shown}"
    );
    assert!(
        shown.contains(&hash) && shown.contains("10.77.0.1:6443"),
        "{shown}"
    );
}

/// Runs a command that must fail; its stderr.
fn fails(state: &State, args: &[&str]) -> String {
    let out = state.cli(args);
    assert!(!out.status.success(), "kiln-enroll {args:?} succeeded");
    assert!(out.stdout.is_empty(), "{args:?}: {:?}", out.stdout);
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_cluster_input_is_refused_naming_the_flag_or_file() {
    let state = State::new(Backend::Sqlite);
    let hash = format!("sha256:{}", "ab".repeat(32));
    let spaced = write_file(&state, "spaced", "two secret-words\n");
    let empty = write_file(&state, "empty", "\n\n");
    let same = write_file(&state, "same", "same-token\n");
    let bad_kubeadm = write_file(&state, "badkubeadm", "NOT-A-TOKEN\n");
    let spaced = spaced.to_str().unwrap();
    let kube = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["cluster", "init", "kubeadm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--server-url".into(),
                "http://10.0.0.1:6443".into(),
            ],
            vec!["--server-url".into(), "https://".into()],
        ),
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--server-url".into(),
                "https://10.0.0.1".into(),
            ],
            vec!["--server-url".into(), "port".into()],
        ),
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--token-file".into(),
                "/nonexistent/tok".into(),
            ],
            vec![
                "--token-file /nonexistent/tok".into(),
                "cannot read it".into(),
            ],
        ),
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--token-file".into(),
                spaced.into(),
            ],
            vec![format!("--token-file {spaced}"), "' '".into()],
        ),
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--agent-token-file".into(),
                empty.to_str().unwrap().into(),
            ],
            vec![
                format!("--agent-token-file {}", empty.display()),
                "is empty".into(),
            ],
        ),
        (
            vec![
                "cluster".into(),
                "init".into(),
                "k3s".into(),
                "--token-file".into(),
                same.to_str().unwrap().into(),
                "--agent-token-file".into(),
                same.to_str().unwrap().into(),
            ],
            vec!["--agent-token-file".into(), "different".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1",
                "--token",
                KUBEADM_TOKEN,
                "--ca-cert-hash",
                &hash,
            ]),
            vec!["--endpoint".into(), "HOST:PORT".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1:6443",
                "--token",
                "Secret.Value",
                "--ca-cert-hash",
                &hash,
            ]),
            vec!["--token:".into(), "bootstrap token".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1:6443",
                "--token-file",
                bad_kubeadm.to_str().unwrap(),
                "--ca-cert-hash",
                &hash,
            ]),
            vec![format!("--token-file {}", bad_kubeadm.display())],
        ),
        (
            kube(&["--endpoint", "10.77.0.1:6443", "--token", KUBEADM_TOKEN]),
            vec!["--ca-cert-hash".into()],
        ),
        (
            kube(&["--endpoint", "10.77.0.1:6443", "--ca-cert-hash", &hash]),
            vec!["--token".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1:6443",
                "--token",
                KUBEADM_TOKEN,
                "--ca-cert-hash",
                "sha256:abc",
            ]),
            vec!["--ca-cert-hash".into(), "64 hex".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1:6443",
                "--token",
                KUBEADM_TOKEN,
                "--ca-cert-hash",
                &hash,
                "--certificate-key",
                "beef",
            ]),
            vec!["--certificate-key".into(), "64 hex".into()],
        ),
        (
            kube(&[
                "--endpoint",
                "10.77.0.1:6443",
                "--token",
                KUBEADM_TOKEN,
                "--token-file",
                "/x",
                "--ca-cert-hash",
                &hash,
            ]),
            vec!["--token".into(), "--token-file".into()],
        ),
    ];
    for (args, wants) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&state, &args);
        for want in wants {
            assert!(
                err.contains(want.as_str()),
                "{args:?}: {want:?} not in {err}"
            );
        }
        for secret in ["two secret-words", "Secret.Value", "NOT-A-TOKEN"] {
            assert!(!err.contains(secret), "{args:?} echoed a secret: {err}");
        }
    }
    // Nothing was stored by any of them.
    assert!(state.ok(&["cluster", "show"]).contains("no cluster is set"));
    assert_eq!(state.ok(&["cluster", "show", "--json"]).trim(), "null");
    // A second init needs --replace.
    state.ok(&["cluster", "init", "k3s"]);
    let err = fails(
        &state,
        &[
            "cluster",
            "init",
            "k3s",
            "--server-url",
            "https://k.example:6443",
        ],
    );
    assert!(
        err.contains("already set") && err.contains("--replace"),
        "{err}"
    );
    state.ok(&[
        "cluster",
        "init",
        "k3s",
        "--replace",
        "--server-url",
        "https://k.example:6443",
    ]);
    assert!(state
        .ok(&["cluster", "show"])
        .contains("https://k.example:6443 (given with --server-url)"));
    // Every command documents itself.
    for (cmd, want) in [
        (vec!["cluster", "--help"], "show"),
        (vec!["cluster", "init", "--help"], "kubeadm"),
        (
            vec!["cluster", "init", "k3s", "--help"],
            "--agent-token-file",
        ),
        (
            vec!["cluster", "init", "kubeadm", "--help"],
            "--certificate-key",
        ),
        (vec!["cluster", "show", "--help"], "--json"),
        (vec!["cluster", "clear", "--help"], "Remove"),
    ] {
        let out = state.ok(&cmd);
        assert!(out.contains(want), "{cmd:?}: {out}");
    }
}
