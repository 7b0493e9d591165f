//! The cloud channel: which cloud the node runs in (from DMI data only) and the user-data
//! its metadata service holds.
//!
//! No metadata address is probed blindly: on a machine whose DMI data names no supported
//! cloud, [`fetch`] returns `Ok(None)` without touching the network.
//!
//! DMI rules (files under `/sys/class/dmi/id`), from each provider's documentation:
//! - EC2 ("Detect whether a host is an EC2 instance", AWS EC2 User Guide): Nitro
//!   instances report `sys_vendor` / `bios_vendor` "Amazon EC2"; every HVM instance has a
//!   `product_uuid` starting with "ec2" / "EC2", or, where SMBIOS gives it little-endian,
//!   with the first field's bytes swapped (`45E12AEC-…`: "EC" at 6..8 and "2" at 4).
//! - GCE ("Detect if running in Compute Engine"): `product_name` "Google Compute Engine",
//!   `sys_vendor` "Google".
//! - Azure: the chassis asset tag `7783-7084-3265-9085-8269-3286-77` Azure sets on every
//!   VM; or `sys_vendor` "Microsoft Corporation" with `product_name` "Virtual Machine"
//!   (Hyper-V, which Azure runs on).
//! - Oracle Cloud: chassis asset tag "OracleCloud.com" (bare metal and VMs alike).
//!
//! Protocols (all at http://169.254.169.254):
//! - EC2 IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   gives a session token, sent as `X-aws-ec2-metadata-token` with
//!   `GET /latest/user-data`; 404 means no user-data.
//! - GCE: `GET /computeMetadata/v1/instance/attributes/user-data` with
//!   `Metadata-Flavor: Google`; the answer must carry the same header; 404 means none.
//! - Azure IMDS: `GET /metadata/instance/compute/userData?api-version=2021-01-01&format=text`
//!   with `Metadata: true`, base64; when empty, CustomData from the provisioning media
//!   ([`azure_media`]).
//! - Oracle IMDS v2: `GET /opc/v2/instance/metadata/user_data` with
//!   `Authorization: Bearer Oracle`, base64; 404 means none.
//!
//! The unit starts right after systemd-networkd, so DHCP may still be running: connection
//! failures, dropped connections, 429 and 5xx answers are retried with backoff until the
//! budget runs out.

pub mod azure_media;
pub mod http;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use http::{Http, HttpError, Request, Response, TcpHttp};
use kiln_contract::base64;

use crate::backoff::Backoff;

/// Suffix of every error: cloud config is one channel among several.
const GOES_ON: &str = "the node goes on without cloud config";

/// Pauses between attempts: 250 ms doubling up to 2 s (no jitter: one node, one server).
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_secs(2),
};
/// Longest a single attempt may take (connect, then each read).
const PER_TRY: Duration = Duration::from_secs(5);
/// Shortest timeout given to an attempt, even when the budget is spent.
const MIN_TRY: Duration = Duration::from_millis(200);
/// How long "no route to the metadata address" is retried, whatever the budget: DHCP can
/// take longer than the budget on a slow (emulated, busy) machine, and a cloud VM without
/// network has nothing better to do. Only reached on machines whose DMI names a cloud.
pub const NETWORK_WAIT: Duration = Duration::from_secs(180);
/// Once the network is up, a server that fails is retried at least this long, even when
/// waiting for the network used up the budget.
const GRACE_AFTER_NETWORK: Duration = Duration::from_secs(10);

/// A supported cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Amazon EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
    /// Microsoft Azure.
    Azure,
    /// Oracle Cloud Infrastructure.
    Oracle,
}

impl Provider {
    /// The channel name on the console (`ec2`, `gce`, `azure`, `oracle`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ec2 => "ec2",
            Provider::Gce => "gce",
            Provider::Azure => "azure",
            Provider::Oracle => "oracle",
        }
    }
}

/// The DMI strings detection looks at (trimmed; empty when missing or unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    /// `sys_vendor` (SMBIOS type 1 manufacturer).
    pub sys_vendor: String,
    /// `bios_vendor` (type 0 vendor).
    pub bios_vendor: String,
    /// `product_name` (type 1 product).
    pub product_name: String,
    /// `product_uuid` (type 1 UUID; readable by root only).
    pub product_uuid: String,
    /// `chassis_asset_tag` (type 3 asset tag).
    pub chassis_asset_tag: String,
}

