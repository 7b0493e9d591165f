//! The node config schema, the same TOML for every channel:
//!
//! ```toml
//! schema = 1          # optional; any other value is an error
//! hostname = "node-1" # RFC 1123 label(s): <= 63 characters each, <= 253 in all
//! ssh_authorized_keys = ["ssh-ed25519 AAAA... you@laptop"]  # root's keys (images with SSH)
//!
//! [enroll]            # joining the WireGuard overlay (kiln-overlay.service)
//! server = "https://enroll.example.org:8443"
//! token = "KLN1<64 hex>::<id>.<secret>"
//! endpoint = "203.0.113.7:51820"   # optional: where the outside reaches this node
//! listen_port = 51820              # optional
//! mtu = 1380                       # optional override of the overlay MTU
//!
//! [update]            # following an update channel (kiln-update-check.timer)
//! channel = "https://updates.example/homelab-x86_64.channel.json"
//! check_every = "6h"               # optional: 10min to 7d, default 6h
//! window = "Sat 02:00-04:00"       # optional, UTC; without it: apply at once
//! auto_reboot = true               # optional, default true
//! ```
//!
//! The token's secret never appears in a message or summary: they show
//! `KLN1…::<id>.<secret>`.
//!
//! Text is checked in two steps: the keys and value types of the parsed table first, so a
//! user gets every problem of a file at once in words that name the key and the value,
//! then the serde DTO (`deny_unknown_fields`) as the final gate, and last the values
//! themselves (the hostname's syntax) into the domain [`NodeConfig`].

use std::fmt;

use kiln_contract::channel::{format_duration, parse_duration};
use kiln_enroll_proto::token::Token;
use kiln_enroll_proto::validate::parse_host_port;
use serde::Deserialize;

use super::ssh_key::{self, AuthorizedKey};
use crate::update::check::window::Window;

/// The only schema version this agent understands.
pub const SCHEMA_VERSION: i64 = 1;

/// First line that marks a user-data document as kiln's (stripped before parsing).
pub const MAGIC_LINE: &str = "#kiln-config";

/// Largest config document accepted from any channel.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Every key of the schema, in the order they are documented and written.
pub const KNOWN_KEYS: &[&str] = &[
    "schema",
    "hostname",
    "ssh_authorized_keys",
    "enroll",
    "update",
];

/// Every key of the `[enroll]` table.
pub const ENROLL_KEYS: &[&str] = &["server", "token", "endpoint", "listen_port", "mtu"];

/// Every key of the `[update]` table.
pub const UPDATE_KEYS: &[&str] = &["channel", "check_every", "window", "auto_reboot"];

/// Shortest and longest `[update] check_every`, in seconds.
pub const CHECK_EVERY_RANGE: (u64, u64) = (600, 7 * 86_400);

/// `[update] check_every` when the config sets none.
pub const DEFAULT_CHECK_EVERY: u64 = 6 * 3600;

/// The port of a server URL that names none.
pub const DEFAULT_SERVER_PORT: u16 = 8443;

/// Smallest and largest overlay MTU a user may set (IPv6 needs 1280).
pub const MTU_RANGE: (i64, i64) = (1280, 9000);

/// The wire form of a config document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigDto {
    /// Schema version; only [`SCHEMA_VERSION`] is accepted.
    pub schema: Option<i64>,
    /// The node's hostname.
    pub hostname: Option<String>,
    /// OpenSSH public key lines.
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// The `[enroll]` table.
    pub enroll: Option<EnrollDto>,
    /// The `[update]` table.
    pub update: Option<UpdateDto>,
}

/// The wire form of the `[update]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDto {
    /// The channel document's http(s) URL.
    pub channel: Option<String>,
    /// How often to check (`6h`).
    pub check_every: Option<String>,
    /// The maintenance window (`Sat 02:00-04:00`).
    pub window: Option<String>,
    /// Whether to reboot into an applied update.
    pub auto_reboot: Option<bool>,
}

