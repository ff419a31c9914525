//! `/drain`: the way out of a pod during a rollout. A native sidecar gets SIGTERM only after
//! the app container has exited, so without help it keeps accepting for a Service whose
//! endpoints still list the pod, and forwards to a dead app (502s). Kubernetes runs the app
//! container's preStop hook before it sends the app SIGTERM: a hook that calls `/drain` turns
//! readiness off (the pod leaves the endpoints) and is answered only after `drain-delay`, so the
//! app is stopped once the endpoints no longer send traffic here. The listeners keep accepting
//! and serving meanwhile: the endpoints take seconds to propagate, and the app is still alive;
//! but each connection to a server listener closes once its request is answered (HTTP/1
//! `Connection: close`, HTTP/2 GOAWAY), so kept-alive clients reconnect through the Service to
//! pods that stay, and their connections to the app are not kept open for later requests (the
//! app, stopped next, need not wait for them).
//!
//! [`Drain`] is that state; [`request`] is the `drain` subcommand's side of it (an exec preStop
//! hook in images that have our binary).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Whether the process drains, since when, and for how long `/drain` holds its answer.
#[derive(Debug, Default)]
pub struct Drain {
    /// When the first `/drain` arrived; unset while not draining.
    started: OnceLock<Instant>,
    /// `drain-delay`, as the running configuration says.
    delay: Mutex<Duration>,
    /// Cancelled when the drain starts: the server listeners' connections then close once their
    /// request is answered (kept-alive clients would otherwise stay on this pod until the app
    /// is gone).
    started_token: CancellationToken,
}

impl Drain {
    /// `drain-delay` from now on (a changed configuration may change it).
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    pub fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once a `/drain` arrived: not ready from then on, for good.
    pub fn is_draining(&self) -> bool {
        self.started.get().is_some()
    }

    /// Cancelled once the drain starts (see the field).
    pub fn token(&self) -> &CancellationToken {
        &self.started_token
    }

    /// Starts draining (the first call), then waits until `drain-delay` has passed since the
    /// start (later calls wait for what remains of it). Returns how long readiness has been off.
    pub async fn wait(&self) -> Duration {
        let mut first = false;
        let started = *self.started.get_or_init(|| {
            first = true;
            Instant::now()
        });
        let delay = self.delay();
        if first {
            info!(
                ?delay,
                "draining: readiness off; connections close after their request"
            );
            self.started_token.cancel();
        }
        tokio::time::sleep_until(started + delay).await;
        started.elapsed()
    }
}

// === The `drain` subcommand ===

/// Why `mtls-sidecar drain` failed. The I/O error is part of the message (not a `source`):
/// one line, the cause where it reads best.
#[derive(Debug, thiserror::Error)]
pub enum DrainCallError {
    #[error("cannot connect to the admin endpoint at {addr}: {cause} (is the sidecar running, with --admin-listen on this address?)")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("the admin endpoint at {addr} did not answer /drain within {}", humantime::format_duration(*.timeout))]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to the admin endpoint at {addr}: {cause}")]
    Io { addr: SocketAddr, cause: io::Error },
    #[error("the admin endpoint at {addr} answered /drain with {status:?}: {body}")]
    Refused {
        addr: SocketAddr,
        status: String,
        body: String,
    },
}

/// `GET /drain` on the admin endpoint at `addr`, waiting up to `timeout` in all for the answer:
/// its body when it is 200.
pub fn request(addr: SocketAddr, timeout: Duration) -> Result<String, DrainCallError> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(DrainCallError::Timeout { addr, timeout })
    };
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        )
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?).map_err(|cause| {
        if timed_out(&cause) {
            DrainCallError::Timeout { addr, timeout }
        } else {
            DrainCallError::Connect { addr, cause }
        }
    })?;
    let io_err = |cause: io::Error| {
        if timed_out(&cause) {
            DrainCallError::Timeout { addr, timeout }
        } else {
            DrainCallError::Io { addr, cause }
        }
    };
    stream.set_write_timeout(Some(left()?)).map_err(io_err)?;
    let head = format!("GET /drain HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(io_err)?;
    // `Connection: close`: the answer ends where the stream does.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
        if answer.len() > 64 * 1024 {
            break;
        }
    }
    let (status, body) = parse_answer(&answer);
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body)
    } else {
        Err(DrainCallError::Refused { addr, status, body })
    }
}

/// (status line, body) of an HTTP/1.1 answer with no chunked body (ours have a length).
fn parse_answer(answer: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").trim().to_string();
    (status, body.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_call_starts_the_drain_and_later_ones_wait_for_the_rest() {
        let drain = Drain::default();
        drain.set_delay(Duration::from_secs(5));
        assert!(!drain.is_draining());
        let start = Instant::now();
        assert!(drain.wait().await >= Duration::from_secs(5));
        assert!(drain.is_draining());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Later: at once (the delay is over); a longer delay from now on adds what remains.
        assert_eq!(drain.wait().await, Duration::from_secs(5));
        drain.set_delay(Duration::from_secs(8));
        drain.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_answers_at_once() {
        let drain = Drain::default();
        assert_eq!(drain.wait().await, Duration::ZERO);
        assert!(drain.is_draining());
    }

    #[test]
    fn answers_are_read_as_status_line_and_body() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ndrained.\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "drained.");
        assert_eq!(parse_answer(b"garbage").0, "garbage");
    }

    #[test]
    fn an_endpoint_that_is_not_there_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = request(addr, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, DrainCallError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("--admin-listen"), "{err}");
    }
}
