//! `run --print`: the configuration as it is understood, every default written out, in the
//! file's own format (it can be used as a config file again).

use super::defaults;
use super::model::Config;
use super::raw::RawConfig;
use crate::creds::validate::Usage;

/// `raw` with every default filled in, each set's files as resolved and its usage as derived
/// from its listeners.
pub fn filled(raw: &RawConfig, config: &Config) -> RawConfig {
    let mut out = raw.clone();
    let or = |v: &mut Option<String>, d: &str| {
        if v.is_none() {
            *v = Some(d.to_string());
        }
    };
    or(&mut out.admin_listen, defaults::ADMIN_LISTEN);
    or(&mut out.poll_interval, defaults::POLL_INTERVAL);
    or(&mut out.debounce, defaults::DEBOUNCE);
    or(&mut out.shutdown_grace, defaults::SHUTDOWN_GRACE);
    for (name, set) in out.sets.iter_mut() {
        if let Some(plan) = config.set(name) {
            // The files it reads, whether named or found in cert-dir.
            let paths = &plan.set.paths;
            set.cert = Some(paths.cert.clone());
            set.key = Some(paths.key.clone());
            set.ca = Some(paths.ca.clone());
            set.peer_ca = paths.peer_ca.clone();
            set.usage = Some(
                match plan.set.policy.usage {
                    Usage::Server => "server",
                    Usage::Client => "client",
                    Usage::Both => "both",
                }
                .into(),
            );
        }
    }
    for l in out.listeners.iter_mut() {
        if l.kind == "server" {
            or(&mut l.listen, defaults::SERVER_LISTEN);
            if l.allow_all.is_none() {
                l.allow_all = Some(false);
            }
        } else if l.unsafe_listen.is_none() {
            l.unsafe_listen = Some(false);
        }
        or(&mut l.protocol, "tcp");
        or(&mut l.min_tls, defaults::MIN_TLS);
        or(&mut l.handshake_timeout, defaults::HANDSHAKE_TIMEOUT);
        or(&mut l.connect_timeout, defaults::CONNECT_TIMEOUT);
        or(&mut l.idle_timeout, defaults::IDLE_TIMEOUT);
        or(&mut l.max_connection_age, "0");
        l.max_connections.get_or_insert(defaults::MAX_CONNECTIONS);
        l.max_upstream_connections
            .get_or_insert(defaults::MAX_UPSTREAM_CONNECTIONS);
    }
    for w in out.watch.iter_mut() {
        let signalled = w.pid_file.is_some() || w.process_name.is_some() || w.pid.is_some();
        if signalled {
            or(&mut w.signal, defaults::SIGNAL);
        }
        if w.verify_addr.is_some() {
            or(&mut w.verify_timeout, defaults::VERIFY_TIMEOUT);
        }
        or(&mut w.min_interval, defaults::MIN_INTERVAL);
        w.act_on_start.get_or_insert(false);
    }
    out
}

/// The YAML text of `raw`.
pub fn to_yaml(raw: &RawConfig) -> String {
    serde_saphyr::to_string(raw).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
}