/// The validated `[update]` table; `None` fields were not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateConfig {
    /// The channel document's URL (http or https).
    pub channel: Option<String>,
    /// Seconds between checks.
    pub check_every: Option<u64>,
    /// The maintenance window.
    pub window: Option<Window>,
    /// Whether to reboot into an applied update.
    pub auto_reboot: Option<bool>,
}

impl UpdateConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self == &UpdateConfig::default()
    }

    /// `check_every`, or its default.
    pub fn check_every_secs(&self) -> u64 {
        self.check_every.unwrap_or(DEFAULT_CHECK_EVERY)
    }

    /// `auto_reboot`, or its default (true).
    pub fn reboots(&self) -> bool {
        self.auto_reboot.unwrap_or(true)
    }

    /// `update.KEY=VALUE` words for the console.
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(c) = &self.channel {
            w.push(format!("update.channel={c}"));
        }
        if let Some(s) = self.check_every {
            w.push(format!("update.check_every={}", format_duration(s)));
        }
        if let Some(win) = &self.window {
            w.push(format!("update.window=\"{win}\""));
        }
        if let Some(r) = self.auto_reboot {
            w.push(format!("update.auto_reboot={r}"));
        }
        w
    }
}

/// Checks a channel URL: `http://` or `https://`, then the downloader's own parse.
pub fn check_channel_url(text: &str) -> Result<(), String> {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(
            "must be the http:// or https:// URL of the channel document \
                    (<name>-<arch>.channel.json, from `kiln channel sign`)"
                .to_string(),
        );
    }
    crate::update::fetch::Url::parse(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks a `check_every` duration; seconds.
pub fn parse_check_every(text: &str) -> Result<u64, String> {
    let (lo, hi) = CHECK_EVERY_RANGE;
    match parse_duration(text) {
        Some(s) if (lo..=hi).contains(&s) => Ok(s),
        Some(_) => Err(format!(
            "must be from {} to {}",
            format_duration(lo),
            format_duration(hi)
        )),
        None => Err("is not a duration: a number and s, min, h or d, e.g. \"6h\"".to_string()),
    }
}

/// The wire form of the `[enroll]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollDto {
    /// kiln-enroll's https URL.
    pub server: Option<String>,
    /// The join token.
    pub token: Option<String>,
    /// The public `host:port` this node claims.
    pub endpoint: Option<String>,
    /// The WireGuard listen port.
    pub listen_port: Option<i64>,
    /// Overlay MTU override.
    pub mtu: Option<i64>,
}

/// A checked kiln-enroll URL: `https://HOST[:PORT]` (no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or address (without brackets for IPv6).
    pub host: String,
    /// TCP port ([`DEFAULT_SERVER_PORT`] when the URL names none).
    pub port: u16,
}

impl ServerUrl {
    /// Checks `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let rest = text.strip_prefix("https://").ok_or_else(|| {
            "must start with https:// (kiln-enroll speaks HTTPS only), e.g. \
             https://enroll.example.org:8443"
                .to_string()
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(format!(
                "{c:?} is not allowed: write https://HOST or https://HOST:PORT, without a \
                 path, query or user"
            ));
        }
        let has_port = if rest.starts_with('[') {
            rest.contains("]:")
        } else {
            rest.contains(':')
        };
        let with_port = if has_port {
            rest.to_string()
        } else {
            format!("{rest}:{DEFAULT_SERVER_PORT}")
        };
        let (host, port) = parse_host_port(&with_port)?;
        if !rest.starts_with('[') && host.contains(':') {
            return Err("an IPv6 address is written in brackets: https://[ADDRESS]:PORT".into());
        }
        Ok(ServerUrl { host, port })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// How a token is shown anywhere a person may read it: the id, never the secret.
pub fn redacted_token(t: &Token) -> String {
    format!("{}…::{}.<secret>", kiln_enroll_proto::token::PREFIX, t.id)
}

