//! The `kiln-enroll` command line: argument definitions, their checks, and what each
//! command does with the store. The binary's `main` only calls [`run`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kiln_enroll_proto::api::{Role, MAX_WAIT_SECS};
use kiln_enroll_proto::net::IpNet;
use kiln_enroll_proto::token::{to_hex, Token, ALPHABET, ID_LEN, SECRET_LEN};
use kiln_enroll_proto::validate::MIN_MTU;

use crate::ca::Ca;
use crate::clock::{Clock, SystemClock};
use crate::cluster::{self as cl, parse_ca_cert_hash, parse_endpoint, parse_server_url};
use crate::server::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_SOURCE};
use crate::store::{
    self, logic, Cluster, K3sCluster, KubeadmCluster, PgOptions, Store, TokenRecord,
};
use crate::{labels, listing, random, ratelimit};

mod serve;

/// Where the state lives unless `--state` or `KILN_ENROLL_STATE` says otherwise.
pub const DEFAULT_STATE: &str = "sqlite:/var/lib/kiln-enroll/state.db";

/// Longest `--request-timeout`.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Longest `--endpoint-ttl` (30 days).
pub const MAX_ENDPOINT_TTL_SECS: u64 = 30 * 86_400;
/// Longest token `--ttl` (10 years, the CA's own lifetime).
pub const MAX_TOKEN_TTL_SECS: u64 = 3650 * 86_400;
/// Largest count flags (`--max-connections`, `--max-per-source`, `--max-failures`,
/// `--uses`).
pub const MAX_COUNT: u32 = 1_000_000;

/// kiln-enroll: join tokens, the node registry, overlay addresses and the peer list.
#[derive(Debug, Parser)]
#[command(
    name = "kiln-enroll",
    version,
    about = "kiln-enroll: join tokens, node registry, overlay addresses and the peer list, \
             over HTTPS with its own CA",
    long_about = "kiln-enroll: the server kiln nodes enroll with. It holds join tokens, the \
                  node registry, WireGuard overlay address allocation and the watchable \
                  peer list, and serves them over HTTPS with its own CA (made on first use \
                  and kept in the state). Tokens carry the CA's hash, so a node needs \
                  nothing but the token and the server's address.\n\n\
                  Typical use:\n  kiln-enroll serve --listen 0.0.0.0:8443 --san \
                  enroll.example.org\n  kiln-enroll token create --ttl 1h --uses 3 \
                  --label zone=home\n  kiln-enroll cluster init k3s\n  kiln-enroll node list"
)]
pub struct Cli {
    /// The state: sqlite:PATH (one server) or postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (several replicas share it).
    #[arg(
        long,
        global = true,
        env = "KILN_ENROLL_STATE",
        hide_env_values = true,
        default_value = DEFAULT_STATE,
        value_name = "URL"
    )]
    pub state: String,

    /// PEM file of the CA certificate(s) that may sign the PostgreSQL server's
    /// certificate (TLS is required to a PostgreSQL host that is not this machine).
    #[arg(
        long,
        global = true,
        env = "KILN_ENROLL_POSTGRES_CA",
        hide_env_values = true,
        default_value = store::SYSTEM_CA_BUNDLE,
        value_name = "FILE"
    )]
    pub postgres_ca: PathBuf,

    /// Allow a PostgreSQL URL with sslmode=disable to a host that is not this machine:
    /// the CA key and the join tokens then cross the network in clear text.
    #[arg(long, global = true)]
    pub allow_plaintext_postgres: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the enrollment API over HTTPS; prints
    /// `kiln-enroll: listening on https://ADDR ca-hash HEX` on stdout once ready.
    Serve(ServeArgs),
    /// Create, list and revoke join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and revoke enrolled nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The server's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The Kubernetes cluster nodes join: its parameters are handed to each node for
    /// its role (in the enrollment answer and on GET /v1/cluster).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `cluster` commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Set the cluster (k3s or kubeadm). Refused when one is set, unless --replace.
    #[command(subcommand)]
    Init(ClusterInit),
    /// Show the cluster: kind, server URL or endpoint, CA hashes; secrets show as
    /// `<set>`, never their value.
    Show(ListArgs),
    /// Remove the cluster: nodes get no join parameters from then on (nodes that have
    /// joined stay in the cluster).
    Clear,
}

