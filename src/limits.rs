//! The file-descriptor budget of a listener. Every client connection takes one descriptor and,
//! in tcp mode, one more for its upstream connection; in http mode the upstream connections of
//! the listener are capped as a whole; the admin endpoint takes up to its connection cap and
//! the rest of the process (watches, credential reads, actions, the runtime) a small reserve.
//! At start-up the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_nofile`]), and
//! [`fit`] checks the configured limits against it, so that a flood runs into our limits (wait
//! in the backlog, 503) and never into EMFILE, which would also starve probes and reloads.

use crate::proxy::Protocol;

/// Descriptors kept for everything but client and upstream connections.
pub const RESERVED_FDS: u64 = 64;

/// The connection limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_upstream_connections: usize,
}

/// How the limits fit the descriptors the process may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// The default limits did not fit; these do.
    Lowered(ConnLimits),
    /// Limits the user chose do not fit (or nothing useful would).
    TooSmall {
        needed: u64,
        available: u64,
    },
}

/// Descriptors the listener needs at its limits, with `admin` for the admin endpoint.
pub fn needed(protocol: Protocol, limits: ConnLimits, admin: u64) -> u64 {
    let conns = limits.max_connections as u64;
    let per_conn = match protocol {
        Protocol::Tcp => conns * 2,
        Protocol::Http => conns + limits.max_upstream_connections as u64,
    };
    per_conn + admin + RESERVED_FDS
}

/// Checks `limits` against `nofile` descriptors. Limits the user set (`chosen`) are kept or
/// refused; defaults are lowered to fit, keeping their proportions.
pub fn fit(protocol: Protocol, limits: ConnLimits, chosen: bool, admin: u64, nofile: u64) -> Fit {
    let need = needed(protocol, limits, admin);
    if need <= nofile {
        return Fit::Fits;
    }
    let available = nofile.saturating_sub(admin + RESERVED_FDS);
    let too_small = Fit::TooSmall {
        needed: need,
        available: nofile,
    };
    if chosen {
        return too_small;
    }
    let lowered = match protocol {
        Protocol::Tcp => ConnLimits {
            max_connections: (available / 2) as usize,
            ..limits
        },
        Protocol::Http => {
            let total = (limits.max_connections + limits.max_upstream_connections) as u64;
            let upstream = available * limits.max_upstream_connections as u64 / total.max(1);
            ConnLimits {
                max_connections: (available - upstream) as usize,
                max_upstream_connections: upstream as usize,
            }
        }
    };
    // Fewer than a handful of connections is not a sidecar that works.
    if lowered.max_connections < 8
        || (protocol == Protocol::Http && lowered.max_upstream_connections < 1)
    {
        return too_small;
    }
    Fit::Lowered(lowered)
}

/// What fitting a whole configuration did.
#[derive(Debug, Default)]
pub struct Fitted {
    /// Listeners whose default limits were lowered: (name, new limits, open-file limit).
    pub lowered: Vec<(String, ConnLimits, u64)>,
}

/// A listener that does not fit: its name, and what it needs and may have.
#[derive(Debug, thiserror::Error)]
#[error("listener {name:?}: its connection limits need about {needed} file descriptors, but this process may open only {available} (RLIMIT_NOFILE, already raised to its hard limit): raise the container's nofile limit (ulimit -n), or lower its limits")]
pub struct TooSmall {
    pub name: String,
    pub needed: u64,
    pub available: u64,
}

/// Fits every listener of `config` into `nofile` descriptors, each getting an equal share of
/// what the admin endpoint and the reserve leave; lowers defaults (in place), refuses limits
/// that were chosen.
pub fn fit_config(config: &mut crate::config::Config, nofile: u64) -> Result<Fitted, TooSmall> {
    let admin = match config.admin {
        crate::admin::Listen::On(_) => crate::admin::MAX_ADMIN_CONNECTIONS as u64,
        crate::admin::Listen::Off => 0,
    };
    let n = config.listeners.len().max(1) as u64;
    let share = RESERVED_FDS + nofile.saturating_sub(admin + RESERVED_FDS) / n;
    let mut fitted = Fitted::default();
    for l in &mut config.listeners {
        let limits = ConnLimits {
            max_connections: l.cfg.max_connections,
            max_upstream_connections: l.cfg.max_upstream_connections,
        };
        let protocol = l.cfg.protocol;
        // A single listener keeps the whole budget, admin included, as before.
        let (budget, admin_here) = if n == 1 { (nofile, admin) } else { (share, 0) };
        match fit(protocol, limits, l.limits_chosen, admin_here, budget) {
            Fit::Fits => {}
            Fit::Lowered(new) => {
                l.cfg.max_connections = new.max_connections;
                l.cfg.max_upstream_connections = new.max_upstream_connections;
                fitted.lowered.push((l.cfg.name.clone(), new, nofile));
            }
            Fit::TooSmall { needed, available } => {
                return Err(TooSmall {
                    name: l.cfg.name.clone(),
                    needed,
                    available,
                })
            }
        }
    }
    Ok(fitted)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in effect.
pub fn raise_nofile() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: ConnLimits = ConnLimits {
        max_connections: 10_000,
        max_upstream_connections: 1024,
    };

    #[test]
    fn defaults_fit_a_large_limit() {
        assert_eq!(fit(Protocol::Tcp, DEFAULTS, false, 128, 1 << 20), Fit::Fits);
        assert_eq!(needed(Protocol::Tcp, DEFAULTS, 128), 20_000 + 128 + 64);
        assert_eq!(
            needed(Protocol::Http, DEFAULTS, 128),
            10_000 + 1024 + 128 + 64
        );
    }

    #[test]
    fn defaults_are_lowered_to_fit_1024() {
        for protocol in [Protocol::Tcp, Protocol::Http] {
            match fit(protocol, DEFAULTS, false, 128, 1024) {
                Fit::Lowered(l) => {
                    assert!(needed(protocol, l, 128) <= 1024, "{protocol:?} {l:?}");
                    assert!(l.max_connections >= 400, "{protocol:?} {l:?}");
                }
                other => panic!("{protocol:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn chosen_limits_that_do_not_fit_are_refused() {
        let chosen = ConnLimits {
            max_connections: 5000,
            ..DEFAULTS
        };
        assert_eq!(
            fit(Protocol::Tcp, chosen, true, 128, 1024),
            Fit::TooSmall {
                needed: 10_000 + 128 + 64,
                available: 1024
            }
        );
        assert_eq!(fit(Protocol::Tcp, chosen, true, 128, 20_000), Fit::Fits);
    }

    #[test]
    fn a_tiny_limit_is_refused_even_for_defaults() {
        assert!(matches!(
            fit(Protocol::Http, DEFAULTS, false, 128, 200),
            Fit::TooSmall { .. }
        ));
    }
}