/// How text that should have been a token is shown: whatever it holds stays hidden,
/// since a malformed token may still carry a real secret.
fn redacted_token_text(text: &str) -> String {
    format!("\"<{} characters, hidden>\"", text.chars().count())
}

/// The validated `[enroll]` table; `None` fields were not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollConfig {
    /// kiln-enroll's URL.
    pub server: Option<ServerUrl>,
    /// The join token (carries the CA pin).
    pub token: Option<Token>,
    /// The public `host:port` this node claims (checked syntax, not resolved).
    pub endpoint: Option<String>,
    /// The WireGuard listen port.
    pub listen_port: Option<u16>,
    /// Overlay MTU override.
    pub mtu: Option<u16>,
}

impl EnrollConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self == &EnrollConfig::default()
    }

    /// `enroll.KEY=VALUE` words for the console, the token redacted.
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(s) = &self.server {
            w.push(format!("enroll.server={s}"));
        }
        if let Some(t) = &self.token {
            w.push(format!("enroll.token={}", redacted_token(t)));
        }
        if let Some(e) = &self.endpoint {
            w.push(format!("enroll.endpoint={e}"));
        }
        if let Some(p) = self.listen_port {
            w.push(format!("enroll.listen_port={p}"));
        }
        if let Some(m) = self.mtu {
            w.push(format!("enroll.mtu={m}"));
        }
        w
    }
}

