//! Row access on PostgreSQL: [`PgTx`], the [`Tx`] of the PostgreSQL backend, over a
//! `Transaction` (reads) or the writer's client with a transaction open.

use postgres::GenericClient;

use super::codec::{
    self, RawCluster, RawNode, RawToken, CLUSTER_COLUMNS, NODE_COLUMNS, TOKEN_COLUMNS,
};
use super::ops::Tx;
use super::postgres::backend;
use super::{CaPem, Cluster, NodeRecord, StoreError, TokenRecord};

/// A transaction on the database: a `Transaction` (reads), or the writer's client with
/// a transaction open.
pub(super) struct PgTx<'a, C: GenericClient> {
    pub(super) tx: &'a mut C,
    pub(super) db: &'a str,
}

fn token_row(r: &postgres::Row) -> Result<RawToken, postgres::Error> {
    Ok(RawToken {
        id: r.try_get(0)?,
        secret_hash: r.try_get(1)?,
        created: r.try_get(2)?,
        expires: r.try_get(3)?,
        uses_total: r.try_get(4)?,
        uses_left: r.try_get(5)?,
        role: r.try_get(6)?,
        labels: r.try_get(7)?,
        revoked: r.try_get(8)?,
    })
}

fn node_row(r: &postgres::Row) -> Result<RawNode, postgres::Error> {
    Ok(RawNode {
        name: r.try_get(0)?,
        public_key: r.try_get(1)?,
        credential_hash: r.try_get(2)?,
        token_id: r.try_get(3)?,
        address_v4: r.try_get(4)?,
        address_v6: r.try_get(5)?,
        arch: r.try_get(6)?,
        role: r.try_get(7)?,
        labels: r.try_get(8)?,
        enrolled: r.try_get(9)?,
        revoked: r.try_get(10)?,
        last_heartbeat: r.try_get(11)?,
        online: r.try_get(12)?,
        endpoints: r.try_get(13)?,
        public_endpoint: r.try_get(14)?,
        public_verified: r.try_get(15)?,
    })
}