impl Dmi {
    /// Reads the strings from a `/sys/class/dmi/id`-like folder. A missing or unreadable
    /// file counts as empty: machines without DMI (many arm64 boards) are simply no cloud.
    pub fn read(dir: &Path) -> Dmi {
        let get = |name: &str| {
            std::fs::read(dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default()
        };
        Dmi {
            sys_vendor: get("sys_vendor"),
            bios_vendor: get("bios_vendor"),
            product_name: get("product_name"),
            product_uuid: get("product_uuid"),
            chassis_asset_tag: get("chassis_asset_tag"),
        }
    }
}

/// Azure's fixed chassis asset tag.
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Which cloud the DMI data names, if any.
pub fn detect(dmi: &Dmi) -> Option<Provider> {
    // Asset tags are set on purpose by the provider: check them before vendor strings.
    if dmi.chassis_asset_tag == "OracleCloud.com" {
        return Some(Provider::Oracle);
    }
    if dmi.chassis_asset_tag == AZURE_ASSET_TAG {
        return Some(Provider::Azure);
    }
    if dmi.product_name == "Google Compute Engine" || dmi.sys_vendor == "Google" {
        return Some(Provider::Gce);
    }
    if dmi.sys_vendor == "Amazon EC2"
        || dmi.bios_vendor == "Amazon EC2"
        || ec2_uuid(&dmi.product_uuid)
    {
        return Some(Provider::Ec2);
    }
    if dmi.sys_vendor == "Microsoft Corporation" && dmi.product_name == "Virtual Machine" {
        return Some(Provider::Azure);
    }
    None
}

fn ec2_uuid(uuid: &str) -> bool {
    let u = uuid.to_ascii_lowercase();
    u.starts_with("ec2") || (u.len() >= 8 && &u[6..8] == "ec" && &u[4..5] == "2")
}

/// The user-data a cloud's metadata service (or Azure's provisioning media) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUserData {
    /// The channel name: `ec2`, `gce`, `azure` or `oracle`.
    pub provider: &'static str,
    /// Where it came from (a URL, or `/dev/srN:ovf-env.xml` for Azure CustomData).
    pub source: String,
    /// The user-data as text (base64 already decoded), exactly as the user gave it, so a
    /// `#kiln-config` first line is still there (it is a TOML comment). `None` when the
    /// cloud holds no user-data.
    pub text: Option<String>,
}

/// What went wrong while reading a cloud's user-data.
#[derive(Debug)]
pub struct CloudError {
    /// The channel name (`ec2`, `gce`, `azure`, `oracle`).
    pub provider: &'static str,
    /// The URL (or media path) that failed.
    pub source: String,
    /// What happened.
    pub kind: CloudErrorKind,
}

/// The kinds of [`CloudError`].
#[derive(Debug)]
pub enum CloudErrorKind {
    /// No usable answer within the budget (network down, refused, dropped, 5xx).
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
        /// The last failure.
        last: String,
    },
    /// The server's answer is not valid HTTP or breaks a size limit.
    Http(HttpError),
    /// An HTTP status the protocol does not allow here.
    Status {
        /// The status.
        status: u16,
        /// What it means for this request.
        meaning: &'static str,
    },
    /// A GCE answer without `Metadata-Flavor: Google`: not Google's metadata server.
    NotGoogle,
    /// The user-data is not base64 or not UTF-8.
    Decode(String),
    /// Azure's provisioning media could not be read.
    Media(String),
}

impl fmt::Display for CloudErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloudErrorKind::GaveUp {
                attempts,
                waited,
                last,
            } => write!(
                f,
                "no answer from the metadata service after {attempts} attempt(s) in {:.1} s (last: {last}); {GOES_ON}",
                waited.as_secs_f64()
            ),
            CloudErrorKind::Http(e) => write!(f, "{e}; {GOES_ON}"),
            CloudErrorKind::Status { status, meaning } => {
                write!(f, "HTTP {status}: {meaning}; {GOES_ON}")
            }
            CloudErrorKind::NotGoogle => write!(
                f,
                "the answer lacks the `Metadata-Flavor: Google` header, so it is not GCE's metadata server; {GOES_ON}"
            ),
            CloudErrorKind::Decode(m) | CloudErrorKind::Media(m) => write!(f, "{m}; {GOES_ON}"),
        }
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.provider, self.source, self.kind)
    }
}

impl std::error::Error for CloudError {}

/// Detects the cloud from the DMI folder `dmi` (normally `/sys/class/dmi/id`) and reads its
/// user-data. Failures are retried for at most `budget`, except that while the host has no
/// route to the metadata address (DHCP still running) it waits up to [`NETWORK_WAIT`].
/// `Ok(None)` when DMI names no supported cloud.
pub fn fetch(dmi: &Path, budget: Duration) -> Result<Option<CloudUserData>, CloudError> {
    let Some(provider) = detect(&Dmi::read(dmi)) else {
        return Ok(None);
    };
    let mut http = TcpHttp::metadata_service();
    fetch_from(
        provider,
        &mut http,
        budget,
        &mut azure_media::read_custom_data,
    )
    .map(Some)
}