/// `cluster init` kinds.
#[derive(Debug, Subcommand)]
pub enum ClusterInit {
    /// A k3s cluster. Without --server-url the first node enrolled with a server token
    /// starts it (cluster-init) and every other node joins https://<its overlay IPv4>:6443;
    /// workers that enroll before any server wait for it. Without token files, both
    /// tokens are generated (48 hex characters from /dev/urandom) and stored.
    #[command(
        long_about = "Set a k3s cluster.\n\nWithout --server-url the first node enrolled \
                      with a server token (`token create --role server`) starts the cluster \
                      (k3s cluster-init), and every other node joins \
                      https://<its overlay IPv4>:6443; workers that enroll before any server \
                      wait and ask again. That node stays the cluster's first server even if \
                      it is revoked later (its URL keeps being handed out; use `cluster init \
                      k3s --replace --server-url ...` to point nodes at another server).\n\n\
                      Servers get the server token and the agent token; workers only the \
                      agent token. Without --token-file / --agent-token-file the tokens are \
                      generated (48 hex characters from /dev/urandom) and stored; they are \
                      never printed."
    )]
    K3s(K3sInitArgs),
    /// A kubeadm cluster made outside kiln: its API endpoint, a bootstrap token and the CA
    /// hash (from `kubeadm token create --print-join-command`), and optionally the
    /// certificate key that lets server nodes join the control plane.
    Kubeadm(KubeadmInitArgs),
}

/// `cluster init k3s` options.
#[derive(Debug, Args)]
pub struct K3sInitArgs {
    /// The server every node joins (an existing k3s server). Without it, the first
    /// server node to enroll starts the cluster.
    #[arg(long, value_parser = parse_server_url, value_name = "https://HOST:6443")]
    pub server_url: Option<String>,
    /// File holding the server token (servers join with it); generated when left out.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding the agent token (workers join with it); generated when left out.
    #[arg(long, value_name = "FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// Replace a cluster that is already set.
    #[arg(long)]
    pub replace: bool,
}

