//! Raw configuration -> checked [`Config`]: every default applied (from [`super::defaults`]),
//! every value parsed, and the rules that span options checked: a listener's set exists and
//! allows the usage the listener needs, no two listeners (or the admin endpoint) share an
//! address, a client listener is on loopback unless allowed otherwise, two sets on the same
//! files agree, every watch has an action. All mistakes are collected, each with its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::defaults;
use super::error::{ConfigError, Origin};
use super::model::{Config, ListenerPlan, Role, SetPlan, WatchPlan};
use super::raw::{RawConfig, RawListener, RawSet, RawWatch};
use super::values;
use crate::actions::exec::ExecAction;
use crate::actions::signal::{comm_name, parse_signal, SignalAction, SignalTarget};
use crate::actions::stage::StageAction;
use crate::actions::verify::VerifyAction;
use crate::actions::webhook::{WebhookAction, WebhookInput};
use crate::actions::{Action, Pacing};
use crate::admin::Listen;
use crate::creds::paths::{CredentialPaths, MissingPathError};
use crate::creds::validate::{Policy, Usage};
use crate::proxy::inbound::Allow;
use crate::proxy::outbound::Remote;
use crate::proxy::{ListenerConfig, Protocol, Target};
use crate::reload::SetConfig;
use crate::tls::{MinTls, Pins};

/// Checks `raw` (from `origin`); Err lists every mistake.
pub fn check(raw: &RawConfig, origin: &Origin) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        origin,
        errors: Vec::new(),
    };
    let config = c.config(raw);
    if c.errors.is_empty() {
        Ok(config)
    } else {
        Err(c.errors)
    }
}

struct Checker<'a> {
    origin: &'a Origin,
    errors: Vec<ConfigError>,
}

/// What the listeners of a set need its leaf to allow.
#[derive(Default, Clone, Copy)]
struct Needs {
    server: bool,
    client: bool,
}

