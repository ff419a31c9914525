//! `run --print`: the configuration as it is understood, every default written out, in the
//! file's own format (it can be used as a config file again, and behaves as the original).
//!
//! A listener's connection limits are the exception: left to their defaults, they are shown as
//! comments rather than written out. A limit written in the file counts as chosen, and a chosen
//! limit is refused when the open-file limit cannot hold it, where a default is lowered to fit:
//! written out, the printed file would not start where the original does.

use std::collections::BTreeMap;

use super::defaults;
use super::lines::KeyLines;
use super::model::{Config, Role};
use super::raw::{RawConfig, RawListener};
use crate::creds::validate::Usage;

/// What the comment of a default connection limit says after its value.
const DEFAULT_LIMIT: &str = "(default; lowered to fit the open-file limit if need be)";

/// `raw` with every default filled in (but the connection limits: see [`to_yaml`]), each set's
/// files as resolved and its usage as derived from its listeners.
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
    or(&mut out.drain_delay, defaults::DRAIN_DELAY);
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
            l.ready_upstream.get_or_insert(false);
        } else {
            l.unsafe_listen.get_or_insert(false);
            // The target's host unless given.
            let plan = config.listeners.iter().find(|p| p.cfg.name == l.name);
            if let Some(Role::Client { remote, .. }) = plan.map(|p| &p.role) {
                l.server_name
                    .get_or_insert_with(|| remote.server_name.to_str().into_owned());
            }
        }
        or(&mut l.protocol, "tcp");
        or(&mut l.min_tls, defaults::MIN_TLS);
        or(&mut l.handshake_timeout, defaults::HANDSHAKE_TIMEOUT);
        or(&mut l.connect_timeout, defaults::CONNECT_TIMEOUT);
        or(&mut l.idle_timeout, defaults::IDLE_TIMEOUT);
        // Always written: the comments of default limits go before it.
        or(&mut l.max_connection_age, "0");
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

/// The YAML text of `raw` (as [`filled`] gives it), with a comment for each connection limit
/// a listener leaves to its default: `# max-connections: 10000 (default; ...)`.
pub fn to_yaml(raw: &RawConfig) -> String {
    match serde_saphyr::to_string(raw) {
        Ok(text) => with_default_limits(&text, raw),
        Err(e) => format!("# cannot print the config: {e}\n"),
    }
}

/// `text` (the YAML of `raw`) with the comments of [`default_limits`] where the keys would be:
/// before each listener's `max-connection-age`, indented as it is.
fn with_default_limits(text: &str, raw: &RawConfig) -> String {
    let lines = KeyLines::of(text);
    let mut before: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        if let Some(line) = lines.line_of(&format!("listeners[{i}].max-connection-age")) {
            before.entry(line).or_default().extend(default_limits(l));
        }
    }
    let mut out = String::with_capacity(text.len() + 100 * before.len());
    for (n, line) in text.lines().enumerate() {
        let indent = &line[..line.len() - line.trim_start().len()];
        for comment in before.get(&(n + 1)).into_iter().flatten() {
            out.push_str(&format!("{indent}# {comment}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The limits `l` leaves to their defaults, as `KEY: VALUE (default; ...)`;
/// max-upstream-connections only counts for http.
fn default_limits(l: &RawListener) -> Vec<String> {
    let mut limits = Vec::new();
    if l.max_connections.is_none() {
        limits.push(("max-connections", defaults::MAX_CONNECTIONS));
    }
    if l.max_upstream_connections.is_none() && l.protocol.as_deref() == Some("http") {
        limits.push((
            "max-upstream-connections",
            defaults::MAX_UPSTREAM_CONNECTIONS,
        ));
    }
    limits
        .into_iter()
        .map(|(key, value)| format!("{key}: {value} {DEFAULT_LIMIT}"))
        .collect()
}