/// A validated hostname: RFC 1123 labels, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Checks `text` and lowercases it (hostnames are case-insensitive, and Kubernetes
    /// node names must be lowercase).
    pub fn parse(text: &str) -> Result<Self, String> {
        use kiln_contract::names::{check_hostname, HostnameProblem, MAX_LABEL_LEN};
        // The rule is the contract's; the words are the config's, which tell a user
        // editing a file what to change.
        if text.is_empty() {
            return Err("a hostname cannot be empty".to_string());
        }
        check_hostname(text).map_err(|problem| match problem {
            HostnameProblem::TooLong { len } => {
                format!("{len} characters is longer than the 253 a hostname may have")
            }
            HostnameProblem::EmptyLabel => "empty label (a leading, trailing or doubled '.'); \
                                            labels are separated by single dots"
                .to_string(),
            HostnameProblem::LabelTooLong { label } => format!(
                "label {label:?} has {} characters, more than the {MAX_LABEL_LEN} allowed",
                label.len()
            ),
            HostnameProblem::BadCharacter { character, .. } => {
                format!("{character:?} is not allowed (only letters a-z, digits 0-9 and '-')")
            }
            HostnameProblem::EdgeHyphen { label } => {
                format!("label {label:?} starts or ends with '-'")
            }
        })?;
        Ok(Hostname(text.to_ascii_lowercase()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One channel's validated configuration; `None` fields were not set by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// `schema`, when given (always [`SCHEMA_VERSION`]).
    pub schema: Option<i64>,
    /// `hostname`.
    pub hostname: Option<Hostname>,
    /// `ssh_authorized_keys` (an empty list is a setting: no key).
    pub ssh_authorized_keys: Option<Vec<AuthorizedKey>>,
    /// `[enroll]`.
    pub enroll: EnrollConfig,
    /// `[update]`.
    pub update: UpdateConfig,
}

impl NodeConfig {
    /// The `key=value` words for the console line (`hostname=node-1`); the schema
    /// version says nothing to a reader and is left out.
    pub fn summary(&self) -> String {
        let mut words: Vec<String> = self
            .hostname
            .iter()
            .map(|h| format!("hostname={h}"))
            .collect();
        if let Some(keys) = &self.ssh_authorized_keys {
            words.push(format!("ssh_authorized_keys={}", keys.len()));
        }
        words.extend(self.enroll.words());
        words.extend(self.update.words());
        if words.is_empty() {
            "no settings".to_string()
        } else {
            words.join(" ")
        }
    }
}

/// One problem with a config document. The channel and place are added by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// The bytes are not UTF-8.
    NotUtf8 {
        /// Offset of the first bad byte.
        offset: usize,
        /// The bad byte.
        byte: u8,
    },
    /// More than [`MAX_CONFIG_BYTES`].
    TooLarge {
        /// The size seen.
        bytes: usize,
    },
    /// Not TOML.
    Syntax {
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A key the schema does not have.
    UnknownKey {
        /// The key (dotted for tables).
        key: String,
    },
    /// A value of the wrong TOML type.
    WrongType {
        /// The key.
        key: String,
        /// What the schema wants (`a string`).
        expected: &'static str,
        /// The value's TOML type.
        got_type: &'static str,
        /// The value as TOML.
        got: String,
    },
    /// A value of the right type that is not allowed.
    BadValue {
        /// The key.
        key: String,
        /// The value as TOML.
        value: String,
        /// Why it is refused.
        why: String,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::NotUtf8 { offset, byte } => write!(
                f,
                "not UTF-8 text (byte {byte:#04x} at offset {offset}); the config must be \
                 a UTF-8 TOML document"
            ),
            SchemaError::TooLarge { bytes } => write!(
                f,
                "{bytes} bytes is more than the {MAX_CONFIG_BYTES} a config may have"
            ),
            SchemaError::Syntax {
                line,
                column,
                message,
            } => {
                write!(f, "not valid TOML")?;
                if let (Some(l), Some(c)) = (line, column) {
                    write!(f, " at line {l}, column {c}")?;
                }
                write!(f, ": {message}")
            }
            SchemaError::UnknownKey { key } => {
                if key.starts_with("enroll.") {
                    write!(
                        f,
                        "unknown key {key:?} (known in [enroll]: {})",
                        ENROLL_KEYS.join(", ")
                    )
                } else if key.starts_with("update.") {
                    write!(
                        f,
                        "unknown key {key:?} (known in [update]: {})",
                        UPDATE_KEYS.join(", ")
                    )
                } else {
                    write!(f, "unknown key {key:?} (known: {})", KNOWN_KEYS.join(", "))
                }
            }
            SchemaError::WrongType {
                key,
                expected,
                got_type,
                got,
            } => write!(f, "{key}: expected {expected}, got {got_type} {got}"),
            SchemaError::BadValue { key, value, why } => write!(f, "{key}: {value}: {why}"),
        }
    }
}

/// Turns a channel's bytes into text: UTF-8, size-capped, without a `#kiln-config`
/// first line.
pub fn config_text(bytes: &[u8]) -> Result<&str, SchemaError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(SchemaError::TooLarge { bytes: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| SchemaError::NotUtf8 {
        offset: e.valid_up_to(),
        byte: bytes[e.valid_up_to()],
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(strip_magic(text).unwrap_or(text))
}

/// The document after a `#kiln-config` first line, or None when it does not start with
/// one.
pub fn strip_magic(text: &str) -> Option<&str> {
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    (first.trim_end() == MAGIC_LINE).then_some(rest)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses a config document's text.
pub fn parse_text(text: &str) -> Result<NodeConfig, Vec<SchemaError>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let pos = e.span().map(|s| line_col(text, s.start));
        vec![SchemaError::Syntax {
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: e.message().trim().to_string(),
        }]
    })?;
    from_table(table)
}

/// Parses a config document's bytes (see [`config_text`]).
pub fn parse_bytes(bytes: &[u8]) -> Result<NodeConfig, Vec<SchemaError>> {
    parse_text(config_text(bytes).map_err(|e| vec![e])?)
}

fn wrong_type(key: &str, expected: &'static str, v: &toml::Value) -> SchemaError {
    SchemaError::WrongType {
        key: key.to_string(),
        expected,
        got_type: v.type_str(),
        got: v.to_string(),
    }
}

/// Checks a parsed table against the schema and validates it.
pub fn from_table(table: toml::Table) -> Result<NodeConfig, Vec<SchemaError>> {
    let mut errors = Vec::new();
    for (key, value) in &table {
        match key.as_str() {
            "schema" => match value {
                toml::Value::Integer(SCHEMA_VERSION) => {}
                toml::Value::Integer(_) => errors.push(SchemaError::BadValue {
                    key: key.clone(),
                    value: value.to_string(),
                    why: format!(
                        "this agent understands schema {SCHEMA_VERSION} only (leave the \
                         key out or set it to {SCHEMA_VERSION})"
                    ),
                }),
                v => errors.push(wrong_type(key, "an integer", v)),
            },
            "hostname" => match value {
                toml::Value::String(s) => {
                    if let Err(why) = Hostname::parse(s) {
                        errors.push(SchemaError::BadValue {
                            key: key.clone(),
                            value: value.to_string(),
                            why,
                        });
                    }
                }
                v => errors.push(wrong_type(key, "a string", v)),
            },
            "ssh_authorized_keys" => {
                if let Err(e) = ssh_key::check_list(value) {
                    errors.extend(e);
                }
            }
            "enroll" => match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        check_enroll(k, v, &mut errors);
                    }
                }
                v => errors.push(wrong_type(key, "a table ([enroll])", v)),
            },
            "update" => match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        check_update(k, v, &mut errors);
                    }
                }
                v => errors.push(wrong_type(key, "a table ([update])", v)),
            },
            _ => errors.push(SchemaError::UnknownKey { key: key.clone() }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let dto = NodeConfigDto::deserialize(toml::Value::Table(table)).map_err(|e| {
        vec![SchemaError::Syntax {
            line: None,
            column: None,
            message: e.to_string().trim().to_string(),
        }]
    })?;
    validate(dto).map_err(|e| vec![e])
}