impl Checker<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    /// `option` in messages: `--option` for flags, `option` in a file.
    fn n(&self, option: &str) -> String {
        self.origin.name(option)
    }

    fn duration(&mut self, key: String, value: Option<&str>, default: &str) -> Duration {
        match values::duration(value.unwrap_or(default)) {
            Ok(d) => d,
            Err(e) => {
                self.err(key, e);
                Duration::ZERO
            }
        }
    }

    fn config(&mut self, raw: &RawConfig) -> Config {
        let admin = match values::listen(
            raw.admin_listen
                .as_deref()
                .unwrap_or(defaults::ADMIN_LISTEN),
        ) {
            Ok(l) => l,
            Err(e) => {
                self.err("admin-listen", e);
                Listen::Off
            }
        };
        let poll = self.duration(
            "poll-interval".into(),
            raw.poll_interval.as_deref(),
            defaults::POLL_INTERVAL,
        );
        let debounce = self.duration(
            "debounce".into(),
            raw.debounce.as_deref(),
            defaults::DEBOUNCE,
        );
        let shutdown_grace = self.duration(
            "shutdown-grace".into(),
            raw.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        );
        let drain_delay = self.duration(
            "drain-delay".into(),
            raw.drain_delay.as_deref(),
            defaults::DRAIN_DELAY,
        );
        let mut needs: BTreeMap<&str, Needs> = BTreeMap::new();
        for l in &raw.listeners {
            let n = needs.entry(l.credentials.as_str()).or_default();
            match l.kind.as_str() {
                "server" => n.server = true,
                "client" => n.client = true,
                _ => {}
            }
        }
        let timing = format!("{poll:?}/{debounce:?}");
        let sets: Vec<SetPlan> = raw
            .sets
            .iter()
            .filter_map(|(name, s)| {
                let need = needs.get(name.as_str()).copied().unwrap_or_default();
                self.set(name, s, need, raw, &timing)
            })
            .map(|set| SetPlan {
                poll_interval: (!poll.is_zero()).then_some(poll),
                debounce,
                ..set
            })
            .collect();
        self.same_files(&sets);
        let known: Vec<&str> = raw.sets.keys().map(String::as_str).collect();
        // Each plan with the index of its listener in the file (some may have been refused).
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if let Some(plan) = self.listener(&key, l, &known) {
                listeners.push((i, plan));
            }
        }
        self.names_and_addresses(raw, &listeners, admin);
        let listeners = listeners.into_iter().map(|(_, plan)| plan).collect();
        let mut watches = Vec::new();
        for (i, w) in raw.watch.iter().enumerate() {
            let key = format!("watch[{i}]");
            if let Some(plan) = self.watch(&key, w, &known, &sets) {
                watches.push(plan);
            }
        }
        if raw.listeners.is_empty() && raw.watch.is_empty() {
            self.err(
                "",
                "nothing to run: add listeners (kind server or client) or watch entries",
            );
        }
        Config {
            admin,
            shutdown_grace,
            drain_delay,
            sets,
            listeners,
            watches,
        }
    }

    fn set(
        &mut self,
        name: &str,
        s: &RawSet,
        need: Needs,
        raw: &RawConfig,
        timing: &str,
    ) -> Option<SetPlan> {
        let key = format!("sets.{name}");
        if name.trim().is_empty() {
            self.err(&key, "a set needs a name");
        }
        let paths = match CredentialPaths::resolve(
            s.cert_dir.as_deref(),
            s.cert.as_deref(),
            s.key.as_deref(),
            s.ca.as_deref(),
            s.peer_ca.as_deref(),
        ) {
            Ok(p) => Some(p),
            Err(MissingPathError { role }) => {
                let option = match role {
                    crate::creds::paths::FileRole::Cert => "cert",
                    crate::creds::paths::FileRole::Key => "key",
                    crate::creds::paths::FileRole::Ca | crate::creds::paths::FileRole::PeerCa => {
                        "ca"
                    }
                };
                let message = format!(
                    "required when {} is not given (or give {} DIR for a mounted kubernetes.io/tls Secret)",
                    self.n("cert-dir"),
                    self.n("cert-dir")
                );
                self.err(format!("{key}.{option}"), message);
                None
            }
        };
        let needed = match (need.server, need.client) {
            (true, true) => Some(Usage::Both),
            (false, true) => Some(Usage::Client),
            (true, false) => Some(Usage::Server),
            (false, false) => None,
        };
        let usage = match s.usage.as_deref().map(str::trim) {
            None => needed.unwrap_or(Usage::Server),
            Some(u) => {
                let usage = match u {
                    "server" => Usage::Server,
                    "client" => Usage::Client,
                    "both" => Usage::Both,
                    other => {
                        self.err(
                            format!("{key}.usage"),
                            format!("expected server, client or both, got {other:?}"),
                        );
                        Usage::Server
                    }
                };
                let covers = |n: Usage| usage == Usage::Both || usage == n;
                if let Some(n) = needed.filter(|n| !covers(*n)) {
                    let users: Vec<String> = raw
                        .listeners
                        .iter()
                        .filter(|l| l.credentials == name)
                        .map(|l| format!("{:?} ({})", l.name, l.kind))
                        .collect();
                    self.err(
                        format!("{key}.usage"),
                        format!(
                            "{u:?} does not allow what its listeners need ({}): their leaf must allow {} ({})",
                            users.join(", "),
                            usage_name(n),
                            if n == Usage::Both { "use both" } else { "use both, or another set" }
                        ),
                    );
                }
                usage
            }
        };
        let policy = Policy {
            usage,
            expect_dns: values::non_empty(&s.expect_dns),
            expect_uri: values::non_empty(&s.expect_uri),
        };
        let fingerprint = format!("{}|{}|{timing}", json(s), usage_name(usage));
        Some(SetPlan {
            set: SetConfig {
                name: name.to_string(),
                paths: paths?,
                policy,
            },
            poll_interval: None,
            debounce: Duration::ZERO,
            fingerprint,
        })
    }

    /// Two sets that read the same files must agree on what those files must satisfy. Files are
    /// compared as files, not as written: `./tls` and `tls`, a symlink and its target.
    fn same_files(&mut self, sets: &[SetPlan]) {
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                let (pa, pb) = (&a.set.paths, &b.set.paths);
                let shared = [(&pa.cert, &pb.cert), (&pa.key, &pb.key)]
                    .into_iter()
                    .find(|(x, y)| same_file(x, y));
                let Some((file, _)) = shared else { continue };
                if !same_files_and_rules(&a.set, &b.set) {
                    self.err(
                        format!("sets.{}", b.set.name),
                        format!(
                            "reads the same files as set {:?} ({}) with other rules: use one set for both",
                            a.set.name,
                            file.display()
                        ),
                    );
                }
            }
        }
    }

    fn listener(&mut self, key: &str, l: &RawListener, known: &[&str]) -> Option<ListenerPlan> {
        let errors_before = self.errors.len();
        if l.name.trim().is_empty() {
            self.err(
                format!("{key}.name"),
                "a listener needs a name (for logs, metrics and /status)",
            );
        }
        if !known.contains(&l.credentials.as_str()) {
            let list: Vec<String> = known.iter().map(|k| format!("{k:?}")).collect();
            let message = if l.credentials.is_empty() {
                format!("missing; known sets: {}", list.join(", "))
            } else {
                format!(
                    "unknown set {:?}; known: {}",
                    l.credentials,
                    list.join(", ")
                )
            };
            self.err(format!("{key}.credentials"), message);
        }
        let server = match l.kind.as_str() {
            "server" => true,
            "client" => false,
            other => {
                self.err(
                    format!("{key}.kind"),
                    format!("expected server or client, got {other:?}"),
                );
                return None;
            }
        };
        let listen = match (&l.listen, server) {
            (Some(a), _) => parse(self, format!("{key}.listen"), values::socket_addr(a)),
            (None, true) => values::socket_addr(defaults::SERVER_LISTEN).ok(),
            (None, false) => {
                self.err(
                    format!("{key}.listen"),
                    "required: the loopback address the app connects to, e.g. 127.0.0.1:8080",
                );
                None
            }
        };
        let target = match l.target.as_deref() {
            Some(t) => parse(self, format!("{key}.target"), Target::parse(t)),
            None => {
                let what = if server {
                    "the plaintext app: host:port or unix:/path"
                } else {
                    "the mTLS server: host:port"
                };
                self.err(format!("{key}.target"), format!("required: {what}"));
                None
            }
        };
        let protocol = match l.protocol.as_deref().unwrap_or("tcp") {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            other => {
                self.err(
                    format!("{key}.protocol"),
                    format!("expected tcp or http, got {other:?}"),
                );
                Protocol::Tcp
            }
        };
        let min_tls = match l.min_tls.as_deref().unwrap_or(defaults::MIN_TLS) {
            "1.2" => MinTls::V12,
            "1.3" => MinTls::V13,
            other => {
                self.err(
                    format!("{key}.min-tls"),
                    format!("expected 1.2 or 1.3, got {other:?}"),
                );
                MinTls::V12
            }
        };
        let d = |c: &mut Self, option: &str, v: &Option<String>, default: &str| {
            c.duration(format!("{key}.{option}"), v.as_deref(), default)
        };
        let handshake_timeout = d(
            self,
            "handshake-timeout",
            &l.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
        );
        let connect_timeout = d(
            self,
            "connect-timeout",
            &l.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        );
        let idle_timeout = d(
            self,
            "idle-timeout",
            &l.idle_timeout,
            defaults::IDLE_TIMEOUT,
        );
        let max_connection_age = l
            .max_connection_age
            .as_ref()
            .map(|v| d(self, "max-connection-age", &Some(v.clone()), "0"))
            .filter(|a| !a.is_zero());
        let max_connections = l.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
        if max_connections == 0 {
            self.err(format!("{key}.max-connections"), "must be at least 1");
        }
        let max_upstream = l
            .max_upstream_connections
            .unwrap_or(defaults::MAX_UPSTREAM_CONNECTIONS);
        if max_upstream == 0 {
            self.err(
                format!("{key}.max-upstream-connections"),
                "must be at least 1",
            );
        }
        let role = if server {
            self.server_role(key, l)
        } else {
            self.client_role(key, l, listen, target.as_ref())
        };
        if self.errors.len() > errors_before {
            return None;
        }
        // The set is named, not fingerprinted: a replaced set's listeners keep running and
        // follow its new store.
        Some(ListenerPlan {
            set: l.credentials.clone(),
            cfg: ListenerConfig {
                name: l.name.clone(),
                listen: listen?,
                target: target?,
                protocol,
                min_tls,
                handshake_timeout,
                connect_timeout,
                idle_timeout,
                max_connections,
                max_upstream_connections: max_upstream,
                max_connection_age,
                ready_upstream: server && l.ready_upstream.unwrap_or(false),
            },
            role: role?,
            limits_chosen: l.max_connections.is_some()
                || (protocol == Protocol::Http && l.max_upstream_connections.is_some()),
            fingerprint: json(l),
        })
    }

    fn server_role(&mut self, key: &str, l: &RawListener) -> Option<Role> {
        for (option, set) in [
            ("unsafe-listen", l.unsafe_listen.is_some()),
            ("server-name", l.server_name.is_some()),
            ("verify-dns", !l.verify_dns.is_empty()),
            ("verify-uri", !l.verify_uri.is_empty()),
        ] {
            if set {
                self.err(format!("{key}.{option}"), "only for kind client");
            }
        }
        let allow = Allow {
            all: l.allow_all.unwrap_or(false),
            cn: values::non_empty(&l.allow_cn),
            ou: values::non_empty(&l.allow_ou),
            dns: values::non_empty(&l.allow_dns),
            uri: values::non_empty(&l.allow_uri),
        };
        if !allow.is_configured() {
            let message = format!(
                "a server listener needs an access rule: {}, or one or more of {}, {}, {}, {}",
                self.n("allow-all"),
                self.n("allow-cn"),
                self.n("allow-ou"),
                self.n("allow-dns"),
                self.n("allow-uri")
            );
            self.err(key, message);
            return None;
        }
        Some(Role::Server { allow })
    }

    fn client_role(
        &mut self,
        key: &str,
        l: &RawListener,
        listen: Option<SocketAddr>,
        target: Option<&Target>,
    ) -> Option<Role> {
        for (option, set) in [
            ("allow-all", l.allow_all.is_some()),
            ("allow-cn", !l.allow_cn.is_empty()),
            ("allow-ou", !l.allow_ou.is_empty()),
            ("allow-dns", !l.allow_dns.is_empty()),
            ("allow-uri", !l.allow_uri.is_empty()),
            ("ready-upstream", l.ready_upstream.is_some()),
        ] {
            if set {
                self.err(format!("{key}.{option}"), "only for kind server");
            }
        }
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !l.unsafe_listen.unwrap_or(false) {
                let message = format!(
                    "{addr}: a client listener listens in plaintext and connects as this pod's identity, so it must be loopback (127.0.0.1:PORT or [::1]:PORT); add {} if you really mean it",
                    self.n("unsafe-listen")
                );
                self.err(format!("{key}.listen"), message);
            }
        }
        let addr = match target? {
            Target::Tcp(a) => a.clone(),
            Target::Unix(_) => {
                self.err(
                    format!("{key}.target"),
                    "a client connects over TCP: expected host:port",
                );
                return None;
            }
        };
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "443"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = l.server_name.as_deref().unwrap_or(host);
        let server_name = match ServerName::try_from(name.to_string()) {
            Ok(n) => n,
            Err(e) => {
                match &l.server_name {
                    Some(_) => self.err(
                        format!("{key}.server-name"),
                        format!("{name:?}: {e} (expected a DNS name or an IP address)"),
                    ),
                    None => {
                        let message = format!(
                            "{addr:?}: its host {host:?} is not a valid server name ({e}); give {} NAME",
                            self.n("server-name")
                        );
                        self.err(format!("{key}.target"), message)
                    }
                }
                return None;
            }
        };
        let authority = match (port, &server_name) {
            ("443", ServerName::DnsName(_)) => name.to_string(),
            (_, ServerName::IpAddress(_)) if name.contains(':') => format!("[{name}]:{port}"),
            _ => format!("{name}:{port}"),
        };
        Some(Role::Client {
            remote: Remote {
                addr,
                server_name,
                authority,
            },
            pins: Pins {
                dns: values::non_empty(&l.verify_dns),
                uri: values::non_empty(&l.verify_uri),
            },
        })
    }

    /// Listener names are unique; no two sockets (listeners, the admin endpoint) share an address.
    /// `plans` are the listeners that passed their own checks, each with its index in the file.
    fn names_and_addresses(
        &mut self,
        raw: &RawConfig,
        plans: &[(usize, ListenerPlan)],
        admin: Listen,
    ) {
        for (i, l) in raw.listeners.iter().enumerate() {
            if let Some(first) = raw.listeners[..i].iter().position(|o| o.name == l.name) {
                self.err(
                    format!("listeners[{i}].name"),
                    format!("{:?} is also the name of listeners[{first}]", l.name),
                );
            }
        }
        for (n, (i, a)) in plans.iter().enumerate() {
            for (j, b) in &plans[n + 1..] {
                if overlap(a.cfg.listen, b.cfg.listen) {
                    self.err(
                        format!("listeners[{j}].listen"),
                        format!(
                            "{} is also the address of listener {:?} (listeners[{i}])",
                            b.cfg.listen, a.cfg.name
                        ),
                    );
                }
            }
            if let Listen::On(addr) = admin {
                if overlap(addr, a.cfg.listen) {
                    let message = format!(
                        "{} is also the address of the admin endpoint ({})",
                        a.cfg.listen,
                        self.n("admin-listen")
                    );
                    self.err(format!("listeners[{i}].listen"), message);
                }
            }
        }
    }

    fn watch(
        &mut self,
        key: &str,
        w: &RawWatch,
        known: &[&str],
        sets: &[SetPlan],
    ) -> Option<WatchPlan> {
        let errors_before = self.errors.len();
        if !known.contains(&w.credentials.as_str()) {
            let list: Vec<String> = known.iter().map(|k| format!("{k:?}")).collect();
            self.err(
                format!("{key}.credentials"),
                format!(
                    "unknown set {:?}; known: {}",
                    w.credentials,
                    list.join(", ")
                ),
            );
        }
        let mut actions = Vec::new();
        if let Some(dir) = &w.stage_dir {
            actions.push(Action::Stage(StageAction { dir: dir.clone() }));
        }
        let targets = [
            w.pid_file.is_some(),
            w.process_name.is_some(),
            w.pid.is_some(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            let message = format!(
                "give one signal target: {}, {} or {}",
                self.n("pid-file"),
                self.n("process-name"),
                self.n("pid")
            );
            self.err(key, message);
        }
        let target = match (&w.pid_file, &w.process_name, w.pid) {
            (Some(f), _, _) => Some(SignalTarget::PidFile(f.clone())),
            (_, Some(n), _) => match comm_name(n) {
                Ok(c) => Some(SignalTarget::ProcessName(c)),
                Err(e) => {
                    self.err(format!("{key}.process-name"), format!("{n:?}: {e}"));
                    None
                }
            },
            (_, _, Some(p)) => {
                parse(self, format!("{key}.pid"), values::pid(p)).map(SignalTarget::Pid)
            }
            _ => None,
        };
        match (target, &w.signal) {
            (Some(target), name) => {
                if let Some(signal) = parse(
                    self,
                    format!("{key}.signal"),
                    parse_signal(name.as_deref().unwrap_or(defaults::SIGNAL)),
                ) {
                    actions.push(Action::Signal(SignalAction {
                        signal,
                        target,
                        proc_root: "/proc".into(),
                    }));
                }
            }
            (None, Some(_)) if !targets.contains(&true) => {
                let message = format!(
                    "needs a target: {} FILE, {} NAME or {} N",
                    self.n("pid-file"),
                    self.n("process-name"),
                    self.n("pid")
                );
                self.err(format!("{key}.signal"), message);
            }
            _ => {}
        }
        if let Some((program, rest)) = w.exec.split_first() {
            actions.push(Action::Exec(ExecAction {
                program: program.into(),
                args: rest.iter().map(Into::into).collect(),
            }));
        }
        match (&w.webhook, &w.webhook_ca) {
            (Some(url), ca) => match WebhookAction::new(url, ca.as_deref()) {
                Ok(a) => actions.push(Action::Webhook(a)),
                Err(e) => {
                    let option = match e.input() {
                        WebhookInput::Ca => "webhook-ca",
                        WebhookInput::Url => "webhook",
                    };
                    let hint = match &e {
                        crate::actions::webhook::WebhookSetupError::NoSystemRoots { .. } => {
                            format!(" with {} FILE", self.n("webhook-ca"))
                        }
                        _ => String::new(),
                    };
                    self.err(format!("{key}.{option}"), format!("{e}{hint}"));
                }
            },
            (None, Some(_)) => {
                let message = format!("needs an https:// {}", self.n("webhook"));
                self.err(format!("{key}.webhook-ca"), message);
            }
            (None, None) => {}
        }
        if let Some(addr) = &w.verify_addr {
            if actions.is_empty() {
                let message = format!(
                    "checks the result of another action: add {}, {}, {} or {}",
                    self.n("signal"),
                    self.n("stage-dir"),
                    self.n("webhook"),
                    self.n("exec")
                );
                self.err(format!("{key}.verify-addr"), message);
            } else if !addr.contains(':') {
                self.err(
                    format!("{key}.verify-addr"),
                    format!("expected HOST:PORT, got {addr:?}"),
                );
            } else {
                let timeout = self.duration(
                    format!("{key}.verify-timeout"),
                    w.verify_timeout.as_deref(),
                    defaults::VERIFY_TIMEOUT,
                );
                actions.push(Action::Verify(VerifyAction {
                    addr: addr.clone(),
                    timeout,
                }));
            }
        }
        if actions.is_empty() && self.errors.len() == errors_before {
            let message = format!(
                "every watch entry needs an action: {} DIR, {} NAME with {}/{}/{}, {} URL, or {}",
                self.n("stage-dir"),
                self.n("signal"),
                self.n("pid-file"),
                self.n("process-name"),
                self.n("pid"),
                self.n("webhook"),
                self.n("exec")
            );
            self.err(key, message);
        }
        let min_interval = self.duration(
            format!("{key}.min-interval"),
            w.min_interval.as_deref(),
            defaults::MIN_INTERVAL,
        );
        if self.errors.len() > errors_before {
            return None;
        }
        let set_fp = sets
            .iter()
            .find(|s| s.set.name == w.credentials)
            .map_or("", |s| s.fingerprint.as_str());
        Some(WatchPlan {
            set: w.credentials.clone(),
            actions,
            pacing: Pacing {
                act_on_start: w.act_on_start.unwrap_or(false),
                min_interval,
            },
            fingerprint: format!("{}|{set_fp}", json(w)),
        })
    }
}