/// Azure's CustomData reader (the media on a real VM; a stub in tests).
pub type MediaReader<'a> = dyn FnMut() -> Result<Option<azure_media::Found>, String> + 'a;

/// The provider's flow over `http`.
pub fn fetch_from(
    provider: Provider,
    http: &mut dyn Http,
    budget: Duration,
    media: &mut MediaReader<'_>,
) -> Result<CloudUserData, CloudError> {
    let now = http.elapsed();
    let mut s = Session {
        http,
        provider,
        deadline: now + budget,
        net_deadline: now + budget.max(NETWORK_WAIT),
        saw_no_route: false,
        reachable_at: None,
    };
    match provider {
        Provider::Ec2 => ec2(&mut s),
        Provider::Gce => gce(&mut s),
        Provider::Azure => azure(&mut s, media),
        Provider::Oracle => oracle(&mut s),
    }
}

const EC2_TOKEN: &str = "/latest/api/token";
const EC2_USER_DATA: &str = "/latest/user-data";
const GCE_USER_DATA: &str = "/computeMetadata/v1/instance/attributes/user-data";
const AZURE_USER_DATA: &str =
    "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
const ORACLE_USER_DATA: &str = "/opc/v2/instance/metadata/user_data";

fn ec2(s: &mut Session<'_>) -> Result<CloudUserData, CloudError> {
    let resp = s.send(&Request {
        method: "PUT",
        path: EC2_TOKEN,
        headers: &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
    })?;
    let token = match resp.status {
        200 => String::from_utf8(resp.body)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                s.err(
                    EC2_TOKEN,
                    CloudErrorKind::Decode(
                        "the token answer is empty or not printable ASCII".into(),
                    ),
                )
            })?,
        403 => {
            return Err(s.status(
                EC2_TOKEN,
                403,
                "the instance metadata service is turned off for this instance",
            ))
        }
        st => return Err(s.status(EC2_TOKEN, st, "the IMDSv2 token request was refused")),
    };
    let resp = s.send(&Request {
        method: "GET",
        path: EC2_USER_DATA,
        headers: &[("X-aws-ec2-metadata-token", &token)],
    })?;
    match resp.status {
        200 => s.text(EC2_USER_DATA, resp.body),
        404 => Ok(s.none(EC2_USER_DATA)),
        401 => Err(s.status(EC2_USER_DATA, 401, "the IMDSv2 token was rejected")),
        st => Err(s.status(
            EC2_USER_DATA,
            st,
            "unexpected answer to the user-data request",
        )),
    }
}

fn gce(s: &mut Session<'_>) -> Result<CloudUserData, CloudError> {
    let resp = s.send(&Request {
        method: "GET",
        path: GCE_USER_DATA,
        headers: &[("Metadata-Flavor", "Google")],
    })?;
    if resp.header("Metadata-Flavor") != Some("Google") {
        return Err(s.err(GCE_USER_DATA, CloudErrorKind::NotGoogle));
    }
    match resp.status {
        200 => s.text(GCE_USER_DATA, resp.body),
        404 => Ok(s.none(GCE_USER_DATA)),
        st => Err(s.status(
            GCE_USER_DATA,
            st,
            "unexpected answer to the user-data request",
        )),
    }
}

fn azure(s: &mut Session<'_>, media: &mut MediaReader<'_>) -> Result<CloudUserData, CloudError> {
    let resp = s.send(&Request {
        method: "GET",
        path: AZURE_USER_DATA,
        headers: &[("Metadata", "true")],
    })?;
    let from_imds = match resp.status {
        200 => s.base64_text(AZURE_USER_DATA, &resp.body)?,
        // 404: an IMDS without the userData field; fall back to CustomData as for empty.
        404 => None,
        st => {
            return Err(s.status(
                AZURE_USER_DATA,
                st,
                "unexpected answer to the userData request",
            ))
        }
    };
    if let Some(text) = from_imds {
        return Ok(s.found(AZURE_USER_DATA, text));
    }
    match media() {
        Ok(Some((source, text))) => Ok(CloudUserData {
            provider: s.provider.name(),
            source,
            text: Some(text),
        }),
        Ok(None) => Ok(s.none(AZURE_USER_DATA)),
        Err(m) => Err(CloudError {
            provider: s.provider.name(),
            source: "Azure provisioning media".into(),
            kind: CloudErrorKind::Media(m),
        }),
    }
}

