//! `kiln-enroll serve`: the open-file limit, the CA and its leaf, the API, the listener
//! and the ready line, then the server until the process ends.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_enroll_proto::net::ula_prefix;
use kiln_enroll_proto::token::to_hex;

use super::ServeArgs;
use crate::api::{Api, Settings};
use crate::ca::Ca;
use crate::clock::{Clock, SystemClock};
use crate::server::{Options, Server};
use crate::store::{logic, Pools, Store};
use crate::{fdlimit, tls};

/// Serves on the state in `store` with `args` until the process ends.
pub(super) fn serve(store: Arc<dyn Store>, args: ServeArgs) -> anyhow::Result<()> {
    // Before anything opens more files: connections beyond the limit would hang.
    let limit = fdlimit::raise()?;
    if let Some(from) = limit.raised_from {
        tracing::info!("open-file limit raised from {from} to {}", limit.soft);
    }
    let (max_connections, warning) = fdlimit::fit(args.max_connections, &limit);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if args.endpoint_ttl < u64::from(args.heartbeat) {
        bail!(
            "--endpoint-ttl {} is shorter than --heartbeat {}: every node would flap \
             offline between heartbeats (use about three heartbeats, e.g. --endpoint-ttl {})",
            args.endpoint_ttl,
            args.heartbeat,
            u64::from(args.heartbeat) * 3
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let ca = Ca::load(store.as_ref(), now)?;
    let leaf = ca.issue_leaf(&args.sans, now)?;
    let tls = tls::server_config(&ca, leaf)?;
    let pools = Pools {
        v4: args.pool_v4,
        v6: logic::v6_pool(ula_prefix(&ca.hash())),
    };
    let settings = Settings {
        ca_hash: ca.hash(),
        pools,
        mtu: args.mtu,
        keepalive_secs: args.keepalive,
        heartbeat_secs: args.heartbeat,
        watch_timeout_secs: args.watch_timeout,
    };
    // The feed serves every peer list; loading it reads every node once, here.
    store
        .refresh()
        .context("loading the peer list from the state")?;
    let notifier = store.feed().notifier();
    let api = Arc::new(Api::new(
        store.clone(),
        clock.clone(),
        notifier.clone(),
        settings,
        args.max_failures,
    ));
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("reading the address bound for {}", args.listen))?;
    tracing::info!(
        "pools {} and {}, mtu {}, heartbeat {} s, endpoint ttl {} s",
        pools.v4,
        pools.v6,
        args.mtu,
        args.heartbeat,
        args.endpoint_ttl
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "kiln-enroll: listening on https://{addr} ca-hash {}",
            to_hex(&ca.hash())
        )
        .and_then(|()| out.flush())
        .context("writing the ready line to stdout")?;
    }
    let server = Server {
        listener,
        tls,
        api,
        store,
        notifier,
        clock,
        options: Options {
            max_connections,
            max_per_source: args.max_per_source,
            request_timeout: Duration::from_secs(args.request_timeout),
            watch_timeout: Duration::from_secs(u64::from(args.watch_timeout)),
            endpoint_ttl: args.endpoint_ttl,
        },
    };
    server.run().with_context(|| format!("serving on {addr}"))
}
