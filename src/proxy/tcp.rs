//! `--protocol tcp`: copy bytes both ways between the TLS client and the plaintext target,
//! passing a half-close on (EOF one way shuts down that direction only). Ends on
//! `--idle-timeout` without traffic or at `--max-connection-age`; a reload never ends it.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::io::{connect, Activity, Tracked};
use super::listener::ConnCtx;

pub async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    ctx: &ConnCtx,
    _shutdown: CancellationToken,
) {
    let upstream = match connect(&ctx.cfg.target, ctx.cfg.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            ctx.metrics.upstream_failures.inc();
            warn!(listener = %ctx.cfg.name, target = %ctx.cfg.target, error = %e, "upstream connect failed; closing the client connection");
            return;
        }
    };
    let activity = Activity::new();
    let mut client = Tracked::new(client, activity.clone());
    let mut upstream = Tracked::new(upstream, activity.clone());
    let age = async {
        match ctx.cfg.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    // On shutdown, tcp connections keep running until the grace period ends (the runtime stops then).
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                debug!(listener = %ctx.cfg.name, error = %e, "connection ended with an error");
            }
        }
        _ = activity.idle(ctx.cfg.idle_timeout) => debug!(listener = %ctx.cfg.name, "idle timeout"),
        _ = age => debug!(listener = %ctx.cfg.name, "max connection age reached"),
    }
}
