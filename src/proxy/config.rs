//! What a listener is told, checked: where it listens and forwards, in which mode, with which
//! timeouts and limits. Built by the command line layer; read by every connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::MinTls;

/// Where plaintext goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port`
    Tcp(String),
    /// `unix:/path`
    Unix(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/app.sock".into());
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
            {
                Ok(Target::Tcp(s.to_string()))
            }
            _ => Err(format!("expected host:port or unix:/path, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => f.write_str(a),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What a listener carries: bytes, or HTTP requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

/// Everything a listener needs to know, checked.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub target: Target,
    pub protocol: Protocol,
    pub min_tls: MinTls,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// http mode: open upstream connections at most (tcp mode: one per connection).
    pub max_upstream_connections: usize,
    pub max_connection_age: Option<Duration>,
    /// `/readyz` also requires that a connection to the target succeeds (`server` only).
    pub ready_upstream: bool,
}
