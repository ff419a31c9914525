//! `--protocol tcp`: copy bytes both ways between the accepted connection and the upstream,
//! passing a half-close on (EOF one way shuts down that direction only). Ends on
//! `--idle-timeout` without traffic or at `--max-connection-age`; a reload never ends it. Used by
//! `server` (TLS client, plaintext app) and `client` (plaintext app, TLS server) alike.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::config::ListenerConfig;
use super::io::{Activity, Tracked};

/// Returns the error that ended the copy, if one did (after it was logged at debug level).
pub async fn splice<A, B>(client: A, upstream: B, cfg: &ListenerConfig) -> Option<std::io::Error>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Tracked::new(client, activity.clone());
    let mut upstream = Tracked::new(upstream, activity.clone());
    let age = async {
        match cfg.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    // On shutdown, tcp connections keep running until the grace period ends (the runtime stops then).
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = &r {
                debug!(listener = %cfg.name, error = %e, "connection ended with an error");
            }
            r.err()
        }
        _ = activity.idle(cfg.idle_timeout) => {
            debug!(listener = %cfg.name, "idle timeout");
            None
        }
        _ = age => {
            debug!(listener = %cfg.name, "max connection age reached");
            None
        }
    }
}
