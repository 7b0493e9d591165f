//! `POST /v1/enroll`: checks the request's form, then lets the store decide in one
//! transaction, and answers with the node's addresses, the overlay settings, the peer
//! list and the cluster join parameters.
//!
//! From a source that the failure limit blocks, the token is first checked alone (one
//! indexed read, no write lock): a token that checks out goes on as from anywhere else, a
//! wrong one gets 429 without reaching the enrollment transaction.

use kiln_contract::names;
use kiln_enroll_proto::api::{
    ClusterJoin, EnrollAnswerV2, EnrollRequest, ErrorCode, Network, NodeInfo, CREDENTIAL_LEN,
    REVISION_DELTAS,
};
use kiln_enroll_proto::net::IpNet;
use kiln_enroll_proto::token::{digest_eq, secret_hash, to_hex, Token, ALPHABET};
use kiln_enroll_proto::validate::parse_host_port;

use super::{json_body, limited, token_refusal, Api, Failure, MAX_ENDPOINTS};
use crate::http::{Request, Response};
use crate::source::Source;
use crate::store::{EnrollInput, EnrollOutcome, NodeRecord, StoreError};

/// Architectures kiln builds images for.
pub const ARCHES: [&str; 2] = ["x86_64", "arm64"];

/// A validated enrollment request.
#[derive(Debug)]
struct Valid {
    token: Token,
    input: EnrollInput,
}

pub(super) fn handle(
    api: &Api,
    req: &Request,
    from: Source,
    node: &mut Option<String>,
) -> Result<Response, Failure> {
    let body: EnrollRequest = json_body(req, "enroll request")?;
    let valid = validate(body, &api.settings.ca_hash, api.clock.now())?;
    if let Some(wait) = api.limiter.blocked(from, api.clock.now()) {
        if !token_checks_out(api, &valid.token)? {
            return Err(Failure {
                body: limited(wait),
                auth: true,
            });
        }
    }
    let outcome = match api.store.enroll(&valid.input, &api.settings.pools) {
        Ok(o) => o,
        Err(StoreError::Refused(r)) => {
            return Err(token_refusal(r, &valid.token.id, &api.settings.pools))
        }
        Err(e) => return Err(Failure::store(e, "enrolling")),
    };
    let record = match outcome {
        EnrollOutcome::New(r) => {
            tracing::info!(
                "enrolled node {} ({}, {}) with token {}",
                r.name,
                r.address_v4,
                r.arch,
                r.token_id
            );
            r
        }
        EnrollOutcome::Existing(r) => r,
    };
    *node = Some(record.name.clone());
    answer(api, req, &record)
}

/// Whether the token's id exists and its secret matches (compared in constant time);
/// whether it still has uses is for the enrollment to say.
fn token_checks_out(api: &Api, token: &Token) -> Result<bool, Failure> {
    let stored = api
        .store
        .token(&token.id)
        .map_err(|e| Failure::store(e, "checking the token"))?;
    let presented = token.secret_hash();
    Ok(stored.is_some_and(|t| digest_eq(&presented, &t.secret_hash)))
}

/// The answer: revision 1 carries the whole peer list (spliced in as the feed's shared
/// bytes, not serialized again), revision 2 only its version.
fn answer(api: &Api, req: &Request, record: &NodeRecord) -> Result<Response, Failure> {
    let s = &api.settings;
    let node = NodeInfo {
        name: record.name.clone(),
        address_v4: IpNet {
            addr: record.address_v4,
            len: s.pools.v4.len,
        },
        address_v6: IpNet {
            addr: record.address_v6,
            len: s.pools.v6.len,
        },
    };
    let network = Network {
        pool_v4: s.pools.v4,
        pool_v6: s.pools.v6,
        mtu: s.mtu,
        keepalive_secs: s.keepalive_secs,
    };
    let cluster = ClusterJoin {
        role: record.role,
        labels: record.labels.clone(),
        join: super::cluster::join_of(api, record)?,
    };
    let feed = api.store.feed();
    if !feed.loaded() {
        // Only before the server's first refresh (it makes one before listening).
        api.store
            .refresh()
            .map_err(|e| Failure::store(e, "reading the peer list"))?;
    }
    if req.api_revision() >= REVISION_DELTAS {
        return Ok(Response::json(
            200,
            &EnrollAnswerV2 {
                node,
                network,
                // The commit that recorded the node is in the feed already.
                peers_version: feed.version(),
                heartbeat_secs: s.heartbeat_secs,
                cluster,
            },
        ));
    }
    let (_, list) = feed.list();
    v1_body(&node, &network, &list, s.heartbeat_secs, &cluster)
        .map(Response::raw_json)
        .map_err(|e| {
            Failure::new(
                ErrorCode::Internal,
                format!("encoding the enrollment answer: {e}"),
            )
        })
}

