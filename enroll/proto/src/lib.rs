//! kiln-enroll's wire protocol, shared by the server (`kiln-enroll`), the node agent and
//! the tests: the join token ([`token`]), keys ([`key`]), address types ([`net`]), the
//! request and answer bodies ([`api`]), the checks a node makes on what it is told
//! ([`validate`]), and the HTTPS client that pins the server's CA ([`client`], [`pin`]).
//!
//! JSON over HTTPS/1.1. Every body type has `deny_unknown_fields`: both sides are built
//! from one source tree, and an unknown field means a mismatch worth an error.

// Tests may unwrap: a panic there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod authority;
pub mod client;
pub mod http;
pub mod key;
pub mod net;
pub mod pin;
pub mod token;
pub mod validate;

/// Keys travel in standard padded base64 (see [`key`]); the codec is the contract's,
/// re-exported so code that speaks the protocol finds it beside the key type.
pub use kiln_contract::base64;
