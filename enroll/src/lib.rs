//! kiln-enroll: the server that holds join tokens, the node registry, overlay address
//! allocation and the watchable peer list, over HTTPS with its own CA.
//!
//! A request's way through the modules: [`server`] accepts and runs TLS ([`tls`], with
//! the certificates of [`ca`]), [`http`] reads the request, [`api`] routes it to its
//! handler, which asks the [`store`]; long polls wait on [`watch`], failed
//! authentications count in [`ratelimit`]. [`cli`] is the command line, [`cluster`] the
//! checks and views of its cluster commands.

// Tests may unwrap: a panic there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod http;
pub mod labels;
pub mod listing;
pub mod pgtest;
pub mod random;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
