//! kiln-enroll: the server that holds join tokens, the node registry, overlay address
//! allocation and the watchable peer list, over HTTPS with its own CA.
//!
//! A request's way through the modules: [`server`] accepts (or closes at once, see
//! [`server::admit`]) and runs TLS ([`tls`], with the certificates of [`ca`]) and hyper;
//! [`http`] reads the head under the deadline and checks the request; [`api`] routes it
//! to its handler, which asks the [`store`]; long polls wait on [`watch`], failed
//! authentications count in [`ratelimit`] per [`source`]. [`cli`] is the command line,
//! [`cluster`] the checks and views of its cluster commands, [`fdlimit`] the open-file
//! limit `serve` raises.

// Tests may unwrap: a panic there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod fdlimit;
pub mod http;
pub mod labels;
pub mod listing;
pub mod pgtest;
pub mod random;
pub mod ratelimit;
pub mod server;
pub mod source;
pub mod store;
pub mod tls;
pub mod watch;
