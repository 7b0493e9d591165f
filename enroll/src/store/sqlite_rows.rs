//! Row access on SQLite: [`SqlTx`], the [`Tx`] of the SQLite backend, over a
//! connection with a transaction open.

use rusqlite::{params, Connection, OptionalExtension};

use super::codec::{
    self, RawCluster, RawNode, RawToken, CLUSTER_COLUMNS, NODE_COLUMNS, TOKEN_COLUMNS,
};
use super::ops::Tx;
use super::sqlite::backend;
use super::{CaPem, Cluster, NodeRecord, StoreError, TokenRecord};

/// A transaction on the SQLite file (the connection has one open).
pub(super) struct SqlTx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) db: &'a str,
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawToken> {
    Ok(RawToken {
        id: r.get(0)?,
        secret_hash: r.get(1)?,
        created: r.get(2)?,
        expires: r.get(3)?,
        uses_total: r.get(4)?,
        uses_left: r.get(5)?,
        role: r.get(6)?,
        labels: r.get(7)?,
        revoked: r.get(8)?,
    })
}

fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        name: r.get(0)?,
        public_key: r.get(1)?,
        credential_hash: r.get(2)?,
        token_id: r.get(3)?,
        address_v4: r.get(4)?,
        address_v6: r.get(5)?,
        arch: r.get(6)?,
        role: r.get(7)?,
        labels: r.get(8)?,
        enrolled: r.get(9)?,
        revoked: r.get(10)?,
        last_heartbeat: r.get(11)?,
        online: r.get(12)?,
        endpoints: r.get(13)?,
        public_endpoint: r.get(14)?,
        public_verified: r.get(15)?,
    })
}

impl SqlTx<'_> {
    fn err(&self, op: &str, e: &rusqlite::Error) -> StoreError {
        backend(self.db, op, e)
    }

    fn select_nodes(&self, filter: &str, arg: Option<&str>) -> Result<Vec<NodeRecord>, StoreError> {
        let op = "reading nodes";
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes {filter}");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(op, &e))?;
        let rows = match arg {
            Some(a) => stmt.query_map(params![a], node_row),
            None => stmt.query_map([], node_row),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_name(out))
    }

    fn select_tokens(
        &self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let op = "reading tokens";
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens {filter}");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(op, &e))?;
        let rows = match arg {
            Some(a) => stmt.query_map(params![a], token_row),
            None => stmt.query_map([], token_row),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_id(out))
    }
}

