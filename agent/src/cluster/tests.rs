#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use kiln_enroll_proto::api::{
    ClusterJoin, EnrollAnswer, ErrorBody, ErrorCode, Join, K3sJoin, KubeadmJoin, Network, NodeInfo,
    Peer, PeerList, Role,
};
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::key::PublicKey;
use serde::Deserialize;

use super::run::{self, classify, Env, FailClass};
use super::yaml::{self, map_of, s, Node};
use super::*;
use crate::config::settings::{
    parse_settings, ClusterKind, ClusterSettings, Containerd, ImageRole, KubeadmApi,
};
use crate::overlay::identity::{self, Identity};
use crate::overlay::state::{self, EnrollmentFile};
use crate::overlay::ApiError;
use crate::sys::fake::FakeSys;
use crate::sys::{
    forward, Capture, Clock, Cmd, CommandResult, Console, Exec, Files, Random, Resolve,
};

const K3S_TOKEN_TEXT: &str = "K10abcdef0123456789::server:s3cr3tpassw0rdvalue";
const K3S_AGENT_TOKEN_TEXT: &str = "agentsecrettokenvalue42";
const BOOTSTRAP: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";
const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn settings(kind: ClusterKind) -> ClusterSettings {
    ClusterSettings {
        kind,
        role: ImageRole::Any,
        labels: BTreeMap::from([
            ("kiln.dev/pool".to_string(), "edge".to_string()),
            ("kiln.dev/zone".to_string(), "image".to_string()),
        ]),
        kubelet_args: vec![("max-pods".to_string(), "110".to_string())],
        containerd: Containerd::Image,
        kubeadm_api: KubeadmApi::V1beta4,
        kubernetes: Some("1.34.2".parse().unwrap()),
    }
}

fn facts(public: bool) -> NodeFacts {
    NodeFacts {
        name: "node-a".to_string(),
        address_v4: Ipv4Addr::new(10, 77, 0, 2),
        external_ip: public.then(|| "203.0.113.7".parse().unwrap()),
    }
}

fn token_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("kiln.dev/zone".to_string(), "token".to_string())])
}

fn k3s_worker_join() -> K3sJoin {
    K3sJoin {
        server_url: Some("https://10.77.0.1:6443".into()),
        init: false,
        token: K3S_TOKEN_TEXT.into(),
        agent_token: None,
    }
}

fn k3s_first_server_join() -> K3sJoin {
    K3sJoin {
        server_url: None,
        init: true,
        token: K3S_TOKEN_TEXT.into(),
        agent_token: Some(K3S_AGENT_TOKEN_TEXT.into()),
    }
}

fn kubeadm_join(server: bool) -> KubeadmJoin {
    KubeadmJoin {
        api_server_endpoint: "10.77.0.1:6443".into(),
        token: BOOTSTRAP.into(),
        ca_cert_hashes: vec![HASH.into()],
        certificate_key: server.then(|| CERT_KEY.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// The YAML emitter.

#[test]
fn yaml_quotes_every_string_so_any_value_round_trips() {
    let tricky = [
        "plain",
        "a: b",
        "x # not a comment",
        "say \"hi\" and 'bye'",
        "two\nlines\r\n",
        "back\\slash",
        "tab\there",
        "bell\u{7}del\u{7f}c1\u{85}sep\u{2028}bom\u{feff}",
        "- dash",
        "*alias",
        "&anchor",
        "!tag",
        "%percent",
        "@at",
        "`tick",
        "{a: 1}",
        "[1, 2]",
        "yes",
        "null",
        "~",
        "123",
        "0x1f",
        "1e3",
        "",
        " lead and trail ",
        "ünïcødé ✓",
        "---",
        "...",
    ];
    let doc = yaml::document(&map_of(vec![
        ("list", Node::List(tricky.iter().map(|t| s(*t)).collect())),
        (
            "map",
            Node::Map(
                tricky
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("key: {i} #"), s(*t)))
                    .collect(),
            ),
        ),
        (
            "nested",
            Node::List(vec![map_of(vec![("a", s("1")), ("b", Node::Bool(true))])]),
        ),
        ("empty", Node::List(vec![])),
        ("none", Node::Map(vec![])),
        ("n", Node::Int(6443)),
        ("yes", s("reserved word as key")),
    ]));
    let v: serde_yaml::Value = serde_yaml::from_str(&doc).unwrap();
    let list: Vec<String> = serde_yaml::from_value(v["list"].clone()).unwrap();
    assert_eq!(list, tricky.map(String::from).to_vec(), "{doc}");
    let m: BTreeMap<String, String> = serde_yaml::from_value(v["map"].clone()).unwrap();
    for (i, t) in tricky.iter().enumerate() {
        assert_eq!(m[&format!("key: {i} #")], *t);
    }
    assert_eq!(v["nested"][0]["a"], serde_yaml::Value::String("1".into()));
    assert_eq!(v["nested"][0]["b"], serde_yaml::Value::Bool(true));
    assert_eq!(v["empty"], serde_yaml::Value::Sequence(vec![]));
    assert!(v["none"].as_mapping().unwrap().is_empty());
    assert_eq!(v["n"].as_u64(), Some(6443));
    assert_eq!(v["yes"].as_str(), Some("reserved word as key"));
    // One line per scalar: no value can add lines of its own.
    assert!(!doc.contains("two\nlines"));
}

// ---------------------------------------------------------------------------------------
// k3s.

/// The k3s flags this test knows are real (k3s's agent reference; every agent flag is
/// also a server flag).
const K3S_AGENT_FLAGS: &[&str] = &[
    "config",
    "debug",
    "v",
    "vmodule",
    "log",
    "alsologtostderr",
    "token",
    "token-file",
    "server",
    "data-dir",
    "node-name",
    "with-node-id",
    "node-label",
    "node-taint",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "selinux",
    "lb-server-port",
    "protect-kernel-defaults",
    "container-runtime-endpoint",
    "default-runtime",
    "image-service-endpoint",
    "pause-image",
    "snapshotter",
    "private-registry",
    "system-default-registry",
    "node-ip",
    "node-external-ip",
    "node-internal-dns",
    "node-external-dns",
    "resolv-conf",
    "flannel-iface",
    "flannel-conf",
    "flannel-cni-conf",
    "kubelet-arg",
    "kube-proxy-arg",
    "rootless",
    "prefer-bundled-bin",
    "bind-address",
    "vpn-auth",
    "vpn-auth-file",
];

/// Server-only k3s flags (k3s's server reference).
const K3S_SERVER_FLAGS: &[&str] = &[
    "cluster-init",
    "cluster-reset",
    "agent-token",
    "agent-token-file",
    "advertise-address",
    "advertise-port",
    "tls-san",
    "tls-san-security",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "cluster-domain",
    "flannel-backend",
    "flannel-ipv6-masq",
    "flannel-external-ip",
    "disable",
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "https-listen-port",
    "datastore-endpoint",
    "secrets-encryption",
    "egress-selector-mode",
    "node-external-ip",
];

/// The k3s config keys kiln-cluster writes, each typed as k3s reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct K3sDoc {
    server: Option<String>,
    token_file: String,
    agent_token_file: Option<String>,
    cluster_init: Option<bool>,
    node_name: String,
    node_ip: String,
    node_external_ip: Option<String>,
    advertise_address: Option<String>,
    tls_san: Option<Vec<String>>,
    flannel_iface: String,
    node_label: Option<Vec<String>>,
    kubelet_arg: Option<Vec<String>>,
    container_runtime_endpoint: Option<String>,
}

