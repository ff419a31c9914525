//! `ready-upstream`: whether a listener's target accepts connections now, for `/readyz`. A
//! probe opens a connection to the target and closes it at once (nothing is sent), and its
//! answer is reused for a second: kubelet asks every few seconds, but anyone who reaches the
//! admin endpoint may ask as often as they like, and the app should see at most one probe
//! connection a second.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::Target;
use super::io;

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(1);
/// The longest a probe waits for the target: kubelet's default probe timeout is 1 s, and a
/// target that takes longer to accept is not one to send traffic to.
const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// The upstream check of one listener.
#[derive(Debug)]
pub struct UpstreamProbe {
    target: Target,
    timeout: Duration,
    /// When the last answer was found, and what it was.
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl UpstreamProbe {
    /// A probe of `target` that waits up to `min(connect_timeout, 1s)`.
    pub fn new(target: Target, connect_timeout: Duration) -> Self {
        UpstreamProbe {
            target,
            timeout: connect_timeout.min(MAX_TIMEOUT),
            last: Mutex::new(None),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Ok if the target accepted a connection within the last second (or does now); else why
    /// not. Probes that arrive while one connects wait for it and share its answer.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < TTL {
                return answer.clone();
            }
        }
        let answer = io::connect(&self.target, self.timeout)
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: std::net::SocketAddr) -> Target {
        Target::Tcp(addr.to_string())
    }

    #[tokio::test]
    async fn a_listening_target_is_ready_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = UpstreamProbe::new(tcp(addr), Duration::from_secs(5));
        assert_eq!(probe.timeout, MAX_TIMEOUT);
        assert_eq!(probe.check().await, Ok(()));
        drop(listener);
        let closed = UpstreamProbe::new(tcp(addr), Duration::from_millis(200));
        assert_eq!(closed.timeout, Duration::from_millis(200));
        let err = closed.check().await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn unix_socket_targets_are_probed_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let probe = UpstreamProbe::new(Target::Unix(path.clone()), Duration::from_secs(1));
        assert!(probe.check().await.is_err(), "no socket yet");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fresh = UpstreamProbe::new(Target::Unix(path), Duration::from_secs(1));
        assert_eq!(fresh.check().await, Ok(()));
    }

    #[tokio::test]
    async fn an_answer_is_reused_for_a_second() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = UpstreamProbe::new(tcp(addr), Duration::from_secs(1));
        assert_eq!(probe.check().await, Ok(()));
        drop(listener);
        // The clock stops (the connects themselves ran on the real one): still the answer of a
        // moment ago, until a second has passed.
        tokio::time::pause();
        assert_eq!(probe.check().await, Ok(()));
        tokio::time::advance(TTL).await;
        tokio::time::resume();
        assert!(
            probe.check().await.is_err(),
            "not asked again after {TTL:?}"
        );
    }
}