/// `cluster init kubeadm` options.
#[derive(Debug, Args)]
pub struct KubeadmInitArgs {
    /// The API server, HOST:PORT (e.g. the first control-plane node's overlay address,
    /// 10.77.0.1:6443, or a load balancer).
    #[arg(long, value_parser = parse_endpoint, value_name = "HOST:PORT")]
    pub endpoint: String,
    /// The bootstrap token, abcdef.0123456789abcdef (prefer --token-file: a command
    /// line ends up in shell history).
    #[arg(
        long,
        value_name = "TOKEN",
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bootstrap token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA public key pin, sha256:<64 hex> (repeatable).
    #[arg(long = "ca-cert-hash", required = true, value_parser = parse_ca_cert_hash, value_name = "sha256:HEX")]
    pub ca_cert_hashes: Vec<String>,
    /// The key of the uploaded control-plane certificates (64 hex, from `kubeadm init
    /// phase upload-certs --upload-certs`); server nodes join the control plane with
    /// it. Without it only workers can join.
    #[arg(long, value_name = "HEX")]
    pub certificate_key: Option<String>,
    /// Replace a cluster that is already set.
    #[arg(long)]
    pub replace: bool,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free one; the ready line names it).
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Extra name (DNS name or IP address) for the server certificate, in addition to
    /// kiln-enroll, localhost and 127.0.0.1. Repeatable. Nodes check the fixed name
    /// kiln-enroll, so this matters only for other clients.
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// IPv4 pool for overlay addresses (a /8 to /30). The IPv6 pool is derived from the
    /// CA: fdXX:XXXX:XXXX::/64.
    #[arg(long, default_value = "10.77.0.0/16", value_parser = parse_pool, value_name = "CIDR")]
    pub pool_v4: IpNet,
    /// Largest overlay MTU; nodes use the smaller of this and their path MTU minus 80.
    #[arg(long, default_value_t = 1420, value_parser = clap::value_parser!(u16).range(i64::from(MIN_MTU)..=9000), value_name = "BYTES")]
    pub mtu: u16,
    /// WireGuard persistent keepalive for nodes that are not public (seconds, or 25s, 1m).
    #[arg(long, default_value = "25", value_parser = parse_keepalive, value_name = "SECS")]
    pub keepalive: u16,
    /// How often nodes send heartbeats (seconds, or 30s, 1m; 1 to 3600 s).
    #[arg(long, default_value = "30", value_parser = parse_heartbeat, value_name = "SECS")]
    pub heartbeat: u32,
    /// A node whose heartbeats stop for this long is shown offline and its endpoints are
    /// withdrawn (seconds, or 90s, 2m; at least --heartbeat, at most 30 days).
    #[arg(long, default_value = "90", value_parser = parse_endpoint_ttl, value_name = "SECS")]
    pub endpoint_ttl: u64,
    /// Longest time a peer-list long poll is held open (1 to 120 s).
    #[arg(long, default_value = "60", value_parser = parse_watch, value_name = "SECS")]
    pub watch_timeout: u32,
    /// Failed authentication attempts (bad tokens, wrong node credentials) allowed per
    /// source (an IPv4 address or an IPv6 /64) per minute; beyond them the source's
    /// failing requests get 429, while a valid token or node credential still passes (0:
    /// no limit; at most 1000000).
    #[arg(long, default_value_t = ratelimit::DEFAULT_MAX_FAILURES, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_COUNT)), value_name = "N")]
    pub max_failures: u32,
    /// Time a client has for the TLS handshake, its request head and its body, each
    /// within the same deadline from the accept (slow requests are answered 408 and
    /// closed); also how long an answer may wait for the client to read it (1 to 300 s).
    #[arg(long, default_value = "10", value_parser = parse_request_timeout, value_name = "SECS")]
    pub request_timeout: u64,
    /// Connections open at once (each long-polling node holds one); beyond it new
    /// connections are closed at once, before any TLS work (1 to 1000000, and kept
    /// under the open-file limit).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=u64::from(MAX_COUNT)), value_name = "N")]
    pub max_connections: usize,
    /// Connections from one source (an IPv4 address or an IPv6 /64) that may be in the
    /// TLS handshake or sending their request at once; more are closed at once, before
    /// any TLS work. Connections whose request has arrived (long polls) do not count
    /// (1 to 1000000).
    #[arg(long, default_value_t = DEFAULT_MAX_PER_SOURCE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=u64::from(MAX_COUNT)), value_name = "N")]
    pub max_per_source: usize,
}

/// `token` commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it (alone) on stdout.
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(ListArgs),
    /// Revoke a token: it enrolls no more nodes (nodes already enrolled stay).
    Revoke {
        /// The token id (the 6 characters after `::`).
        id: String,
    },
}

/// `token create` options.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// How long the token can enroll: 90s, 30m, 1h, 2d (a plain number is seconds; at
    /// most 3650d).
    #[arg(long, default_value = "1h", value_parser = parse_token_ttl, value_name = "DURATION")]
    pub ttl: u64,
    /// How many nodes it can enroll (1 to 1000000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)), value_name = "N")]
    pub uses: u32,
    /// The role nodes enrolled with it get in the cluster.
    #[arg(long, default_value = "worker", value_name = "worker|server")]
    pub role: Role,
    /// A Kubernetes node label key=value for nodes enrolled with it. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `node` commands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List enrolled nodes.
    List(ListArgs),
    /// Revoke a node: it leaves every peer list within a watch cycle and its calls are
    /// refused. Its address is never given out again.
    Revoke {
        /// The node name (see `node list`).
        name: String,
    },
}

/// `ca` commands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA's SubjectPublicKeyInfo sha256 (what tokens pin), making the CA if
    /// there is none yet.
    Hash,
}

/// `90`, `90s`, `30m`, `1h`, `2d` as seconds.
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 1h or 2d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unit {unit:?} is not one of s, m, h, d (e.g. 90s, 30m, 1h, 2d)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is not a duration between 1 s and a few centuries"))
}

fn secs_in(text: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let s = parse_secs(text)?;
    if s < lo || s > hi {
        return Err(format!("{text:?} is {s} s; allowed are {lo} to {hi} s"));
    }
    Ok(s)
}

fn parse_keepalive(text: &str) -> Result<u16, String> {
    // 0 (keepalive off) is allowed here, unlike other durations.
    if text.trim() == "0" {
        return Ok(0);
    }
    secs_in(text, 1, 3600).map(|s| s as u16)
}