/// The bytes serde makes of an `EnrollAnswer` (fields in declaration order), with
/// `peers` given as JSON already.
fn v1_body(
    node: &NodeInfo,
    network: &Network,
    peers: &[u8],
    heartbeat_secs: u32,
    cluster: &ClusterJoin,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(peers.len() + 1024);
    out.extend_from_slice(b"{\"node\":");
    serde_json::to_writer(&mut out, node)?;
    out.extend_from_slice(b",\"network\":");
    serde_json::to_writer(&mut out, network)?;
    out.extend_from_slice(b",\"peers\":");
    out.extend_from_slice(peers);
    out.extend_from_slice(format!(",\"heartbeat_secs\":{heartbeat_secs},\"cluster\":").as_bytes());
    serde_json::to_writer(&mut out, cluster)?;
    out.push(b'}');
    Ok(out)
}

/// Checks every field and turns the DTO into the store's input; the first problem is
/// reported with the field's name.
fn validate(req: EnrollRequest, ca_hash: &[u8; 32], now: u64) -> Result<Valid, Failure> {
    let token = Token::parse(&req.token)
        .map_err(|e| Failure::new(ErrorCode::TokenInvalid, format!("field token: {e}")))?;
    if token.ca_hash != *ca_hash {
        return Err(Failure::new(
            ErrorCode::TokenWrongServer,
            format!(
                "token {} was made by another kiln-enroll (its CA hash is {}, this server's \
                 is {}): create a token on this server with `kiln-enroll token create`",
                token.id,
                to_hex(&token.ca_hash),
                to_hex(ca_hash)
            ),
        ));
    }
    hostname(&req.hostname)?;
    if !ARCHES.contains(&req.arch.as_str()) {
        return Err(Failure::bad_request(format!(
            "field arch: {:?} is not one of {}",
            clip(&req.arch),
            ARCHES.join(", ")
        )));
    }
    if req.credential.len() != CREDENTIAL_LEN
        || !req.credential.bytes().all(|b| ALPHABET.contains(&b))
    {
        return Err(Failure::bad_request(format!(
            "field credential: must be {CREDENTIAL_LEN} characters a-z0-9"
        )));
    }
    if req.endpoints.len() > MAX_ENDPOINTS {
        return Err(Failure::bad_request(format!(
            "field endpoints: {} entries, at most {MAX_ENDPOINTS} are accepted",
            req.endpoints.len()
        )));
    }
    if let Some(e) = &req.public_endpoint {
        parse_host_port(e).map_err(|why| {
            Failure::bad_request(format!("field public_endpoint {:?}: {why}", clip(e)))
        })?;
    }
    if req.listen_port == 0 {
        return Err(Failure::bad_request(
            "field listen_port: 0 is not a port peers can send to",
        ));
    }
    let input = EnrollInput {
        token_id: token.id.clone(),
        secret_hash: token.secret_hash(),
        public_key: req.public_key,
        credential_hash: secret_hash(&req.credential),
        hostname: req.hostname,
        arch: req.arch,
        endpoints: req.endpoints,
        public_endpoint: req.public_endpoint,
        now,
    };
    Ok(Valid { token, input })
}

