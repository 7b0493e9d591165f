//! What the overlay runs with: `[enroll]` from the merged node config (`overlay run`), or
//! the arguments of `overlay enroll`.

use crate::flags::Flags;
use kiln_enroll_proto::token::Token;
use kiln_enroll_proto::validate;

use super::{Fatal, OverlaySys, CONFIG_PATH, DEFAULT_LISTEN_PORT};
use crate::config::schema::{self, ServerUrl};

/// The `[enroll]` settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// kiln-enroll.
    pub server: ServerUrl,
    /// The join token.
    pub token: Token,
    /// The public endpoint this node claims.
    pub endpoint: Option<String>,
    /// WireGuard port.
    pub listen_port: u16,
    /// MTU override.
    pub mtu: Option<u16>,
    /// The name the node asks for.
    pub hostname: String,
}

pub(super) fn kernel_hostname(sys: &mut dyn OverlaySys) -> String {
    sys.read_file(crate::config::KERNEL_HOSTNAME)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Reads `[enroll]` from the merged config; None when there is none.
pub fn load_settings(sys: &mut dyn OverlaySys) -> Result<Option<Settings>, Fatal> {
    let bytes = match sys.read_file(CONFIG_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Fatal::retry(format!("{CONFIG_PATH}: {e}"))),
    };
    let cfg = schema::parse_bytes(&bytes).map_err(|errs| {
        let why: Vec<String> = errs.iter().map(ToString::to_string).collect();
        Fatal::stop(format!("{CONFIG_PATH}: {}", why.join("; ")))
    })?;
    let e = cfg.enroll;
    if e.is_empty() {
        return Ok(None);
    }
    let (Some(server), Some(token)) = (e.server, e.token) else {
        return Err(Fatal::stop(format!(
            "{CONFIG_PATH}: [enroll] needs both server and token (set enroll.server and \
             enroll.token in any config channel, e.g. kiln.enroll.server=https://HOST:8443 \
             kiln.enroll.token=KLN1... on the kernel command line)"
        )));
    };
    let hostname = match cfg.hostname {
        Some(h) => h.as_str().to_string(),
        None => kernel_hostname(sys),
    };
    Ok(Some(Settings {
        server,
        token,
        endpoint: e.endpoint,
        listen_port: e.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
        mtu: e.mtu,
        hostname: kiln_contract::names::node_name_from_hostname(&hostname),
    }))
}

/// `overlay enroll` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollArgs {
    /// `--server`.
    pub server: ServerUrl,
    /// `--token`.
    pub token: Token,
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--listen-port`.
    pub listen_port: u16,
}

/// Parses `overlay enroll` arguments.
pub fn parse_enroll_args(args: &[String]) -> Result<EnrollArgs, String> {
    let mut server = None;
    let mut token = None;
    let mut endpoint = None;
    let mut listen_port = DEFAULT_LISTEN_PORT;
    let mut flags = Flags::new(args);
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || flags.value(flag, inline.clone());
        match flag {
            "--server" => {
                let v = value()?;
                server = Some(ServerUrl::parse(&v).map_err(|e| format!("--server {v:?}: {e}"))?);
            }
            "--token" => {
                token = Some(Token::parse(&value()?).map_err(|e| format!("--token: {e}"))?);
            }
            "--endpoint" => {
                let v = value()?;
                validate::parse_host_port(&v).map_err(|e| format!("--endpoint {v:?}: {e}"))?;
                endpoint = Some(v);
            }
            "--listen-port" => {
                let v = value()?;
                listen_port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("--listen-port {v:?} is not a port 1-65535"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(EnrollArgs {
        server: server.ok_or("--server URL is required")?,
        token: token.ok_or("--token TOKEN is required")?,
        endpoint,
        listen_port,
    })
}
