//! `--protocol tcp`: copy bytes both ways between the accepted connection and the upstream,
//! passing a half-close on (EOF one way shuts down that direction only). Ends on
//! `--idle-timeout` without traffic or at `--max-connection-age`; a reload never ends it. Used by
//! `server` (TLS client, plaintext app) and `client` (plaintext app, TLS server) alike.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::config::ListenerConfig;
use super::io::{Activity, Tracked};

/// Copy buffer from the client (`a`) to the upstream (`b`): requests and uploads.
const TO_UPSTREAM_BUF: usize = 8 * 1024;
/// Copy buffer from the upstream back to the client: responses and downloads. 16 KiB, a whole
/// TLS record's plaintext, so a download is written in full-size records, one write each.
const TO_CLIENT_BUF: usize = 16 * 1024;

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
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TO_UPSTREAM_BUF, TO_CLIENT_BUF) => {
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
