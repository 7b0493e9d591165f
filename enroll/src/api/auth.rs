//! Node authentication: `Authorization: Bearer <node name>.<credential>`, checked against
//! the stored sha256 of the credential in constant time. An unknown name and a wrong
//! credential get the same answer.

use kiln_enroll_proto::api::ErrorCode;
use kiln_enroll_proto::token::{digest_eq, secret_hash};

use super::{Api, Failure};
use crate::http::Request;
use crate::store::NodeRecord;

fn unauthorized(why: &str) -> Failure {
    Failure::new(
        ErrorCode::Unauthorized,
        format!(
            "{why}: node calls need `Authorization: Bearer <node name>.<credential>` with the \
             name kiln-enroll gave and the credential sent at enrollment"
        ),
    )
}

/// The authenticated, unrevoked node behind the request.
pub(super) fn node(api: &Api, req: &Request) -> Result<NodeRecord, Failure> {
    let header = req
        .header("authorization")
        .ok_or_else(|| unauthorized("no Authorization header"))?;
    let pair = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer ...`"))?;
    let (name, credential) = pair
        .split_once('.')
        .ok_or_else(|| unauthorized("the bearer value has no `.` between name and credential"))?;
    let record = api
        .store
        .node(name)
        .map_err(|e| Failure::store(e, "looking up the node"))?;
    // Hash even when the name is unknown, so both cases take the same time.
    let presented = secret_hash(credential);
    let known = record
        .as_ref()
        .map(|r| digest_eq(&presented, &r.credential_hash))
        .unwrap_or(false);
    match record {
        Some(r) if known => {
            if r.revoked {
                return Err(Failure::new(
                    ErrorCode::NodeRevoked,
                    format!(
                        "node {} was revoked: it is no longer part of the overlay; to bring \
                         it back, remove /var/lib/kiln on it and enroll with a new token",
                        r.name
                    ),
                ));
            }
            Ok(r)
        }
        _ => Err(unauthorized("unknown node or wrong credential")),
    }
}