fn keys(doc: &str) -> Vec<String> {
    let v: serde_yaml::Mapping = serde_yaml::from_str(doc).unwrap();
    v.keys().map(|k| k.as_str().unwrap().to_string()).collect()
}

#[test]
fn k3s_worker_config_names_the_overlay_and_only_real_agent_flags() {
    let st = settings(ClusterKind::K3s);
    let (labels, refused) = run::merged_labels(
        &st,
        &ClusterJoin {
            role: Role::Worker,
            labels: token_labels(),
            join: None,
        },
    );
    assert!(refused.is_empty(), "{refused:?}");
    let text = k3s::config(
        &st,
        Role::Worker,
        &labels,
        &k3s_worker_join(),
        &facts(false),
    );
    let d: K3sDoc = serde_yaml::from_str(&text).unwrap();
    assert_eq!(d.server.as_deref(), Some("https://10.77.0.1:6443"));
    assert_eq!(d.token_file, "/run/kiln/k3s/token");
    assert_eq!(d.agent_token_file, None);
    assert_eq!(d.cluster_init, None);
    assert_eq!(d.node_name, "node-a");
    assert_eq!(d.node_ip, "10.77.0.2");
    assert_eq!(
        d.node_external_ip, None,
        "a node behind NAT has no external ip"
    );
    assert_eq!(d.advertise_address, None);
    assert_eq!(d.tls_san, None);
    assert_eq!(d.flannel_iface, "kiln0");
    // The token's label wins over the image's on the same key.
    assert_eq!(
        d.node_label.unwrap(),
        ["kiln.dev/pool=edge", "kiln.dev/zone=token"]
    );
    assert_eq!(d.kubelet_arg.unwrap(), ["max-pods=110"]);
    assert_eq!(
        d.container_runtime_endpoint.as_deref(),
        Some("unix:///run/containerd/containerd.sock")
    );
    for k in keys(&text) {
        assert!(
            K3S_AGENT_FLAGS.contains(&k.as_str()),
            "{k} is no k3s agent flag"
        );
    }
    assert!(
        !text.contains(K3S_TOKEN_TEXT),
        "the token goes to its own file"
    );
}

#[test]
fn k3s_first_server_starts_the_cluster_with_both_token_files() {
    let mut st = settings(ClusterKind::K3s);
    st.containerd = Containerd::K3s;
    st.kubelet_args.clear();
    let text = k3s::config(
        &st,
        Role::Server,
        &BTreeMap::new(),
        &k3s_first_server_join(),
        &facts(true),
    );
    let d: K3sDoc = serde_yaml::from_str(&text).unwrap();
    assert_eq!(d.server, None);
    assert_eq!(d.cluster_init, Some(true));
    assert_eq!(d.token_file, "/run/kiln/k3s/token");
    assert_eq!(
        d.agent_token_file.as_deref(),
        Some("/run/kiln/k3s/agent-token")
    );
    assert_eq!(d.node_ip, "10.77.0.2");
    assert_eq!(d.node_external_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(d.advertise_address.as_deref(), Some("10.77.0.2"));
    assert_eq!(d.tls_san.unwrap(), ["10.77.0.2", "node-a"]);
    assert_eq!(d.flannel_iface, "kiln0");
    assert_eq!(d.node_label, None);
    assert_eq!(d.kubelet_arg, None);
    assert_eq!(d.container_runtime_endpoint, None, "k3s's own containerd");
    for k in keys(&text) {
        assert!(
            K3S_AGENT_FLAGS.contains(&k.as_str()) || K3S_SERVER_FLAGS.contains(&k.as_str()),
            "{k} is no k3s server flag"
        );
    }
    let files = k3s::files(
        &st,
        Role::Server,
        &BTreeMap::new(),
        &k3s_first_server_join(),
        &facts(true),
    );
    let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, [K3S_CONFIG, K3S_TOKEN, K3S_AGENT_TOKEN]);
    assert_eq!(files[1].1, K3S_TOKEN_TEXT.as_bytes());
    assert_eq!(files[2].1, K3S_AGENT_TOKEN_TEXT.as_bytes());
    // A later server joins the first one and does not initialize.
    let later = K3sJoin {
        server_url: Some("https://10.77.0.1:6443".into()),
        init: false,
        ..k3s_first_server_join()
    };
    let d: K3sDoc = serde_yaml::from_str(&k3s::config(
        &st,
        Role::Server,
        &BTreeMap::new(),
        &later,
        &facts(false),
    ))
    .unwrap();
    assert_eq!(d.server.as_deref(), Some("https://10.77.0.1:6443"));
    assert_eq!(d.cluster_init, None);
    assert_eq!(k3s::unit(Role::Server), "k3s-server.service");
    assert_eq!(k3s::unit(Role::Worker), "k3s-agent.service");
    // Workers get no agent-token file even if one were sent.
    let w = k3s::files(
        &st,
        Role::Worker,
        &BTreeMap::new(),
        &k3s_worker_join(),
        &facts(false),
    );
    assert_eq!(w.len(), 2);
}

#[test]
fn labels_and_args_with_yaml_syntax_round_trip_exactly() {
    let mut st = settings(ClusterKind::K3s);
    let weird = "a:b #c \"q\" 'r'\nnext";
    st.labels = BTreeMap::from([("kiln.dev/odd".to_string(), weird.to_string())]);
    st.kubelet_args = vec![("eviction-hard".into(), "memory.available<5%: #x".into())];
    let text = k3s::config(
        &st,
        Role::Worker,
        &st.labels,
        &k3s_worker_join(),
        &facts(false),
    );
    let d: K3sDoc = serde_yaml::from_str(&text).unwrap();
    assert_eq!(d.node_label.unwrap(), [format!("kiln.dev/odd={weird}")]);
    assert_eq!(
        d.kubelet_arg.unwrap(),
        ["eviction-hard=memory.available<5%: #x"]
    );
    for api in [KubeadmApi::V1beta3, KubeadmApi::V1beta4] {
        st.kubeadm_api = api;
        let text = kubeadm::join_config(
            &st,
            Role::Worker,
            &st.labels,
            &kubeadm_join(false),
            &facts(false),
        );
        let args = extra_args(&text);
        assert_eq!(
            args[1],
            ("node-labels".into(), format!("kiln.dev/odd={weird}"))
        );
        assert_eq!(
            args[2],
            ("eviction-hard".into(), "memory.available<5%: #x".into())
        );
    }
}