/// The value of a parse, or None with the error recorded at `key`.
fn parse<T>(c: &mut Checker<'_>, key: String, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| c.err(key, e)).ok()
}

/// Whether sets `a` and `b` read the very same files and hold them to the same rules.
fn same_files_and_rules(a: &SetConfig, b: &SetConfig) -> bool {
    let (pa, pb) = (&a.paths, &b.paths);
    let peer_ca = match (&pa.peer_ca, &pb.peer_ca) {
        (Some(x), Some(y)) => same_file(x, y),
        (None, None) => true,
        _ => false,
    };
    a.policy.usage == b.policy.usage
        && a.policy.expect_dns == b.policy.expect_dns
        && a.policy.expect_uri == b.policy.expect_uri
        && same_file(&pa.cert, &pb.cert)
        && same_file(&pa.key, &pb.key)
        && same_file(&pa.ca, &pb.ca)
        && peer_ca
}

/// Whether paths `a` and `b` name one file: the same once made absolute and normalised as
/// written, or the same once symlinks are resolved (as far as the files exist).
fn same_file(a: &Path, b: &Path) -> bool {
    if lexical(a) == lexical(b) {
        return true;
    }
    matches!((resolved(a), resolved(b)), (Some(x), Some(y)) if x == y)
}

/// `p` with every symlink resolved; for a file not there (yet), its resolved directory and its
/// name. None if neither exists.
fn resolved(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok().or_else(|| {
        let dir = std::fs::canonicalize(p.parent()?).ok()?;
        Some(dir.join(p.file_name()?))
    })
}