fn check_enroll(key: &str, value: &toml::Value, errors: &mut Vec<SchemaError>) {
    let full = format!("enroll.{key}");
    let bad = |why: String, shown: String| SchemaError::BadValue {
        key: full.clone(),
        value: shown,
        why,
    };
    match (key, value) {
        ("server" | "endpoint", toml::Value::String(s)) => {
            let checked = if key == "server" {
                ServerUrl::parse(s).map(|_| ())
            } else {
                parse_host_port(s).map(|_| ())
            };
            if let Err(why) = checked {
                errors.push(bad(why, value.to_string()));
            }
        }
        ("token", toml::Value::String(s)) => {
            if let Err(e) = Token::parse(s) {
                errors.push(bad(e.to_string(), redacted_token_text(s)));
            }
        }
        ("listen_port" | "mtu", toml::Value::Integer(n)) => {
            if let Err(why) = check_int(key, *n) {
                errors.push(bad(why, n.to_string()));
            }
        }
        ("server" | "endpoint", v) => errors.push(wrong_type(&full, "a string", v)),
        ("token", v) => errors.push(SchemaError::WrongType {
            key: full.clone(),
            expected: "a string",
            got_type: v.type_str(),
            // Whatever it holds may be a secret.
            got: "(hidden)".to_string(),
        }),
        ("listen_port" | "mtu", v) => errors.push(wrong_type(&full, "an integer", v)),
        _ => errors.push(SchemaError::UnknownKey { key: full.clone() }),
    }
}

fn check_update(key: &str, value: &toml::Value, errors: &mut Vec<SchemaError>) {
    let full = format!("update.{key}");
    let checked = match (key, value) {
        ("channel", toml::Value::String(s)) => check_channel_url(s),
        ("check_every", toml::Value::String(s)) => parse_check_every(s).map(|_| ()),
        ("window", toml::Value::String(s)) => Window::parse(s).map(|_| ()),
        ("auto_reboot", toml::Value::Boolean(_)) => Ok(()),
        ("channel" | "check_every" | "window", v) => {
            return errors.push(wrong_type(&full, "a string", v));
        }
        ("auto_reboot", v) => return errors.push(wrong_type(&full, "a boolean", v)),
        _ => return errors.push(SchemaError::UnknownKey { key: full }),
    };
    if let Err(why) = checked {
        errors.push(SchemaError::BadValue {
            key: full,
            value: value.to_string(),
            why,
        });
    }
}