fn parse_heartbeat(text: &str) -> Result<u32, String> {
    secs_in(text, 1, 3600).map(|s| s as u32)
}

fn parse_watch(text: &str) -> Result<u32, String> {
    secs_in(text, 1, u64::from(MAX_WAIT_SECS)).map(|s| s as u32)
}

fn parse_request_timeout(text: &str) -> Result<u64, String> {
    secs_in(text, 1, MAX_REQUEST_TIMEOUT_SECS)
}

fn parse_endpoint_ttl(text: &str) -> Result<u64, String> {
    secs_in(text, 1, MAX_ENDPOINT_TTL_SECS)
}

fn parse_token_ttl(text: &str) -> Result<u64, String> {
    secs_in(text, 1, MAX_TOKEN_TTL_SECS)
}

fn parse_pool(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text.parse()?;
    if !net.addr.is_ipv4() || !(8..=30).contains(&net.len) {
        return Err(format!("{text:?} is not an IPv4 prefix between /8 and /30"));
    }
    Ok(net.network())
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let clock = SystemClock;
    let pg = PgOptions {
        ca_file: cli.postgres_ca.clone(),
        allow_plaintext: cli.allow_plaintext_postgres,
    };
    let open = || -> anyhow::Result<Arc<dyn Store>> {
        let s = store::open_with(&cli.state, &pg)
            .with_context(|| format!("opening the state {}", store::redact_url(&cli.state)))?;
        Ok(Arc::from(s))
    };
    match cli.command {
        Command::Serve(args) => serve::serve(open()?, args),
        Command::Ca(CaCommand::Hash) => {
            let ca = Ca::load(open()?.as_ref(), clock.now())?;
            println!("{}", to_hex(&ca.hash()));
            Ok(())
        }
        Command::Token(TokenCommand::Create(args)) => token_create(open()?.as_ref(), &clock, args),
        Command::Token(TokenCommand::List(args)) => {
            let tokens = open()?.tokens()?;
            let rows = listing::token_rows(&tokens, clock.now());
            print_rows(&rows, args.json, listing::token_table)
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            if !open()?.revoke_token(&id)? {
                bail!("there is no token {id:?} (see `kiln-enroll token list`)");
            }
            eprintln!("token {id} revoked: it enrolls no more nodes");
            Ok(())
        }
        Command::Node(NodeCommand::List(args)) => {
            let rows = listing::node_rows(&open()?.nodes()?);
            print_rows(&rows, args.json, listing::node_table)
        }
        Command::Cluster(c) => cluster(open()?.as_ref(), c),
        Command::Node(NodeCommand::Revoke { name }) => {
            if !open()?.revoke_node(&name)? {
                bail!("there is no node {name:?} (see `kiln-enroll node list`)");
            }
            eprintln!("node {name} revoked: peers drop it within a watch cycle");
            Ok(())
        }
    }
}

fn cluster(store: &dyn Store, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init(init) => {
            let (c, replace) = cluster_of(init)?;
            if !store.set_cluster(&c, replace)? {
                let kind = store.cluster()?.map_or("", |c| c.kind());
                bail!(
                    "a {kind} cluster is already set (see `kiln-enroll cluster show`): add \
                     --replace to replace it (nodes that have joined keep their cluster; new \
                     joins get the new parameters)"
                );
            }
            match &c {
                Cluster::K3s(k) => match &k.server_url {
                    Some(url) => eprintln!("k3s cluster set: every node joins {url}"),
                    None => eprintln!(
                        "k3s cluster set: the first server node to enroll starts it, the \
                         others join https://<its overlay IPv4>:{}",
                        logic::K3S_PORT
                    ),
                },
                Cluster::Kubeadm(k) => eprintln!(
                    "kubeadm cluster set: nodes join {}{}",
                    k.endpoint,
                    if k.certificate_key.is_some() {
                        " (servers as control-plane nodes)"
                    } else {
                        " (workers only: no --certificate-key)"
                    }
                ),
            }
            Ok(())
        }
        ClusterCommand::Show(args) => {
            let Some(c) = store.cluster()? else {
                let text = if args.json {
                    "null\n".to_string()
                } else {
                    "no cluster is set: nodes get no join parameters (set one with \
                     `kiln-enroll cluster init k3s` or `... kubeadm`)\n"
                        .to_string()
                };
                return write_stdout(&text);
            };
            let first = match &c {
                Cluster::K3s(K3sCluster {
                    server_url: None,
                    init_node: Some(name),
                    ..
                }) => store.node(name)?,
                _ => None,
            };
            let view = cl::show(&c, first.as_ref());
            let text = if args.json {
                let mut t = serde_json::to_string_pretty(&view)?;
                t.push('\n');
                t
            } else {
                cl::show_text(&view)
            };
            write_stdout(&text)
        }
        ClusterCommand::Clear => {
            if store.clear_cluster()? {
                eprintln!(
                    "cluster removed: nodes get no join parameters from now on (nodes that \
                     have joined stay in it)"
                );
            } else {
                eprintln!("no cluster was set: nothing to remove");
            }
            Ok(())
        }
    }
}