/// `p` made absolute against the current directory, with `.` dropped and `..` taken off the
/// path as written (without looking at the file system).
fn lexical(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// Two listening addresses that cannot both be bound (port 0 picks a free port: never).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn usage_name(u: Usage) -> &'static str {
    match u {
        Usage::Server => "server",
        Usage::Client => "client",
        Usage::Both => "both",
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_compared_as_files() {
        let cwd = std::env::current_dir().expect("current dir");
        assert_eq!(
            lexical(Path::new("./tls/./tls.crt")),
            cwd.join("tls/tls.crt")
        );
        assert_eq!(
            lexical(Path::new("/etc/tls/../x/tls.key")),
            Path::new("/etc/x/tls.key")
        );
        assert_eq!(lexical(Path::new("/../etc")), Path::new("/etc"));
        assert!(same_file(
            Path::new("./tls/tls.crt"),
            Path::new("tls/tls.crt")
        ));
        assert!(!same_file(
            Path::new("/etc/a/tls.crt"),
            Path::new("/etc/b/tls.crt")
        ));
    }

    #[test]
    fn a_symlink_and_its_target_are_one_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).expect("symlink");
        std::fs::write(real.join("tls.crt"), "").expect("write");
        // A file that exists, and one that does not (yet): its directory is resolved.
        for name in ["tls.crt", "tls.key"] {
            let link = tmp.path().join("link").join(name);
            assert!(same_file(&real.join(name), &link), "{name}");
        }
        assert!(!same_file(&real.join("tls.crt"), &real.join("tls.key")));
    }
}
