//! What validation is asked to check beyond a well-formed, trusted triple (the role and
//! expected names of the leaf), and the clock it checks at.

use std::time::SystemTime;

use rustls_pki_types::UnixTime;
use serde::Serialize;

/// Which TLS role the leaf must be fit for (`--usage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    #[default]
    Server,
    Client,
    Both,
}

/// What the leaf must satisfy beyond being well-formed and trusted.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub usage: Usage,
    pub expect_dns: Vec<String>,
    pub expect_uri: Vec<String>,
}

/// Current time for webpki.
pub(super) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}