/// The cluster an `init` describes, secrets read and checked (errors name the flag or
/// file), and whether it may replace one.
fn cluster_of(init: ClusterInit) -> anyhow::Result<(Cluster, bool)> {
    Ok(match init {
        ClusterInit::K3s(a) => {
            let read = |flag: &str, file: &Option<PathBuf>| -> anyhow::Result<String> {
                Ok(match file {
                    Some(p) => cl::read_secret_file(flag, p, kiln_enroll_proto::validate::secret)?,
                    None => cl::generate_token()?,
                })
            };
            let token = read("--token-file", &a.token_file)?;
            let agent_token = read("--agent-token-file", &a.agent_token_file)?;
            if token == agent_token {
                bail!(
                    "--agent-token-file: the agent token is the server token; give two \
                     different tokens, or leave out either file to have one generated \
                     (workers must not be able to join as servers)"
                );
            }
            let c = Cluster::K3s(K3sCluster {
                server_url: a.server_url,
                init_node: None,
                token,
                agent_token,
            });
            (c, a.replace)
        }
        ClusterInit::Kubeadm(a) => {
            let token = match (&a.token, &a.token_file) {
                (_, Some(p)) => cl::read_secret_file(
                    "--token-file",
                    p,
                    kiln_enroll_proto::validate::kubeadm_token,
                )?,
                (Some(t), None) => {
                    cl::check_flag_secret("--token", t, kiln_enroll_proto::validate::kubeadm_token)?
                }
                (None, None) => bail!("--token or --token-file is required"),
            };
            let certificate_key = a
                .certificate_key
                .as_deref()
                .map(|k| {
                    cl::check_flag_secret(
                        "--certificate-key",
                        k,
                        kiln_enroll_proto::validate::certificate_key,
                    )
                })
                .transpose()?;
            // The same pin twice is harmless but noise in every join config.
            let mut hashes: Vec<String> = Vec::new();
            for h in a.ca_cert_hashes {
                if !hashes.contains(&h) {
                    hashes.push(h);
                }
            }
            let c = Cluster::Kubeadm(KubeadmCluster {
                endpoint: a.endpoint,
                token,
                ca_cert_hashes: hashes,
                certificate_key,
            });
            (c, a.replace)
        }
    })
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn print_rows<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    table: fn(&[T]) -> String,
) -> anyhow::Result<()> {
    let text = if json {
        let mut t = serde_json::to_string_pretty(rows)?;
        t.push('\n');
        t
    } else {
        table(rows)
    };
    write_stdout(&text)
}