fn oracle(s: &mut Session<'_>) -> Result<CloudUserData, CloudError> {
    let resp = s.send(&Request {
        method: "GET",
        path: ORACLE_USER_DATA,
        headers: &[("Authorization", "Bearer Oracle")],
    })?;
    match resp.status {
        200 => match s.base64_text(ORACLE_USER_DATA, &resp.body)? {
            Some(text) => Ok(s.found(ORACLE_USER_DATA, text)),
            None => Ok(s.none(ORACLE_USER_DATA)),
        },
        404 => Ok(s.none(ORACLE_USER_DATA)),
        st => Err(s.status(
            ORACLE_USER_DATA,
            st,
            "unexpected answer to the user_data request",
        )),
    }
}

struct Session<'a> {
    http: &'a mut dyn Http,
    provider: Provider,
    /// When failures of a reachable server stop being retried (on the http's clock).
    deadline: Duration,
    /// When "no route" failures stop being retried.
    net_deadline: Duration,
    /// Whether a "no route" failure was seen.
    saw_no_route: bool,
    /// When the metadata address became reachable after "no route" failures.
    reachable_at: Option<Duration>,
}

impl Session<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http.base_url())
    }

    fn err(&self, path: &str, kind: CloudErrorKind) -> CloudError {
        CloudError {
            provider: self.provider.name(),
            source: self.url(path),
            kind,
        }
    }

    fn status(&self, path: &str, status: u16, meaning: &'static str) -> CloudError {
        self.err(path, CloudErrorKind::Status { status, meaning })
    }

    fn none(&self, path: &str) -> CloudUserData {
        CloudUserData {
            provider: self.provider.name(),
            source: self.url(path),
            text: None,
        }
    }

    fn found(&self, path: &str, text: String) -> CloudUserData {
        CloudUserData {
            provider: self.provider.name(),
            source: self.url(path),
            text: Some(text),
        }
    }

    /// A plain-text user-data body; empty counts as none.
    fn text(&self, path: &str, body: Vec<u8>) -> Result<CloudUserData, CloudError> {
        let text = String::from_utf8(body).map_err(|_| {
            self.err(
                path,
                CloudErrorKind::Decode(
                    "the user-data is not UTF-8 text (kiln expects TOML)".into(),
                ),
            )
        })?;
        Ok(if text.trim().is_empty() {
            self.none(path)
        } else {
            self.found(path, text)
        })
    }

    /// A base64 user-data body, decoded; empty counts as none.
    fn base64_text(&self, path: &str, body: &[u8]) -> Result<Option<String>, CloudError> {
        let bytes = base64::decode_lenient(body).map_err(|e| {
            self.err(
                path,
                CloudErrorKind::Decode(format!("the user-data is not base64: {e}")),
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            self.err(
                path,
                CloudErrorKind::Decode(
                    "the decoded user-data is not UTF-8 text (kiln expects TOML)".into(),
                ),
            )
        })?;
        Ok((!text.trim().is_empty()).then_some(text))
    }

    /// Sends `req`, retrying transient failures with backoff until the deadline.
    fn send(&mut self, req: &Request<'_>) -> Result<Response, CloudError> {
        let started = self.http.elapsed();
        let mut attempts = 0u32;
        loop {
            let delay = BACKOFF.delay(attempts, 0);
            attempts += 1;
            let remaining = self.deadline.saturating_sub(self.http.elapsed());
            let timeout = remaining.clamp(MIN_TRY, PER_TRY);
            let (last, no_route) = match self.http.send(req, timeout) {
                Ok(r) if r.status == 429 || r.status >= 500 => {
                    (format!("HTTP {}", r.status), false)
                }
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => (e.to_string(), e.is_no_route()),
                Err(e) => return Err(self.err(req.path, CloudErrorKind::Http(e))),
            };
            let now = self.http.elapsed();
            self.saw_no_route |= no_route;
            if !no_route && self.saw_no_route && self.reachable_at.is_none() {
                self.reachable_at = Some(now);
            }
            let give_up_at = match (no_route, self.reachable_at) {
                (true, _) => self.net_deadline,
                (false, Some(t)) => self.deadline.max(t + GRACE_AFTER_NETWORK),
                (false, None) => self.deadline,
            };
            if now + delay > give_up_at {
                return Err(self.err(
                    req.path,
                    CloudErrorKind::GaveUp {
                        attempts,
                        waited: now.saturating_sub(started),
                        last,
                    },
                ));
            }
            self.http.sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests;
