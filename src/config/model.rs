//! The checked configuration: what the process runs, with every default applied and every
//! cross-field rule satisfied. Only [`super::check`] builds one. Each part carries a fingerprint
//! of what it was made from, so that a new configuration can be compared with the running one
//! part by part.

use std::time::Duration;

use crate::actions::{Action, Pacing};
use crate::admin::Listen;
use crate::proxy::inbound::Allow;
use crate::proxy::outbound::Remote;
use crate::proxy::ListenerConfig;
use crate::reload::SetConfig;
use crate::tls::Pins;

/// A whole checked configuration.
#[derive(Debug)]
pub struct Config {
    pub admin: Listen,
    pub shutdown_grace: Duration,
    /// How long `/drain` keeps `/readyz` at 503 before it answers.
    pub drain_delay: Duration,
    pub sets: Vec<SetPlan>,
    pub listeners: Vec<ListenerPlan>,
    pub watches: Vec<WatchPlan>,
}

/// One credential set and how it is watched.
#[derive(Debug, Clone)]
pub struct SetPlan {
    pub set: SetConfig,
    /// `None`: no polling.
    pub poll_interval: Option<Duration>,
    pub debounce: Duration,
    pub fingerprint: String,
}

/// One listener.
#[derive(Debug)]
pub struct ListenerPlan {
    /// The name of the set whose credentials it uses.
    pub set: String,
    pub cfg: ListenerConfig,
    pub role: Role,
    /// Whether `max-connections` or `max-upstream-connections` was given (then it is kept or
    /// refused against the open-file limit; defaults are lowered to fit).
    pub limits_chosen: bool,
    pub fingerprint: String,
}

/// What a listener does.
#[derive(Debug)]
pub enum Role {
    /// Terminates mTLS in front of a plaintext app.
    Server { allow: Allow },
    /// Originates mTLS for a plaintext app.
    Client { remote: Remote, pins: Pins },
}

/// The actions run after each validated change of one set.
#[derive(Debug)]
pub struct WatchPlan {
    pub set: String,
    pub actions: Vec<Action>,
    pub pacing: Pacing,
    pub fingerprint: String,
}

impl Config {
    pub fn set(&self, name: &str) -> Option<&SetPlan> {
        self.sets.iter().find(|s| s.set.name == name)
    }
}