/// A hostname must be a node name (one RFC 1123 label in lowercase): it becomes the node
/// name in the overlay and in Kubernetes.
fn hostname(name: &str) -> Result<(), Failure> {
    names::check_node_name(name).map_err(|why| {
        Failure::bad_request(format!(
            "field hostname {:?}: {why} (a node name is one DNS label: 1-63 characters a-z, \
             0-9 and '-', not starting or ending with '-')",
            clip(name)
        ))
    })
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_enroll_proto::key::PublicKey;

    fn request(ca: [u8; 32]) -> EnrollRequest {
        EnrollRequest {
            token: Token {
                ca_hash: ca,
                id: "abc123".into(),
                secret: "s".repeat(32),
            }
            .reveal(),
            public_key: PublicKey([5; 32]),
            credential: "c".repeat(CREDENTIAL_LEN),
            hostname: "node-1".into(),
            arch: "arm64".into(),
            endpoints: vec!["192.168.1.5:51820".parse().unwrap()],
            public_endpoint: Some("203.0.113.7:51820".into()),
            listen_port: 51820,
        }
    }

    fn refused(r: EnrollRequest) -> (ErrorCode, String) {
        let f = validate(r, &[1; 32], 0).unwrap_err();
        (f.body.error, f.body.message)
    }

    #[test]
    fn the_spliced_answer_is_what_serde_makes_of_an_enroll_answer() {
        use kiln_enroll_proto::api::{EnrollAnswer, Join, K3sJoin, Peer, PeerList, Role};
        let list = PeerList {
            version: 9,
            peers: vec![Peer {
                name: "a".into(),
                public_key: PublicKey([1; 32]),
                allowed_ips: vec!["10.77.0.1/32".parse().unwrap()],
                endpoints: vec!["192.168.1.1:51820".parse().unwrap()],
                public_endpoint: None,
                public: false,
                online: true,
            }],
        };
        let answer = EnrollAnswer {
            node: NodeInfo {
                name: "a".into(),
                address_v4: "10.77.0.1/16".parse().unwrap(),
                address_v6: "fd01::1/64".parse().unwrap(),
            },
            network: Network {
                pool_v4: "10.77.0.0/16".parse().unwrap(),
                pool_v6: "fd01::/64".parse().unwrap(),
                mtu: 1420,
                keepalive_secs: 25,
            },
            peers: list.clone(),
            heartbeat_secs: 30,
            cluster: ClusterJoin {
                role: Role::Server,
                labels: [("zone".to_string(), "a\"b".to_string())].into(),
                join: Some(Join::K3s(K3sJoin {
                    server_url: None,
                    init: true,
                    token: "t".into(),
                    agent_token: Some("u".into()),
                })),
            },
        };
        let spliced = v1_body(
            &answer.node,
            &answer.network,
            &serde_json::to_vec(&list).unwrap(),
            30,
            &answer.cluster,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(spliced).unwrap(),
            serde_json::to_string(&answer).unwrap()
        );
    }

    #[test]
    fn a_good_request_becomes_store_input() {
        let v = validate(request([1; 32]), &[1; 32], 77).unwrap();
        assert_eq!(v.input.token_id, "abc123");
        assert_eq!(v.input.secret_hash, secret_hash(&"s".repeat(32)));
        assert_eq!(v.input.credential_hash, secret_hash(&"c".repeat(32)));
        assert_eq!(v.input.now, 77);
        assert_eq!(v.input.hostname, "node-1");
    }

    #[test]
    fn each_bad_field_is_named() {
        let (code, msg) = refused(request([2; 32]));
        assert_eq!(code, ErrorCode::TokenWrongServer);
        assert!(
            msg.contains(&"02".repeat(32)) && msg.contains(&"01".repeat(32)),
            "{msg}"
        );
        let mut r = request([1; 32]);
        r.token = "KLN1xyz".into();
        let (code, msg) = refused(r);
        assert_eq!(code, ErrorCode::TokenInvalid);
        assert!(msg.contains("field token: malformed token"), "{msg}");
        type Edit = Box<dyn Fn(&mut EnrollRequest)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|r| r.hostname = "Node1".into()), "uppercase"),
            (Box::new(|r| r.hostname = "a_b".into()), "other than a-z"),
            (Box::new(|r| r.hostname = "-a".into()), "starts or ends"),
            (Box::new(|r| r.hostname = "a".repeat(64)), "wrong length"),
            (Box::new(|r| r.hostname = String::new()), "wrong length"),
            (Box::new(|r| r.arch = "riscv64".into()), "field arch"),
            (
                Box::new(|r| r.credential = "short".into()),
                "field credential",
            ),
            (
                Box::new(|r| r.credential = "C".repeat(32)),
                "field credential",
            ),
            (
                Box::new(|r| r.endpoints = vec!["10.0.0.1:1".parse().unwrap(); 17]),
                "17 entries",
            ),
            (
                Box::new(|r| r.public_endpoint = Some("nope".into())),
                "field public_endpoint",
            ),
            (Box::new(|r| r.listen_port = 0), "field listen_port"),
        ];
        for (edit, want) in cases {
            let mut r = request([1; 32]);
            edit(&mut r);
            let (code, msg) = refused(r);
            assert_eq!(code, ErrorCode::BadRequest, "{msg}");
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }
}