impl<C: GenericClient> PgTx<'_, C> {
    fn err(&self, op: &str, e: &postgres::Error) -> StoreError {
        backend(self.db, op, e)
    }

    fn select_nodes(
        &mut self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let op = "reading nodes";
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes {filter}");
        let rows = match arg {
            Some(a) => self.tx.query(&sql, &[&a]),
            None => self.tx.query(&sql, &[]),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(node_row(row).map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_name(out))
    }

    fn select_tokens(
        &mut self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let op = "reading tokens";
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens {filter}");
        let rows = match arg {
            Some(a) => self.tx.query(&sql, &[&a]),
            None => self.tx.query(&sql, &[]),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(token_row(row).map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_id(out))
    }
}

impl<C: GenericClient> Tx for PgTx<'_, C> {
    fn ca(&mut self) -> Result<Option<CaPem>, StoreError> {
        let op = "reading the CA";
        let row = self
            .tx
            .query_opt("SELECT cert_pem, key_pem FROM ca WHERE id = 1", &[])
            .map_err(|e| self.err(op, &e))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(CaPem {
                cert_pem: r.try_get(0).map_err(|e| self.err(op, &e))?,
                key_pem: r.try_get(1).map_err(|e| self.err(op, &e))?,
            })),
        }
    }

    fn insert_ca_if_absent(&mut self, ca: &CaPem) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO NOTHING",
                &[&ca.cert_pem, &ca.key_pem],
            )
            .map_err(|e| self.err("storing the CA", &e))?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .select_tokens("WHERE id = $1", Some(id))?
            .into_iter()
            .next())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens("", None)
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        let r = RawToken::encode(t);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &r.id,
                    &r.secret_hash,
                    &r.created,
                    &r.expires,
                    &r.uses_total,
                    &r.uses_left,
                    &r.role,
                    &r.labels,
                    &r.revoked,
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
            .tx
            .execute(
                "UPDATE tokens SET revoked = $2, uses_left = $3 WHERE id = $1",
                &[&id, &revoked, &i64::from(uses_left)],
            )
            .map_err(|e| self.err(&format!("updating token {id}"), &e))?;
        Ok(n > 0)
    }

    fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        self.select_nodes("", None)
    }

    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .select_nodes("WHERE name = $1", Some(name))?
            .into_iter()
            .next())
    }

    fn nodes_changed_since(&mut self, since: u64) -> Result<Vec<(NodeRecord, u64)>, StoreError> {
        let op = "reading changed nodes";
        let sql = format!("SELECT {NODE_COLUMNS}, changed FROM nodes WHERE changed > $1");
        // 0 asks for every row, also one a migration left at 0.
        let from = if since == 0 {
            -1
        } else {
            codec::version_to_db(since)
        };
        let rows = self
            .tx
            .query(&sql, &[&from])
            .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw = node_row(row).map_err(|e| self.err(op, &e))?;
            let changed: i64 = row.try_get(16).map_err(|e| self.err(op, &e))?;
            let changed = codec::changed_of(&raw.name, changed)?;
            out.push((raw.decode()?, changed));
        }
        Ok(out)
    }

    fn insert_node(&mut self, n: &NodeRecord, changed: u64) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}, changed) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                ),
                &[
                    &r.name,
                    &r.public_key,
                    &r.credential_hash,
                    &r.token_id,
                    &r.address_v4,
                    &r.address_v6,
                    &r.arch,
                    &r.role,
                    &r.labels,
                    &r.enrolled,
                    &r.revoked,
                    &r.last_heartbeat,
                    &r.online,
                    &r.endpoints,
                    &r.public_endpoint,
                    &r.public_verified,
                    &codec::version_to_db(changed),
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
        self.tx
            .execute(
                "UPDATE nodes SET revoked = $2, online = $3, endpoints = $4,
                 public_endpoint = $5, public_verified = $6,
                 changed = COALESCE($7, changed),
                 last_heartbeat = CASE WHEN $8 THEN $9 ELSE last_heartbeat END
                 WHERE name = $1",
                &[
                    &r.name,
                    &r.revoked,
                    &r.online,
                    &r.endpoints,
                    &r.public_endpoint,
                    &r.public_verified,
                    &changed,
                    &heartbeat,
                    &last,
                ],
            )
            .map_err(|e| self.err(&format!("updating node {}", n.name), &e))?;
        Ok(())
    }

    fn expire_silent(&mut self, cutoff: u64, changed: u64) -> Result<Vec<String>, StoreError> {
        let op = "marking silent nodes offline";
        let rows = self
            .tx
            .query(
                "UPDATE nodes SET online = false, changed = $2 WHERE online AND NOT revoked
                 AND COALESCE(last_heartbeat, enrolled) < $1 RETURNING name",
                &[&codec::to_db(cutoff), &codec::version_to_db(changed)],
            )
            .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(row.try_get::<_, String>(0).map_err(|e| self.err(op, &e))?);
        }
        out.sort();
        Ok(out)
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        let op = "reading peers_version";
        let row = self
            .tx
            .query_one("SELECT value FROM meta WHERE key = 'peers_version'", &[])
            .map_err(|e| self.err(op, &e))?;
        let text: String = row.try_get(0).map_err(|e| self.err(op, &e))?;
        codec::version_of(&text)
    }

    fn set_version(&mut self, v: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE meta SET value = $1 WHERE key = 'peers_version'",
                &[&v.to_string()],
            )
            .map_err(|e| self.err("writing peers_version", &e))?;
        Ok(())
    }

    fn cluster(&mut self) -> Result<Option<Cluster>, StoreError> {
        let op = "reading the cluster";
        let row = self
            .tx
            .query_opt(
                &format!("SELECT {CLUSTER_COLUMNS} FROM cluster WHERE id = 1"),
                &[],
            )
            .map_err(|e| self.err(op, &e))?;
        let Some(r) = row else {
            return Ok(None);
        };
        let raw = (|| -> Result<RawCluster, postgres::Error> {
            Ok(RawCluster {
                kind: r.try_get(0)?,
                server_url: r.try_get(1)?,
                init_node: r.try_get(2)?,
                token: r.try_get(3)?,
                agent_token: r.try_get(4)?,
                endpoint: r.try_get(5)?,
                ca_cert_hashes: r.try_get(6)?,
                certificate_key: r.try_get(7)?,
            })
        })()
        .map_err(|e| self.err(op, &e))?;
        raw.decode().map(Some)
    }

    fn put_cluster(&mut self, c: &Cluster) -> Result<(), StoreError> {
        let r = RawCluster::encode(c);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO cluster (id, {CLUSTER_COLUMNS}) VALUES (1, $1, $2, $3, $4, $5, \
                     $6, $7, $8) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, \
                     server_url = excluded.server_url, init_node = excluded.init_node, \
                     token = excluded.token, agent_token = excluded.agent_token, \
                     endpoint = excluded.endpoint, ca_cert_hashes = excluded.ca_cert_hashes, \
                     certificate_key = excluded.certificate_key"
                ),
                &[
                    &r.kind,
                    &r.server_url,
                    &r.init_node,
                    &r.token,
                    &r.agent_token,
                    &r.endpoint,
                    &r.ca_cert_hashes,
                    &r.certificate_key,
                ],
            )
            .map_err(|e| self.err("storing the cluster", &e))?;
        Ok(())
    }

    fn delete_cluster(&mut self) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM cluster", &[])
            .map_err(|e| self.err("removing the cluster", &e))?;
        Ok(n > 0)
    }
}