fn validate_update(dto: UpdateDto) -> Result<UpdateConfig, SchemaError> {
    let bad = |key: &str, value: &str, why: String| SchemaError::BadValue {
        key: format!("update.{key}"),
        value: toml::Value::String(value.to_string()).to_string(),
        why,
    };
    if let Some(c) = &dto.channel {
        check_channel_url(c).map_err(|why| bad("channel", c, why))?;
    }
    let check_every = match &dto.check_every {
        Some(s) => Some(parse_check_every(s).map_err(|why| bad("check_every", s, why))?),
        None => None,
    };
    let window = match &dto.window {
        Some(s) => Some(Window::parse(s).map_err(|why| bad("window", s, why))?),
        None => None,
    };
    Ok(UpdateConfig {
        channel: dto.channel,
        check_every,
        window,
        auto_reboot: dto.auto_reboot,
    })
}

fn check_int(key: &str, n: i64) -> Result<u16, String> {
    let (lo, hi, what) = if key == "mtu" {
        (MTU_RANGE.0, MTU_RANGE.1, "an MTU")
    } else {
        (1, 65535, "a UDP port")
    };
    if n < lo || n > hi {
        return Err(format!("{what} must be {lo}-{hi}"));
    }
    u16::try_from(n).map_err(|_| format!("{what} must be {lo}-{hi}"))
}

fn validate_enroll(dto: EnrollDto) -> Result<EnrollConfig, SchemaError> {
    let bad = |key: &str, value: String, why: String| SchemaError::BadValue {
        key: format!("enroll.{key}"),
        value,
        why,
    };
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let server = match dto.server {
        Some(s) => Some(ServerUrl::parse(&s).map_err(|why| bad("server", quoted(&s), why))?),
        None => None,
    };
    let token = match dto.token {
        Some(s) => Some(
            Token::parse(&s).map_err(|e| bad("token", redacted_token_text(&s), e.to_string()))?,
        ),
        None => None,
    };
    let endpoint = match dto.endpoint {
        Some(s) => {
            parse_host_port(&s).map_err(|why| bad("endpoint", quoted(&s), why))?;
            Some(s)
        }
        None => None,
    };
    let int = |key: &str, v: Option<i64>| -> Result<Option<u16>, SchemaError> {
        v.map(|n| check_int(key, n).map_err(|why| bad(key, n.to_string(), why)))
            .transpose()
    };
    Ok(EnrollConfig {
        server,
        token,
        endpoint,
        listen_port: int("listen_port", dto.listen_port)?,
        mtu: int("mtu", dto.mtu)?,
    })
}

/// Turns the DTO into the domain config.
pub fn validate(dto: NodeConfigDto) -> Result<NodeConfig, SchemaError> {
    if let Some(v) = dto.schema.filter(|v| *v != SCHEMA_VERSION) {
        return Err(SchemaError::BadValue {
            key: "schema".to_string(),
            value: v.to_string(),
            why: format!("this agent understands schema {SCHEMA_VERSION} only"),
        });
    }
    let hostname = match dto.hostname {
        Some(h) => Some(Hostname::parse(&h).map_err(|why| SchemaError::BadValue {
            key: "hostname".to_string(),
            value: toml::Value::String(h.clone()).to_string(),
            why,
        })?),
        None => None,
    };
    let enroll = match dto.enroll {
        Some(e) => validate_enroll(e)?,
        None => EnrollConfig::default(),
    };
    let update = match dto.update {
        Some(u) => validate_update(u)?,
        None => UpdateConfig::default(),
    };
    let ssh_authorized_keys = dto
        .ssh_authorized_keys
        .map(|lines| ssh_key::validate_list(&lines))
        .transpose()?;
    Ok(NodeConfig {
        schema: dto.schema,
        hostname,
        ssh_authorized_keys,
        enroll,
        update,
    })
}