impl Tx for SqlTx<'_> {
    fn ca(&mut self) -> Result<Option<CaPem>, StoreError> {
        self.conn
            .query_row("SELECT cert_pem, key_pem FROM ca WHERE id = 1", [], |r| {
                Ok(CaPem {
                    cert_pem: r.get(0)?,
                    key_pem: r.get(1)?,
                })
            })
            .optional()
            .map_err(|e| self.err("reading the CA", &e))
    }

    fn insert_ca_if_absent(&mut self, ca: &CaPem) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO NOTHING",
                params![ca.cert_pem, ca.key_pem],
            )
            .map_err(|e| self.err("storing the CA", &e))?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .select_tokens("WHERE id = ?1", Some(id))?
            .into_iter()
            .next())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens("", None)
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        let r = RawToken::encode(t);
        self.conn
            .execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    r.id,
                    r.secret_hash,
                    r.created,
                    r.expires,
                    r.uses_total,
                    r.uses_left,
                    r.role,
                    r.labels,
                    r.revoked
                ],
            )
            .map_err(|e| self.err(&format!("inserting token {}", t.id), &e))?;
        Ok(())
    }

    fn update_token(
        &mut self,
        id: &str,
        revoked: bool,
        uses_left: u32,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE tokens SET revoked = ?2, uses_left = ?3 WHERE id = ?1",
                params![id, revoked, uses_left],
            )
            .map_err(|e| self.err(&format!("updating token {id}"), &e))?;
        Ok(n > 0)
    }

    fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        self.select_nodes("", None)
    }

    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .select_nodes("WHERE name = ?1", Some(name))?
            .into_iter()
            .next())
    }

    fn nodes_changed_since(&mut self, since: u64) -> Result<Vec<(NodeRecord, u64)>, StoreError> {
        let op = "reading changed nodes";
        let filter = if since == 0 { "" } else { "WHERE changed > ?1" };
        let sql = format!("SELECT {NODE_COLUMNS}, changed FROM nodes {filter}");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(op, &e))?;
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(RawNode, i64)> {
            Ok((node_row(r)?, r.get(16)?))
        };
        let rows = if since == 0 {
            stmt.query_map([], row)
        } else {
            stmt.query_map(params![codec::version_to_db(since)], row)
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for r in rows {
            let (raw, changed) = r.map_err(|e| self.err(op, &e))?;
            let changed = codec::changed_of(&raw.name, changed)?;
            out.push((raw.decode()?, changed));
        }
        Ok(out)
    }

    fn insert_node(&mut self, n: &NodeRecord, changed: u64) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.conn
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}, changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                     ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ),
                params![
                    r.name,
                    r.public_key,
                    r.credential_hash,
                    r.token_id,
                    r.address_v4,
                    r.address_v6,
                    r.arch,
                    r.role,
                    r.labels,
                    r.enrolled,
                    r.revoked,
                    r.last_heartbeat,
                    r.online,
                    r.endpoints,
                    r.public_endpoint,
                    r.public_verified,
                    codec::version_to_db(changed)
                ],
            )
            .map_err(|e| self.err(&format!("inserting node {}", n.name), &e))?;
        Ok(())
    }

    fn update_node(
        &mut self,
        n: &NodeRecord,
        changed: Option<u64>,
        heartbeat: bool,
    ) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        // NULL leaves the column as it is.
        let changed = changed.map(codec::version_to_db);
        let last = if heartbeat { r.last_heartbeat } else { None };
        self.conn
            .execute(
                "UPDATE nodes SET revoked = ?2, online = ?3, endpoints = ?4,
                 public_endpoint = ?5, public_verified = ?6,
                 changed = COALESCE(?7, changed),
                 last_heartbeat = CASE WHEN ?8 THEN ?9 ELSE last_heartbeat END
                 WHERE name = ?1",
                params![
                    r.name,
                    r.revoked,
                    r.online,
                    r.endpoints,
                    r.public_endpoint,
                    r.public_verified,
                    changed,
                    heartbeat,
                    last
                ],
            )
            .map_err(|e| self.err(&format!("updating node {}", n.name), &e))?;
        Ok(())
    }

    fn expire_silent(&mut self, cutoff: u64, changed: u64) -> Result<Vec<String>, StoreError> {
        let op = "marking silent nodes offline";
        let mut stmt = self
            .conn
            .prepare(
                "UPDATE nodes SET online = 0, changed = ?2 WHERE online AND NOT revoked
                 AND COALESCE(last_heartbeat, enrolled) < ?1 RETURNING name",
            )
            .map_err(|e| self.err(op, &e))?;
        let rows = stmt
            .query_map(
                params![codec::to_db(cutoff), codec::version_to_db(changed)],
                |r| r.get::<_, String>(0),
            )
            .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(|e| self.err(op, &e))?);
        }
        out.sort();
        Ok(out)
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        let text: String = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'peers_version'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err("reading peers_version", &e))?;
        codec::version_of(&text)
    }

    fn set_version(&mut self, v: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'peers_version'",
                params![v.to_string()],
            )
            .map_err(|e| self.err("writing peers_version", &e))?;
        Ok(())
    }

    fn cluster(&mut self) -> Result<Option<Cluster>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {CLUSTER_COLUMNS} FROM cluster WHERE id = 1"),
                [],
                |r| {
                    Ok(RawCluster {
                        kind: r.get(0)?,
                        server_url: r.get(1)?,
                        init_node: r.get(2)?,
                        token: r.get(3)?,
                        agent_token: r.get(4)?,
                        endpoint: r.get(5)?,
                        ca_cert_hashes: r.get(6)?,
                        certificate_key: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err("reading the cluster", &e))?;
        raw.map(RawCluster::decode).transpose()
    }

    fn put_cluster(&mut self, c: &Cluster) -> Result<(), StoreError> {
        let r = RawCluster::encode(c);
        self.conn
            .execute(
                &format!(
                    "INSERT INTO cluster (id, {CLUSTER_COLUMNS}) VALUES (1, ?1, ?2, ?3, ?4, ?5, \
                     ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, \
                     server_url = excluded.server_url, init_node = excluded.init_node, \
                     token = excluded.token, agent_token = excluded.agent_token, \
                     endpoint = excluded.endpoint, ca_cert_hashes = excluded.ca_cert_hashes, \
                     certificate_key = excluded.certificate_key"
                ),
                params![
                    r.kind,
                    r.server_url,
                    r.init_node,
                    r.token,
                    r.agent_token,
                    r.endpoint,
                    r.ca_cert_hashes,
                    r.certificate_key
                ],
            )
            .map_err(|e| self.err("storing the cluster", &e))?;
        Ok(())
    }

    fn delete_cluster(&mut self) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM cluster", [])
            .map_err(|e| self.err("removing the cluster", &e))?;
        Ok(n > 0)
    }
}