fn token_create(store: &dyn Store, clock: &dyn Clock, args: TokenCreateArgs) -> anyhow::Result<()> {
    let labels = labels::parse_all(&args.labels)?;
    let now = clock.now();
    let ca = Ca::load(store, now)?;
    // Each character uniformly from a-z0-9 (rejection sampling, not `byte % 36`).
    let chars = random::string(ID_LEN + SECRET_LEN, ALPHABET)?;
    let (id, secret) = chars.split_at(ID_LEN);
    let token = Token {
        ca_hash: ca.hash(),
        id: id.to_string(),
        secret: secret.to_string(),
    };
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        created: now,
        expires: now.saturating_add(args.ttl),
        uses_total: args.uses,
        uses_left: args.uses,
        role: args.role,
        labels,
        revoked: false,
    };
    store
        .create_token(&record)
        .with_context(|| format!("storing token {}", token.id))?;
    println!("{}", token.reveal());
    eprintln!(
        "token {}: {} use(s) as {}, valid until {} UTC",
        token.id,
        args.uses,
        args.role.as_str(),
        listing::utc(record.expires)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("30m"), Ok(1800));
        assert_eq!(parse_secs("1h"), Ok(3600));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        for bad in ["", "h", "1w", "-1s", "1.5h", "0s", "99999999999999999999d"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
        assert!(parse_watch("121").unwrap_err().contains("1 to 120"));
        assert_eq!(parse_keepalive("0"), Ok(0));
    }

    #[test]
    fn pools() {
        assert_eq!(
            parse_pool("10.77.3.4/16").unwrap().to_string(),
            "10.77.0.0/16"
        );
        assert!(parse_pool("10.0.0.0/31").is_err());
        assert!(parse_pool("fd00::/64").is_err());
    }

    #[test]
    fn cli_is_consistent_and_parses_the_documented_forms() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "kiln-enroll",
            "--state",
            "sqlite:/tmp/x.db",
            "token",
            "create",
            "--ttl",
            "1h",
            "--uses",
            "3",
            "--role",
            "server",
            "--label",
            "a=b",
            "--label",
            "c=d",
        ])
        .unwrap();
        let Command::Token(TokenCommand::Create(a)) = c.command else {
            panic!("not token create")
        };
        assert_eq!(
            (a.ttl, a.uses, a.role, a.labels.len()),
            (3600, 3, Role::Server, 2)
        );
        assert!(Cli::try_parse_from(["kiln-enroll", "token", "create", "--uses", "0"]).is_err());
        assert!(Cli::try_parse_from(["kiln-enroll", "serve", "--mtu", "1000"]).is_err());
        let s = Cli::try_parse_from(["kiln-enroll", "serve", "--listen", "127.0.0.1:0"]).unwrap();
        let Command::Serve(s) = s.command else {
            panic!()
        };
        assert_eq!(s.pool_v4.to_string(), "10.77.0.0/16");
        assert_eq!(
            (s.mtu, s.keepalive, s.heartbeat, s.endpoint_ttl),
            (1420, 25, 30, 90)
        );
    }

    #[test]
    fn cluster_commands_parse_and_check_their_flags() {
        let hash = format!("sha256:{}", "AB".repeat(32));
        let c = Cli::try_parse_from([
            "kiln-enroll",
            "cluster",
            "init",
            "kubeadm",
            "--endpoint",
            "10.77.0.1:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--ca-cert-hash",
            &hash,
            "--ca-cert-hash",
            &hash.to_lowercase(),
            "--replace",
        ])
        .unwrap();
        let Command::Cluster(ClusterCommand::Init(init)) = c.command else {
            panic!("not cluster init")
        };
        let (cluster, replace) = cluster_of(init).unwrap();
        assert!(replace);
        let Cluster::Kubeadm(k) = cluster else {
            panic!("not kubeadm")
        };
        // Pins are kept lowercase, once each.
        assert_eq!(k.ca_cert_hashes, [hash.to_lowercase()]);
        assert_eq!(k.certificate_key, None);
        let c = Cli::try_parse_from([
            "kiln-enroll",
            "cluster",
            "init",
            "k3s",
            "--server-url",
            "https://10.77.0.1:6443/",
        ])
        .unwrap();
        let Command::Cluster(ClusterCommand::Init(init)) = c.command else {
            panic!("not cluster init")
        };
        let (Cluster::K3s(k), false) = cluster_of(init).unwrap() else {
            panic!("not k3s")
        };
        assert_eq!(k.server_url.as_deref(), Some("https://10.77.0.1:6443"));
        assert_eq!((k.token.len(), k.agent_token.len()), (48, 48));
        assert_ne!(k.token, k.agent_token);
        for bad in [
            vec!["cluster", "init", "k3s", "--server-url", "10.0.0.1:6443"],
            vec!["cluster", "init", "kubeadm", "--endpoint", "x:1"],
            vec![
                "cluster",
                "init",
                "kubeadm",
                "--endpoint",
                "x:1",
                "--token",
                "a",
            ],
            vec!["cluster", "show", "--yaml"],
        ] {
            let mut args = vec!["kiln-enroll"];
            args.extend(bad.iter().copied());
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?}");
        }
    }
}
