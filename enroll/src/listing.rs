//! What `token list` and `node list` show: one row type per listing, printed as an
//! aligned table for people or as JSON for scripts and tests (secrets and their hashes
//! never appear).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kiln_contract::civil::DateTime;
use serde::Serialize;

use crate::store::{NodeRecord, TokenRecord};

/// One token in `token list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Token id.
    pub id: String,
    /// `worker` or `server`.
    pub role: String,
    /// Labels given to nodes.
    pub labels: BTreeMap<String, String>,
    /// Uses when created.
    pub uses_total: u32,
    /// Uses left.
    pub uses_left: u32,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: u64,
    /// Revoked by `token revoke`.
    pub revoked: bool,
    /// `active`, `expired`, `used-up` or `revoked`.
    pub state: String,
}

/// One node in `node list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Overlay IPv4 address.
    pub address_v4: String,
    /// Overlay IPv6 address.
    pub address_v6: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// `worker` or `server`.
    pub role: String,
    /// Labels from the token.
    pub labels: BTreeMap<String, String>,
    /// The token it enrolled with.
    pub token_id: String,
    /// Unix seconds.
    pub enrolled: u64,
    /// Unix seconds of the last heartbeat.
    pub last_heartbeat: Option<u64>,
    /// Heartbeats arrive.
    pub online: bool,
    /// Revoked by `node revoke`.
    pub revoked: bool,
    /// Interface endpoints it reported.
    pub endpoints: Vec<SocketAddr>,
    /// Public endpoint it claims.
    pub public_endpoint: Option<String>,
    /// A peer reached it at its public endpoint.
    pub public: bool,
    /// `online`, `offline` or `revoked`.
    pub state: String,
}

/// Rows for tokens, as of `now`.
pub fn token_rows(tokens: &[TokenRecord], now: u64) -> Vec<TokenRow> {
    tokens
        .iter()
        .map(|t| TokenRow {
            id: t.id.clone(),
            role: t.role.as_str().to_string(),
            labels: t.labels.clone(),
            uses_total: t.uses_total,
            uses_left: t.uses_left,
            created: t.created,
            expires: t.expires,
            revoked: t.revoked,
            state: if t.revoked {
                "revoked"
            } else if now >= t.expires {
                "expired"
            } else if t.uses_left == 0 {
                "used-up"
            } else {
                "active"
            }
            .to_string(),
        })
        .collect()
}

/// Rows for nodes.
pub fn node_rows(nodes: &[NodeRecord]) -> Vec<NodeRow> {
    nodes
        .iter()
        .map(|n| NodeRow {
            name: n.name.clone(),
            public_key: n.public_key.to_string(),
            address_v4: n.address_v4.to_string(),
            address_v6: n.address_v6.to_string(),
            arch: n.arch.clone(),
            role: n.role.as_str().to_string(),
            labels: n.labels.clone(),
            token_id: n.token_id.clone(),
            enrolled: n.enrolled,
            last_heartbeat: n.last_heartbeat,
            online: n.online && !n.revoked,
            revoked: n.revoked,
            endpoints: n.endpoints.clone(),
            public_endpoint: n.public_endpoint.clone(),
            public: n.public_verified,
            state: if n.revoked {
                "revoked"
            } else if n.online {
                "online"
            } else {
                "offline"
            }
            .to_string(),
        })
        .collect()
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Columns padded to the widest cell; the last column is not padded.
fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The token table.
pub fn token_table(rows: &[TokenRow]) -> String {
    let mut t = vec![["ID", "ROLE", "USES", "EXPIRES (UTC)", "STATE", "LABELS"]
        .map(String::from)
        .to_vec()];
    for r in rows {
        t.push(vec![
            r.id.clone(),
            r.role.clone(),
            format!("{}/{}", r.uses_left, r.uses_total),
            utc(r.expires),
            r.state.clone(),
            labels_text(&r.labels),
        ]);
    }
    table(t)
}

/// The node table.
pub fn node_table(rows: &[NodeRow]) -> String {
    let mut t = vec![[
        "NAME",
        "ADDRESS",
        "ADDRESS6",
        "ARCH",
        "ROLE",
        "STATE",
        "PUBLIC",
        "LAST HEARTBEAT (UTC)",
        "ENDPOINTS",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let mut eps: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
        if let Some(p) = &r.public_endpoint {
            eps.insert(0, format!("public:{p}"));
        }
        t.push(vec![
            r.name.clone(),
            r.address_v4.clone(),
            r.address_v6.clone(),
            r.arch.clone(),
            r.role.clone(),
            r.state.clone(),
            if r.public { "yes" } else { "no" }.to_string(),
            r.last_heartbeat.map_or("-".to_string(), utc),
            if eps.is_empty() {
                "-".to_string()
            } else {
                eps.join(",")
            },
        ]);
    }
    table(t)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: u64) -> String {
    let t = DateTime::from_unix_u64(secs);
    format!("{} {}", t.date_string(), t.time_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_matches_date() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            1_750_000_000,
            4_102_444_800,
        ] {
            let out = std::process::Command::new("date")
                .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M:%S"])
                .output()
                .unwrap();
            let want = String::from_utf8(out.stdout).unwrap();
            assert_eq!(utc(secs), want.trim(), "{secs}");
        }
    }

    #[test]
    fn tables_align() {
        let t = table(vec![
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "y z".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong  x   y z\n");
    }
}