// ---------------------------------------------------------------------------------------
// kubeadm.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BootstrapTokenDiscovery {
    api_server_endpoint: String,
    token: String,
    ca_cert_hashes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: BootstrapTokenDiscovery,
    tls_bootstrap_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V3Registration {
    name: String,
    cri_socket: String,
    kubelet_extra_args: BTreeMap<String, String>,
}

/// v1beta4's `Arg`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V4Registration {
    name: String,
    cri_socket: String,
    kubelet_extra_args: Vec<Arg>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiEndpoint {
    advertise_address: String,
    bind_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    certificate_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinV3 {
    api_version: String,
    kind: String,
    discovery: Discovery,
    node_registration: V3Registration,
    control_plane: Option<ControlPlane>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinV4 {
    api_version: String,
    kind: String,
    discovery: Discovery,
    node_registration: V4Registration,
    control_plane: Option<ControlPlane>,
}

fn extra_args(text: &str) -> Vec<(String, String)> {
    if text.contains("v1beta4") {
        let j: JoinV4 = serde_yaml::from_str(text).unwrap();
        j.node_registration
            .kubelet_extra_args
            .into_iter()
            .map(|a| (a.name, a.value))
            .collect()
    } else {
        let j: JoinV3 = serde_yaml::from_str(text).unwrap();
        let m = j.node_registration.kubelet_extra_args;
        // A map has no order: give the renderer's (node-ip, node-labels, the rest).
        let mut out: Vec<(String, String)> = Vec::new();
        for k in ["node-ip", "node-labels"] {
            if let Some(v) = m.get(k) {
                out.push((k.to_string(), v.clone()));
            }
        }
        out.extend(
            m.into_iter()
                .filter(|(k, _)| k != "node-ip" && k != "node-labels"),
        );
        out
    }
}

fn check_discovery(d: &Discovery) {
    assert_eq!(d.bootstrap_token.api_server_endpoint, "10.77.0.1:6443");
    assert_eq!(d.bootstrap_token.token, BOOTSTRAP);
    assert_eq!(d.bootstrap_token.ca_cert_hashes, [HASH]);
    assert_eq!(d.tls_bootstrap_token, BOOTSTRAP);
}

#[test]
fn kubeadm_v1beta4_worker_has_a_list_of_kubelet_args() {
    let st = settings(ClusterKind::Kubeadm);
    let labels = BTreeMap::from([
        ("kiln.dev/pool".to_string(), "edge".to_string()),
        ("kiln.dev/zone".to_string(), "token".to_string()),
    ]);
    let text = kubeadm::join_config(
        &st,
        Role::Worker,
        &labels,
        &kubeadm_join(false),
        &facts(false),
    );
    let j: JoinV4 = serde_yaml::from_str(&text).unwrap();
    assert_eq!(j.api_version, "kubeadm.k8s.io/v1beta4");
    assert_eq!(j.kind, "JoinConfiguration");
    check_discovery(&j.discovery);
    assert_eq!(j.node_registration.name, "node-a");
    assert_eq!(
        j.node_registration.cri_socket,
        "unix:///run/containerd/containerd.sock"
    );
    let args: Vec<(&str, &str)> = j
        .node_registration
        .kubelet_extra_args
        .iter()
        .map(|a| (a.name.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(
        args,
        [
            ("node-ip", "10.77.0.2"),
            ("node-labels", "kiln.dev/pool=edge,kiln.dev/zone=token"),
            ("max-pods", "110"),
        ]
    );
    assert!(j.control_plane.is_none(), "workers have no controlPlane");
    // The list form, not a map.
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert!(v["nodeRegistration"]["kubeletExtraArgs"].is_sequence());
}

#[test]
fn kubeadm_v1beta3_server_has_a_map_and_a_control_plane() {
    let mut st = settings(ClusterKind::Kubeadm);
    st.kubeadm_api = KubeadmApi::V1beta3;
    let text = kubeadm::join_config(
        &st,
        Role::Server,
        &BTreeMap::new(),
        &kubeadm_join(true),
        &facts(true),
    );
    let j: JoinV3 = serde_yaml::from_str(&text).unwrap();
    assert_eq!(j.api_version, "kubeadm.k8s.io/v1beta3");
    assert_eq!(j.kind, "JoinConfiguration");
    check_discovery(&j.discovery);
    assert_eq!(j.node_registration.name, "node-a");
    assert_eq!(
        j.node_registration.cri_socket,
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(
        j.node_registration.kubelet_extra_args,
        BTreeMap::from([
            ("node-ip".to_string(), "10.77.0.2".to_string()),
            ("max-pods".to_string(), "110".to_string()),
        ])
    );
    let cp = j.control_plane.unwrap();
    assert_eq!(cp.local_api_endpoint.advertise_address, "10.77.0.2");
    assert_eq!(cp.local_api_endpoint.bind_port, 6443);
    assert_eq!(cp.certificate_key.as_deref(), Some(CERT_KEY));
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert!(v["nodeRegistration"]["kubeletExtraArgs"].is_mapping());
    // v1beta4 server: the same control plane.
    st.kubeadm_api = KubeadmApi::V1beta4;
    let j: JoinV4 = serde_yaml::from_str(&kubeadm::join_config(
        &st,
        Role::Server,
        &BTreeMap::new(),
        &kubeadm_join(false),
        &facts(false),
    ))
    .unwrap();
    let cp = j.control_plane.unwrap();
    assert_eq!(cp.local_api_endpoint.bind_port, 6443);
    assert_eq!(cp.certificate_key, None);
}

// ---------------------------------------------------------------------------------------
// Settings.

#[test]
fn cluster_settings_parse_with_defaults_and_name_their_errors() {
    let s = parse_settings(
        "schema = 1\n[cluster]\nkind = \"k3s\"\nrole = \"worker\"\nlabels = { \"kiln.dev/pool\" = \"edge\" }\nkubelet_args = [\"max-pods=110\", \"v=2\"]\ncontainerd = \"k3s\"\n",
    )
    .unwrap();
    let c = s.cluster.unwrap();
    assert_eq!(c.kind, ClusterKind::K3s);
    assert_eq!(c.role, ImageRole::Worker);
    assert_eq!(c.labels["kiln.dev/pool"], "edge");
    assert_eq!(
        c.kubelet_args,
        [("max-pods".into(), "110".into()), ("v".into(), "2".into())]
    );
    assert_eq!(c.containerd, Containerd::K3s);
    assert_eq!(s.channels, crate::config::settings::ALL_CHANNELS);
    let c = parse_settings("[cluster]\nkind = \"kubeadm\"\n")
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(
        (c.role, c.containerd, c.kubeadm_api),
        (ImageRole::Any, Containerd::Image, KubeadmApi::V1beta4)
    );
    assert_eq!(parse_settings("").unwrap().cluster, None);
    for (text, why) in [
        ("[cluster]\nkind = \"k8s\"\n", "cluster.kind = \"k8s\""),
        ("[cluster]\nkind = \"k3s\"\nrole = \"master\"\n", "cluster.role = \"master\""),
        ("[cluster]\nkind = \"k3s\"\nkubelet_args = [\"max-pods\"]\n", "\"max-pods\" is not"),
        ("[cluster]\nkind = \"k3s\"\nkubelet_args = [\"--v=2\"]\n", "without the leading --"),
        ("[cluster]\nkind = \"k3s\"\nkubelet_args = [\"node-ip=1.2.3.4\"]\n", "sets node-ip itself"),
        ("[cluster]\nkind = \"k3s\"\nlabels = { \"a=b\" = \"c\" }\n", "key \"a=b\""),
        ("[cluster]\nkind = \"k3s\"\nlabels = { a = \"x,y\" }\n", "value \"x,y\""),
        ("[cluster]\nkind = \"kubeadm\"\ncontainerd = \"k3s\"\n", "needs kind = \"k3s\""),
        ("[cluster]\nkind = \"k3s\"\ncontainerd = \"docker\"\n", "cluster.containerd = \"docker\""),
        ("[cluster]\nkind = \"k3s\"\nkubeadm_api = \"v1beta4\"\n", "for kind = \"kubeadm\" only"),
        ("[cluster]\nkind = \"kubeadm\"\nkubeadm_api = \"v1\"\n", "cluster.kubeadm_api = \"v1\""),
        (
            "[cluster]\nkind = \"kubeadm\"\nkubeadm_api = \"v1beta3\"\nkubelet_args = [\"v=1\", \"v=2\"]\n",
            "v is given twice",
        ),
        ("[cluster]\nkind = \"k3s\"\nflavour = 1\n", "unknown field"),
        ("[cluster]\nrole = \"any\"\n", "kind"),
    ] {
        let e = parse_settings(text).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Failure classes and secrets.

#[test]
fn failures_are_classified_from_their_log_lines() {
    let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (c, line) = classify(
        ClusterKind::K3s,
        &l(&[
            "level=info msg=\"Starting k3s agent\"",
            "level=error msg=\"failed to get CA certs: https://10.77.0.1:6443/cacerts: 401 Unauthorized\"",
            "level=info msg=\"retrying\"",
        ]),
    );
    assert_eq!(c, FailClass::TokenRefused);
    assert!(line.contains("401 Unauthorized"));
    let (c, _) = classify(
        ClusterKind::K3s,
        &l(&["level=fatal msg=\"token is not valid: bad CA hash\""]),
    );
    assert_eq!(c, FailClass::TokenRefused);
    let (c, line) = classify(
        ClusterKind::K3s,
        &l(&["level=error msg=\"dial tcp 10.77.0.1:6443: connect: connection refused\""]),
    );
    assert_eq!(
        (c, line.contains("connection refused")),
        (FailClass::Unreachable, true)
    );
    let (c, _) = classify(ClusterKind::Kubeadm, &l(&["error execution phase preflight: couldn't validate the identity of the API Server: Get \"https://10.77.0.1:6443\": dial tcp: i/o timeout"]));
    assert_eq!(c, FailClass::Unreachable);
    let (c, _) = classify(ClusterKind::Kubeadm, &l(&["error execution phase preflight: unable to fetch the kubeadm-config ConfigMap: failed to get config map: Unauthorized"]));
    assert_eq!(c, FailClass::TokenRefused);
    let (c, _) = classify(
        ClusterKind::Kubeadm,
        &l(&["error: token id \"abcdef\" is invalid for this cluster or it has expired"]),
    );
    assert_eq!(c, FailClass::TokenRefused);
    let (c, line) = classify(
        ClusterKind::Kubeadm,
        &l(&["[preflight] running", "swap is on", ""]),
    );
    assert_eq!((c, line.as_str()), (FailClass::Other, "swap is on"));
    assert_eq!(classify(ClusterKind::K3s, &[]).1, "no log lines");
}

#[test]
fn secrets_are_redacted_whole_and_in_parts() {
    let j = Join::K3s(k3s_first_server_join());
    let sec = run::secrets(&j);
    let line = format!(
        "token {K3S_TOKEN_TEXT} pass s3cr3tpassw0rdvalue agent {K3S_AGENT_TOKEN_TEXT}\nnext"
    );
    let r = run::redact(&line, &sec);
    assert!(!r.contains("s3cr3t") && !r.contains("agentsecret"), "{r}");
    assert!(!r.contains('\n'));
    let j = Join::Kubeadm(kubeadm_join(true));
    let r = run::redact(
        &format!("bad {BOOTSTRAP} or 0123456789abcdef key {CERT_KEY}"),
        &run::secrets(&j),
    );
    assert!(
        !r.contains("0123456789abcdef") && !r.contains("f00dfeed"),
        "{r}"
    );
    assert!(run::redact(&"x".repeat(1000), &[]).len() <= run::MAX_LINE + 3);
}

#[test]
fn backoffs_double_to_their_caps_with_bounded_jitter() {
    let secs = |b: crate::backoff::Backoff, a, j| b.delay(a, j).as_secs();
    assert_eq!(
        (0..8)
            .map(|a| secs(run::ASK_BACKOFF, a, 0))
            .collect::<Vec<_>>(),
        [5, 10, 20, 40, 80, 160, 300, 300]
    );
    assert_eq!(secs(run::JOIN_BACKOFF, 0, 0), 10);
    assert_eq!(secs(run::JOIN_BACKOFF, 99, 0), 600);
    assert!(secs(run::JOIN_BACKOFF, 99, 255) <= 750);
    assert!(secs(run::JOIN_BACKOFF, 0, 255) >= 12);
}

// ---------------------------------------------------------------------------------------
// The overlay's side: the join never reaches the disk; the node's view.

fn identity() -> Identity {
    let mut key = [9u8; 32];
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    Identity {
        private_key: key,
        public_key: identity::public_of(&key),
        credential: "c".repeat(32),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        product_uuid: None,
    }
}

fn peer(name: &str, n: u8, public: Option<&str>) -> Peer {
    Peer {
        name: name.into(),
        public_key: PublicKey([n; 32]),
        allowed_ips: vec![format!("10.77.0.{n}/32").parse().unwrap()],
        endpoints: vec![],
        public_endpoint: public.map(str::to_string),
        public: public.is_some(),
        online: true,
    }
}

fn answer(join: Option<Join>) -> EnrollAnswer {
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
            version: 1,
            peers: vec![
                peer("node-a", 2, None),
                peer("relay", 5, Some("198.51.100.5:51820")),
            ],
        },
        heartbeat_secs: 30,
        cluster: ClusterJoin {
            role: Role::Worker,
            labels: BTreeMap::new(),
            join,
        },
    }
}

#[test]
fn the_enrollment_is_stored_without_the_join_secrets() {
    let mut sys = FakeSys::default();
    let e = state::Enrollment {
        server: "https://10.0.2.100:8443".into(),
        ca_hash: [0xab; 32],
        answer: answer(Some(Join::K3s(k3s_worker_join()))),
    };
    state::save_enrollment(&mut sys, &e).unwrap();
    let text = String::from_utf8(sys.files[crate::overlay::ENROLLMENT_PATH].clone()).unwrap();
    assert!(!text.contains(K3S_TOKEN_TEXT), "{text}");
    assert!(!text.contains("\"join\""), "{text}");
    let back = state::load_enrollment(&mut sys).unwrap().unwrap();
    assert_eq!(back.answer.cluster.join, None);
    assert_eq!(back.answer.node, e.answer.node);
}

fn overlay_files(public: Option<&str>) -> BTreeMap<String, Vec<u8>> {
    let f = EnrollmentFile {
        version: 1,
        server: "https://10.0.2.100:8443".into(),
        ca_hash: "ab".repeat(32),
        answer: answer(None),
    };
    let mut peers = answer(None).peers;
    peers.version = 2;
    peers.peers[0] = peer("node-a", 2, public);
    BTreeMap::from([
        (
            crate::overlay::ENROLLMENT_PATH.to_string(),
            serde_json::to_vec(&f).unwrap(),
        ),
        (
            crate::overlay::IDENTITY_PATH.to_string(),
            identity::render(&identity()),
        ),
        (
            crate::overlay::PEERS_PATH.to_string(),
            serde_json::to_vec(&peers).unwrap(),
        ),
    ])
}

#[test]
fn the_node_view_has_name_address_auth_and_a_verified_public_endpoint() {
    let files = |public| FakeSys {
        files: overlay_files(public),
        ..FakeSys::default()
    };
    let v = state::node_view(&mut files(Some("203.0.113.7:51820")))
        .unwrap()
        .unwrap();
    assert_eq!(v.name, "node-a");
    assert_eq!(v.address_v4, Ipv4Addr::new(10, 77, 0, 2));
    assert_eq!(v.server, "https://10.0.2.100:8443");
    assert_eq!(v.ca_hash, [0xab; 32]);
    assert_eq!(
        v.auth,
        NodeAuth {
            name: "node-a".into(),
            credential: "c".repeat(32)
        }
    );
    assert_eq!(v.public_endpoint.as_deref(), Some("203.0.113.7:51820"));
    assert!(!format!("{v:?}").contains(&"c".repeat(32)));
    // Not public (or no peers.json yet): no public endpoint.
    assert_eq!(
        state::node_view(&mut files(None))
            .unwrap()
            .unwrap()
            .public_endpoint,
        None
    );
    assert_eq!(state::node_view(&mut FakeSys::default()).unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// The supervisor, with fakes (k3s and kubeadm cannot run here).

/// What a started k3s unit does.
#[derive(Debug, Clone)]
enum K3sRun {
    /// Becomes active and writes the kubelet certificate.
    Joins,
    /// Fails with these journal lines.
    Fails(Vec<String>),
    /// Stays activating, logging these lines.
    Hangs(Vec<String>),
    /// Joins, then fails after this many looks at its state.
    JoinsThenCrashes(u32),
}

#[derive(Default)]
struct World {
    /// Looks at the unit's state left before a `JoinsThenCrashes` unit fails.
    crash_in: Option<u32>,
    now: u64,
    files: BTreeMap<String, (Vec<u8>, u64)>,
    dirs: BTreeSet<String>,
    console: Vec<String>,
    calls: Vec<String>,
    sleeps: Vec<u64>,
    answers: VecDeque<Result<ClusterJoin, ApiError>>,
    k3s: VecDeque<K3sRun>,
    kubeadm: VecDeque<(i32, String, bool)>,
    unit: BTreeMap<String, (UnitState, Vec<String>)>,
    /// Every file content ever written, to look for secrets in the wrong places.
    written: Vec<(String, Vec<u8>)>,
}

type W = Rc<RefCell<World>>;

struct FSystemd(W);
struct FRemote(W);
/// Files (with modification times), the clock, the console and kubeadm of the world.
struct FSys(W);

impl Systemd for FSystemd {
    fn start(&mut self, unit: &str) -> Result<(), String> {
        let mut w = self.0.borrow_mut();
        w.calls.push(format!("start {unit}"));
        if unit == KUBELET_UNIT {
            w.unit.insert(unit.into(), (UnitState::Active, vec![]));
            return Ok(());
        }
        let run = w.k3s.pop_front().expect("an unscripted k3s start");
        let now = w.now;
        let st = match run {
            K3sRun::Joins => {
                w.files
                    .insert(K3S_KUBELET_CERT.into(), (b"cert".to_vec(), now + 3));
                (UnitState::Active, vec![])
            }
            K3sRun::Fails(l) => (UnitState::Failed, l),
            K3sRun::Hangs(l) => (UnitState::Activating, l),
            K3sRun::JoinsThenCrashes(n) => {
                w.files
                    .insert(K3S_KUBELET_CERT.into(), (b"cert".to_vec(), now + 3));
                w.crash_in = Some(n);
                (UnitState::Active, vec![])
            }
        };
        w.unit.insert(unit.into(), st);
        Ok(())
    }
    fn stop(&mut self, unit: &str) -> Result<(), String> {
        let mut w = self.0.borrow_mut();
        w.calls.push(format!("stop {unit}"));
        if let Some(u) = w.unit.get_mut(unit) {
            u.0 = UnitState::Inactive;
        }
        Ok(())
    }
    fn state(&mut self, unit: &str) -> UnitState {
        let mut w = self.0.borrow_mut();
        match w.crash_in {
            Some(0) => {
                w.crash_in = None;
                if let Some(u) = w.unit.get_mut(unit) {
                    u.0 = UnitState::Failed;
                }
            }
            Some(n) => w.crash_in = Some(n - 1),
            None => {}
        }
        w.unit.get(unit).map_or(UnitState::Inactive, |u| u.0)
    }
    fn reset_failed(&mut self, unit: &str) -> Result<(), String> {
        self.0
            .borrow_mut()
            .calls
            .push(format!("reset-failed {unit}"));
        Ok(())
    }
    fn daemon_reload(&mut self) -> Result<(), String> {
        self.0.borrow_mut().calls.push("daemon-reload".into());
        Ok(())
    }
    fn journal_tail(&mut self, unit: &str, _since: u64, _lines: u32) -> Vec<String> {
        self.0
            .borrow()
            .unit
            .get(unit)
            .map(|u| u.1.clone())
            .unwrap_or_default()
    }
}

impl Exec for FSys {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        assert_eq!(
            cmd.capture,
            Capture::Stderr,
            "kubeadm's progress goes to the journal"
        );
        let mut w = self.0.borrow_mut();
        w.calls.push(cmd.line());
        if cmd.args.first() == Some(&"reset") {
            return CommandResult::exited(0, "");
        }
        let (code, stderr, conf) = w.kubeadm.pop_front().expect("an unscripted kubeadm join");
        if conf {
            let now = w.now;
            w.files.insert(KUBELET_CONF.into(), (b"conf".to_vec(), now));
        }
        CommandResult::Exited {
            code: Some(code),
            stdout: String::new(),
            stderr,
        }
    }
}

impl Files for FSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        self.0
            .borrow()
            .files
            .get(path)
            .map(|f| f.0.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut w = self.0.borrow_mut();
        let now = w.now;
        w.files.insert(path.into(), (data.to_vec(), now));
        w.written.push((path.into(), data.to_vec()));
        Ok(())
    }
    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.0.borrow_mut().files.remove(path);
        Ok(())
    }
    fn exists(&mut self, path: &str) -> bool {
        self.0.borrow().files.contains_key(path)
    }
    fn is_dir(&mut self, path: &str) -> bool {
        self.0.borrow().dirs.contains(path)
    }
    fn list_dir(&mut self, _: &str) -> io::Result<Vec<String>> {
        unimplemented!("kiln-cluster lists no folders")
    }
    fn modified(&mut self, path: &str) -> Option<u64> {
        self.0.borrow().files.get(path).map(|f| f.1)
    }
    fn mkdir(&mut self, _: &str) -> io::Result<()> {
        unimplemented!("kiln-cluster makes only root-only folders")
    }
    fn mkdir_private(&mut self, path: &str) -> io::Result<()> {
        self.0.borrow_mut().dirs.insert(path.into());
        Ok(())
    }
    fn write_atomic(&mut self, _: &str, _: &[u8], _: u32) -> io::Result<()> {
        unimplemented!("kiln-cluster writes only root-only files")
    }
}

impl Remote for FRemote {
    fn cluster(
        &mut self,
        server: &str,
        ca_hash: [u8; 32],
        auth: &NodeAuth,
    ) -> Result<ClusterJoin, ApiError> {
        assert_eq!(server, "https://10.0.2.100:8443");
        assert_eq!(ca_hash, [0xab; 32]);
        assert_eq!(auth.name, "node-a");
        let mut w = self.0.borrow_mut();
        w.calls.push("GET /v1/cluster".into());
        w.answers
            .pop_front()
            .unwrap_or(Err(ApiError::Refused(ErrorBody::new(
                ErrorCode::BadRequest,
                "test script ran out of answers",
            ))))
    }
}

impl Clock for FSys {
    fn now(&mut self) -> u64 {
        self.0.borrow().now
    }
    fn elapsed(&mut self) -> Duration {
        Duration::from_secs(self.0.borrow().now)
    }
    fn sleep(&mut self, d: Duration) {
        let mut w = self.0.borrow_mut();
        w.now += d.as_secs();
        w.sleeps.push(d.as_secs());
    }
}

impl Console for FSys {
    fn say(&mut self, line: &str) {
        self.0.borrow_mut().console.push(line.to_string());
    }
    fn note(&mut self, line: &str) {
        self.say(line);
    }
}

impl Resolve for FSys {
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host {
            "node-a.example.org" => Ok(vec![SocketAddr::new("203.0.113.9".parse().unwrap(), port)]),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

impl Random for FSys {
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

/// A world whose overlay is up.
fn world(public: Option<&str>) -> W {
    let w = W::default();
    {
        let mut b = w.borrow_mut();
        b.now = 1_000_000;
        for (k, v) in overlay_files(public) {
            b.files.insert(k, (v, 0));
        }
        b.files
            .insert(crate::overlay::STATUS_PATH.into(), (b"{}".to_vec(), 0));
    }
    w
}

fn supervise(w: &W, st: Option<&ClusterSettings>) -> u8 {
    supervise_rejoining(w, st, 0)
}

fn supervise_rejoining(w: &W, st: Option<&ClusterSettings>, rejoins: u32) -> u8 {
    let (mut a, mut d, mut e) = (FSystemd(w.clone()), FRemote(w.clone()), FSys(w.clone()));
    let mut env = Env {
        systemd: &mut a,
        remote: &mut d,
        sys: &mut e,
    };
    run::supervise(&mut env, st, rejoins)
}

fn cj(role: Role, join: Option<Join>) -> ClusterJoin {
    ClusterJoin {
        role,
        labels: token_labels(),
        join,
    }
}

fn status_of(w: &W) -> StatusFile {
    serde_json::from_slice(&w.borrow().files[STATUS_PATH].0).unwrap()
}

fn console(w: &W) -> Vec<String> {
    w.borrow().console.clone()
}

/// No secret in the console, the status file, or any file but the token files and
/// kubeadm's config.
fn assert_no_secret_leaks(w: &W) {
    let b = w.borrow();
    let secrets = [
        "s3cr3tpassw0rdvalue",
        K3S_AGENT_TOKEN_TEXT,
        "0123456789abcdef",
        CERT_KEY,
    ];
    for line in &b.console {
        for s in secrets {
            assert!(!line.contains(s), "secret on the console: {line}");
        }
    }
    for (path, data) in &b.written {
        if [K3S_TOKEN, K3S_AGENT_TOKEN, KUBEADM_CONFIG].contains(&path.as_str()) {
            continue;
        }
        let text = String::from_utf8_lossy(data);
        for s in secrets {
            assert!(!text.contains(s), "secret in {path}: {text}");
        }
    }
}

#[test]
fn without_cluster_settings_it_idles() {
    let w = world(None);
    assert_eq!(supervise(&w, None), 0);
    assert_eq!(
        console(&w),
        ["kiln-cluster: no [cluster] in /usr/lib/kiln/agent.toml, nothing to do"]
    );
    assert_eq!(status_of(&w).phase, Phase::Idle);
    assert!(w.borrow().calls.is_empty());
}

#[test]
fn a_worker_waits_for_the_overlay_and_a_server_then_joins() {
    let w = world(Some("node-a.example.org:51820"));
    // kiln0 is not up yet.
    let overlay = w
        .borrow_mut()
        .files
        .remove(crate::overlay::STATUS_PATH)
        .unwrap();
    {
        let mut b = w.borrow_mut();
        let none = K3sJoin {
            server_url: None,
            ..k3s_worker_join()
        };
        b.answers = VecDeque::from([
            Ok(cj(Role::Worker, None)),
            Ok(cj(Role::Worker, Some(Join::K3s(none.clone())))),
            Ok(cj(Role::Worker, Some(Join::K3s(none)))),
            Ok(cj(Role::Worker, Some(Join::K3s(k3s_worker_join())))),
        ]);
        b.k3s = VecDeque::from([K3sRun::Joins]);
    }
    // The fake clock's sleep puts the overlay up after the first wait.
    struct UpAfterSleep {
        sys: FSys,
        overlay: Option<(Vec<u8>, u64)>,
    }
    forward!(UpAfterSleep => sys: Files, Console, Random, Exec, Resolve);
    impl Clock for UpAfterSleep {
        fn now(&mut self) -> u64 {
            self.sys.now()
        }
        fn elapsed(&mut self) -> Duration {
            self.sys.elapsed()
        }
        fn sleep(&mut self, d: Duration) {
            if let Some(f) = self.overlay.take() {
                self.sys
                    .0
                    .borrow_mut()
                    .files
                    .insert(crate::overlay::STATUS_PATH.into(), f);
            }
            self.sys.sleep(d);
        }
    }
    let st = settings(ClusterKind::K3s);
    let code = {
        let (mut a, mut d) = (FSystemd(w.clone()), FRemote(w.clone()));
        let mut e = UpAfterSleep {
            sys: FSys(w.clone()),
            overlay: Some(overlay),
        };
        let mut env = Env {
            systemd: &mut a,
            remote: &mut d,
            sys: &mut e,
        };
        run::supervise(&mut env, Some(&st), 0)
    };
    assert_eq!(code, 0, "{:#?}", console(&w));
    assert_eq!(
        console(&w),
        [
            "kiln-cluster: waiting for the overlay (kiln-overlay.service: kiln0 up, node enrolled)",
            "kiln-cluster: kiln-enroll has no cluster yet (`kiln-enroll cluster init` gives it one); asking again with backoff",
            "kiln-cluster: waiting for a server node (no k3s server has enrolled yet)",
            "kiln-cluster: joining k3s as worker node-a (node-ip 10.77.0.2, external ip 203.0.113.9)",
            "kiln-cluster: joined k3s as worker node-a (node-ip 10.77.0.2)",
        ]
    );
    let b = w.borrow();
    // Overlay poll, then the asking backoff growing: 5, 10, 20; then join polls.
    assert_eq!(b.sleeps[..4], [5, 5, 10, 20]);
    // The config was written and kept, the token written and deleted again.
    let config = String::from_utf8(b.files[K3S_CONFIG].0.clone()).unwrap();
    assert!(
        config.contains("node-external-ip: \"203.0.113.9\""),
        "{config}"
    );
    assert!(!b.files.contains_key(K3S_TOKEN));
    assert!(!b.files.contains_key(K3S_AGENT_TOKEN));
    assert!(b
        .written
        .iter()
        .any(|(p, d)| p == K3S_TOKEN && d == K3S_TOKEN_TEXT.as_bytes()));
    assert!(b.dirs.contains(RANCHER_ETC));
    // k3s needs its token at every start: kiln-cluster, not systemd, starts it again.
    let dropin = format!("{RUNTIME_UNITS}/k3s-agent.service.d/{RESTART_DROPIN}");
    assert!(!b.files.contains_key(&dropin));
    let calls: Vec<&str> = b
        .calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("GET"))
        .collect();
    assert_eq!(
        calls,
        ["reset-failed k3s-agent.service", "start k3s-agent.service"]
    );
    drop(b);
    let s = status_of(&w);
    assert_eq!(
        (s.phase, s.kind.as_deref(), s.role.as_deref(), s.last_error),
        (Phase::Joined, Some("k3s"), Some("worker"), None)
    );
    assert_no_secret_leaks(&w);
}

#[test]
fn a_refused_token_is_reported_without_secrets_and_backs_off_longer_each_time() {
    let w = world(None);
    let refused = vec![
        "level=info msg=\"Starting k3s agent v1.31\"".to_string(),
        format!(
            "level=error msg=\"failed to get CA certs with token {K3S_TOKEN_TEXT}: 401 Unauthorized\""
        ),
    ];
    {
        let mut b = w.borrow_mut();
        b.answers = (0..3)
            .map(|_| Ok(cj(Role::Server, Some(Join::K3s(k3s_first_server_join())))))
            .collect();
        b.k3s = VecDeque::from([
            K3sRun::Fails(refused.clone()),
            K3sRun::Hangs(refused),
            K3sRun::Joins,
        ]);
    }
    assert_eq!(supervise(&w, Some(&settings(ClusterKind::K3s))), 0);
    let c = console(&w);
    let errors: Vec<&String> = c.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{c:#?}");
    assert!(errors[0].starts_with("kiln-cluster: ERROR: k3s join failed (token refused): "));
    assert!(errors[0].contains("401 Unauthorized") && errors[0].contains("<redacted>"));
    assert!(errors[0].ends_with("; retrying in 10s"), "{}", errors[0]);
    assert!(errors[1].ends_with("; retrying in 20s"), "{}", errors[1]);
    assert_eq!(
        c.last().unwrap(),
        "kiln-cluster: joined k3s as server node-a (node-ip 10.77.0.2)"
    );
    let b = w.borrow();
    assert!(b.sleeps.contains(&10) && b.sleeps.contains(&20));
    // The hanging one was stopped once its journal showed the refusal.
    assert!(b.calls.contains(&"stop k3s-server.service".to_string()));
    assert!(
        b.calls
            .iter()
            .filter(|c| *c == "reset-failed k3s-server.service")
            .count()
            >= 2
    );
    assert!(!b.files.contains_key(K3S_AGENT_TOKEN) && !b.files.contains_key(K3S_TOKEN));
    drop(b);
    assert_no_secret_leaks(&w);
    // While failed, the status says why and when it tries again.
    let failed: Vec<StatusFile> = w
        .borrow()
        .written
        .iter()
        .filter(|(p, _)| p == STATUS_PATH)
        .map(|(_, d)| serde_json::from_slice(d).unwrap())
        .filter(|s: &StatusFile| s.phase == Phase::Failed)
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("token refused: "));
    assert_eq!(failed[0].next_retry_secs, Some(10));
    assert_eq!(failed[1].next_retry_secs, Some(20));
}

#[test]
fn an_image_role_that_does_not_fit_the_token_stops_with_exit_2() {
    let w = world(None);
    w.borrow_mut().answers = VecDeque::from([Ok(cj(
        Role::Server,
        Some(Join::K3s(k3s_first_server_join())),
    ))]);
    let mut st = settings(ClusterKind::K3s);
    st.role = ImageRole::Worker;
    assert_eq!(supervise(&w, Some(&st)), 2);
    let c = console(&w);
    assert!(
        c.last().unwrap().starts_with(
            "kiln-cluster: ERROR: this image is for worker nodes only (cluster.role = \"worker\""
        ),
        "{c:#?}"
    );
    assert_eq!(status_of(&w).phase, Phase::Failed);
    assert!(!w.borrow().calls.iter().any(|c| c.starts_with("start")));
    // A kubeadm cluster for a k3s image: the same.
    let w = world(None);
    w.borrow_mut().answers = VecDeque::from([Ok(cj(
        Role::Worker,
        Some(Join::Kubeadm(kubeadm_join(false))),
    ))]);
    assert_eq!(supervise(&w, Some(&settings(ClusterKind::K3s))), 2);
    assert!(console(&w)
        .last()
        .unwrap()
        .contains("kiln-enroll's cluster is kubeadm"));
}

#[test]
fn kiln_enroll_trouble_is_said_once_and_a_refusal_stops() {
    let w = world(None);
    let down = || ApiError::Other {
        message: "connect: connection refused".into(),
        retry: true,
    };
    w.borrow_mut().answers = VecDeque::from([
        Err(down()),
        Err(down()),
        Err(down()),
        Err(ApiError::Refused(ErrorBody::new(
            ErrorCode::NodeRevoked,
            "node revoked",
        ))),
    ]);
    assert_eq!(supervise(&w, Some(&settings(ClusterKind::K3s))), 2);
    let c = console(&w);
    assert_eq!(c.len(), 2, "{c:#?}");
    assert!(c[0].contains("kiln-enroll does not answer"));
    assert!(c[1].starts_with("kiln-cluster: ERROR: kiln-enroll refuses the join parameters"));
    assert_eq!(w.borrow().sleeps, [5, 10, 20]);
}

#[test]
fn kubeadm_joins_and_retries_after_an_unreachable_server() {
    let w = world(None);
    {
        let mut b = w.borrow_mut();
        b.answers = (0..2)
            .map(|_| Ok(cj(Role::Worker, Some(Join::Kubeadm(kubeadm_join(false))))))
            .collect();
        b.kubeadm = VecDeque::from([
            (
                1,
                "[preflight] Running pre-flight checks\nerror execution phase preflight: Get \"https://10.77.0.1:6443/api\": dial tcp 10.77.0.1:6443: connect: no route to host\n".to_string(),
                false,
            ),
            (0, String::new(), true),
        ]);
    }
    assert_eq!(supervise(&w, Some(&settings(ClusterKind::Kubeadm))), 0);
    let c = console(&w);
    assert!(
        c.iter().any(|l| l.starts_with(
            "kiln-cluster: ERROR: kubeadm join failed (server unreachable): error execution phase preflight"
        ) && l.ends_with("retrying in 10s")),
        "{c:#?}"
    );
    assert_eq!(
        c.last().unwrap(),
        "kiln-cluster: joined kubeadm as worker node-a (node-ip 10.77.0.2)"
    );
    let b = w.borrow();
    let runs: Vec<&str> = b
        .calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.starts_with("kubeadm"))
        .collect();
    assert_eq!(
        runs,
        [
            "kubeadm join --config /run/kiln/kubeadm/join.yaml",
            "kubeadm reset --force",
            "kubeadm join --config /run/kiln/kubeadm/join.yaml",
        ]
    );
    assert!(
        !b.files.contains_key(KUBEADM_CONFIG),
        "join.yaml is deleted once joined"
    );
    assert!(b.dirs.contains(KUBERNETES_ETC));
    assert!(b.files.contains_key(&format!(
        "{RUNTIME_UNITS}/kubelet.service.d/{RESTART_DROPIN}"
    )));
    drop(b);
    assert_no_secret_leaks(&w);
}

#[test]
fn an_already_joined_kubeadm_node_only_starts_its_kubelet() {
    let w = world(None);
    {
        let mut b = w.borrow_mut();
        b.files.insert(KUBELET_CONF.into(), (b"conf".to_vec(), 5));
        b.answers = VecDeque::from([Ok(cj(
            Role::Server,
            Some(Join::Kubeadm(kubeadm_join(true))),
        ))]);
    }
    assert_eq!(supervise(&w, Some(&settings(ClusterKind::Kubeadm))), 0);
    let b = w.borrow();
    assert!(
        !b.calls.iter().any(|c| c.starts_with("kubeadm")),
        "{:?}",
        b.calls
    );
    assert!(b.calls.contains(&"start kubelet.service".to_string()));
    assert!(b.calls.contains(&"daemon-reload".to_string()));
    assert!(!b.written.iter().any(|(p, _)| p == KUBEADM_CONFIG));
    assert_eq!(
        b.console.last().unwrap(),
        "kiln-cluster: joined kubeadm as server node-a (node-ip 10.77.0.2)"
    );
}

#[test]
fn status_prints_the_phase_error_and_next_try() {
    let w = world(None);
    let st = StatusFile {
        kind: Some("k3s".into()),
        role: Some("worker".into()),
        phase: Phase::Failed,
        last_error: Some("token refused: 401 Unauthorized".into()),
        next_retry_secs: Some(40),
        since: 999_990,
    };
    w.borrow_mut()
        .files
        .insert(STATUS_PATH.into(), (serde_json::to_vec(&st).unwrap(), 0));
    assert_eq!(run::status(&mut FSys(w.clone())), 0);
    assert_eq!(
        console(&w),
        [
            "cluster k3s role worker phase failed for 10s",
            "last error: token refused: 401 Unauthorized",
            "next try: 40s after the last one failed",
        ]
    );
    let text = serde_json::to_string(&st).unwrap();
    assert!(text.contains("\"phase\":\"failed\""), "{text}");
    let w = world(None);
    assert_eq!(run::status(&mut FSys(w.clone())), 1);
    assert!(console(&w)[0].contains("does not exist"));
}

#[test]
fn a_stopped_k3s_unit_joins_again_with_a_fresh_token_that_is_deleted_again() {
    let w = world(None);
    {
        let mut b = w.borrow_mut();
        b.answers = (0..2)
            .map(|_| Ok(cj(Role::Server, Some(Join::K3s(k3s_first_server_join())))))
            .collect();
        b.k3s = VecDeque::from([K3sRun::JoinsThenCrashes(20), K3sRun::Joins]);
    }
    let code = supervise_rejoining(&w, Some(&settings(ClusterKind::K3s)), 1);
    assert_eq!(code, 0);
    let c = console(&w);
    let joined = c
        .iter()
        .filter(|l| l.contains("kiln-cluster: joined k3s as server"))
        .count();
    assert_eq!(joined, 2, "{c:#?}");
    assert!(
        c.iter()
            .any(|l| l.contains("k3s-server.service stopped (Failed)")),
        "{c:#?}"
    );
    let b = w.borrow();
    assert!(!b.files.contains_key(K3S_TOKEN));
    assert!(!b.files.contains_key(K3S_AGENT_TOKEN));
    let token_writes = b.written.iter().filter(|(p, _)| p == K3S_TOKEN).count();
    assert_eq!(
        token_writes, 2,
        "the token is fetched and written for each start"
    );
    let starts = b
        .calls
        .iter()
        .filter(|c| c.as_str() == "start k3s-server.service")
        .count();
    assert_eq!(starts, 2);
    drop(b);
    assert_no_secret_leaks(&w);
}

#[test]
fn labels_from_kiln_enroll_that_break_the_rules_are_left_out_by_name() {
    let st = settings(ClusterKind::K3s);
    let join = ClusterJoin {
        role: Role::Worker,
        labels: BTreeMap::from([
            ("kiln.dev/zone".to_string(), "token".to_string()),
            // A comma would split --node-labels into another label.
            (
                "kiln.dev/evil".to_string(),
                "x,node-role.kubernetes.io/control-plane=".into(),
            ),
            ("Bad Key".to_string(), "v".to_string()),
        ]),
        join: None,
    };
    let (labels, refused) = run::merged_labels(&st, &join);
    assert_eq!(
        labels.get("kiln.dev/zone").map(String::as_str),
        Some("token")
    );
    assert!(!labels.contains_key("kiln.dev/evil"));
    assert!(!labels.contains_key("Bad Key"));
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|r| r.contains("\"kiln.dev/evil\"") && r.contains("left out")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("\"Bad Key\"")),
        "{refused:?}"
    );
    // What the node joins with carries no trace of them.
    let text = k3s::config(
        &st,
        Role::Worker,
        &labels,
        &k3s_worker_join(),
        &facts(false),
    );
    assert!(
        !text.contains("control-plane") && !text.contains("Bad Key"),
        "{text}"
    );
}
