//! The real overlay effects: files under /var/lib/kiln and /run/kiln, /dev/urandom, the
//! clock, the console, interface addresses (getifaddrs), name resolution, and
//! kiln-enroll through the pinned client.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_enroll_proto::api::{
    EnrollAnswer, EnrollRequest, HeartbeatAnswer, HeartbeatRequest, PeerList,
};
use kiln_enroll_proto::client::{Client, ClientError, NodeAuth};

use super::run::{self, Event, Settings};
use super::{Api, ApiError, OverlaySys, TAG};
use crate::netlink::{Net, RealNet};

/// Timeout for enroll and heartbeat calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout for the long poll (longer than its wait).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(run::WATCH_WAIT_SECS as u64 + 20);

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes `data` to `path` atomically and durably, root-only: the folder is made 0700,
/// a temporary file 0600 is written and fsynced, renamed over `path`, and the folder is
/// fsynced so the rename survives a power loss.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| with_path(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| with_path(dir, e))?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        )
    })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| with_path(&tmp, e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| with_path(&tmp, e))?;
    f.write_all(data).map_err(|e| with_path(&tmp, e))?;
    f.sync_all().map_err(|e| with_path(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| with_path(path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(dir, e))
}

/// The real system.
#[derive(Debug, Default)]
pub struct RealSys;

impl OverlaySys for RealSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(path).map_err(|e| with_path(Path::new(path), e))
    }

    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        write_private(Path::new(path), data)
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(Path::new(path), e)),
            _ => Ok(()),
        }
    }

    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .map_err(|e| with_path(Path::new("/dev/urandom"), e))
    }

    fn now(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn next_event(&mut self, events: &Receiver<Event>, d: Duration) -> Option<Event> {
        events.recv_timeout(d).ok()
    }

    fn say(&mut self, line: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn interface_addrs(&mut self) -> io::Result<Vec<(String, IpAddr)>> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        let mut out = Vec::new();
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((a.interface_name, ip));
        }
        Ok(out)
    }

    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (host, port).to_socket_addrs().map(Iterator::collect)
    }

    fn kick(&mut self, to: IpAddr) -> io::Result<()> {
        let any: IpAddr = match to {
            IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        // Port 9 is the discard service: nothing answers, the datagram only has to leave.
        std::net::UdpSocket::bind((any, 0))?.send_to(b"kiln", (to, 9))?;
        Ok(())
    }
}

/// A client error in the overlay's terms (retryable or not, the server's body kept).
pub(crate) fn api_error(e: ClientError) -> ApiError {
    let retry = e.retryable();
    match e {
        ClientError::Refused { body, .. } => ApiError::Refused(body),
        ClientError::PinMismatch {
            expected,
            presented,
        } => ApiError::PinMismatch {
            expected,
            presented,
        },
        other => ApiError::Other {
            message: other.to_string(),
            retry,
        },
    }
}

/// kiln-enroll through the pinned client.
#[derive(Debug)]
pub struct RealApi {
    call: Client,
    poll: Client,
}

impl RealApi {
    /// A client for `url`, trusting only the CA with SPKI hash `pin`.
    pub fn new(url: &str, pin: [u8; 32]) -> Result<RealApi, String> {
        let c = Client::new(url, pin).map_err(|e| format!("server {url}: {e}"))?;
        Ok(RealApi {
            call: c.clone().with_timeout(CALL_TIMEOUT),
            poll: c.with_timeout(POLL_TIMEOUT),
        })
    }
}

impl Api for RealApi {
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollAnswer, ApiError> {
        self.call.enroll(req).map_err(api_error)
    }

    fn peers(&self, auth: &NodeAuth, since: u64, wait_secs: u32) -> Result<PeerList, ApiError> {
        self.poll.peers(auth, since, wait_secs).map_err(api_error)
    }

    fn heartbeat(
        &self,
        auth: &NodeAuth,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, ApiError> {
        self.call.heartbeat(auth, req).map_err(api_error)
    }
}

fn make_api(url: &str, pin: [u8; 32]) -> Result<Arc<dyn Api>, String> {
    Ok(Arc::new(RealApi::new(url, pin)?))
}

fn spawn_watch(api: Arc<dyn Api>, auth: NodeAuth, since: u64, tx: std::sync::mpsc::Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("kiln-overlay-watch".into())
        .spawn(move || run::watch(api, auth, since, tx, std::thread::sleep));
    if let Err(e) = spawned {
        // Without the watch the mesh still runs from heartbeats' view; say so.
        println!("{TAG}: ERROR: cannot start the peer-list watch thread: {e}");
    }
}

fn net() -> Result<RealNet, String> {
    RealNet::new().map_err(|e| format!("netlink: {e}"))
}

/// `overlay run`.
pub fn run_daemon() -> u8 {
    let mut sys = RealSys;
    let settings: Settings = match run::load_settings(&mut sys) {
        Ok(Some(s)) => s,
        Ok(None) => {
            sys.say(&format!("{TAG}: no [enroll] config, nothing to do"));
            return 0;
        }
        Err(f) => {
            sys.say(&format!("{TAG}: ERROR: {}", f.message));
            return f.code;
        }
    };
    let mut n = match net() {
        Ok(n) => n,
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {e}"));
            return 1;
        }
    };
    run::daemon(&mut sys, &mut n, &make_api, &settings, &spawn_watch)
}

/// `overlay enroll`.
pub fn run_enroll(a: &run::EnrollArgs) -> u8 {
    run::enroll_once(&mut RealSys, &make_api, a)
}

/// `overlay status`.
pub fn run_status() -> u8 {
    let mut sys = RealSys;
    match net() {
        Ok(mut n) => run::status(&mut sys, &mut n as &mut dyn Net),
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {e}"));
            1
        }
    }
}
