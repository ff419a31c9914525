//! The raw configuration: what a YAML file (`run --config`) or the flags of `server`, `client`
//! and `watch` say, before any check. Every option has the name of its flag (kebab-case) and is
//! optional here: defaults are applied once, by [`super::check`]. Values that need parsing
//! (durations, addresses) stay strings, so that the check can say where a bad one is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// A whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Address of /healthz, /readyz, /status and /metrics, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Re-hash the credential files this often even without file events; `0` turns polling off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Quiet period after file events before reloading (a rename onto ..data reloads at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
    /// On SIGTERM, how long open connections may take to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// After the first GET or POST /drain, how long /readyz answers 503 before /drain answers
    /// (the app container's preStop hook waits for it); `0` answers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_delay: Option<String>,
    /// Credential sets by name.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub sets: BTreeMap<String, RawSet>,
    /// `server` and `client` listeners.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub listeners: Vec<RawListener>,
    /// What to do after each validated change of a set (what `watch` does).
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub watch: Vec<RawWatch>,
}

/// A key with no value means none, as leaving the key out does: `watch:` alone (its entries
/// commented out, say) is no watch entries, not a type error.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One credential set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSet {
    /// A mounted kubernetes.io/tls Secret: DIR/tls.crt, DIR/tls.key, DIR/ca.crt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_dir: Option<PathBuf>,
    /// Certificate file: leaf first, then intermediates (overrides DIR/tls.crt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key file (overrides DIR/tls.key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA bundle the leaf must chain to (overrides DIR/ca.crt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// CA bundle peers are verified against, when peers come from another CA (default: ca).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ca: Option<PathBuf>,
    /// The leaf must carry these DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_dns: Vec<String>,
    /// The leaf must carry these URI SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_uri: Vec<String>,
    /// server, client or both [default: what the listeners using the set need; server if none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
}

/// One listener: `kind: server` terminates mTLS, `kind: client` originates it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawListener {
    /// Its name in logs, metrics and /status.
    #[serde(default)]
    pub name: String,
    /// server or client.
    #[serde(default)]
    pub kind: String,
    /// The set whose credentials it uses.
    #[serde(default)]
    pub credentials: String,
    /// Address to listen on [server default: [::]:8443, IPv6 and IPv4; client: required, loopback].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// server: the plaintext app (host:port or unix:/path); client: the mTLS server (host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// tcp or http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Lowest TLS version accepted (server) or offered (client): 1.2 or 1.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tls: Option<String>,
    /// Longest time a TLS handshake may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// Longest time to connect to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// A connection with no traffic for this long is closed; also the longest wait for an
    /// upstream response (then 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Open connections at most; more wait in the listen backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// http: upstream connections open at most; a request that finds them all busy waits up
    /// to connect-timeout for one, then gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upstream_connections: Option<usize>,
    /// Close connections gracefully once this old, so clients re-handshake with current
    /// credentials (`0`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<String>,
    /// server: allow every client with a certificate that chains to the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_all: Option<bool>,
    /// server: allow clients with one of these subject CNs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cn: Vec<String>,
    /// server: allow clients with one of these subject OUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ou: Vec<String>,
    /// server: allow clients with one of these DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_dns: Vec<String>,
    /// server: allow clients with one of these URI SANs; a trailing `/*` matches one segment,
    /// `/**` any suffix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_uri: Vec<String>,
    /// server: /readyz also requires that a connection to the target succeeds (tried at most
    /// once a second, for up to min(connect-timeout, 1s)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_upstream: Option<bool>,
    /// client: allow a listen address that is not loopback (anyone who reaches it talks as us).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_listen: Option<bool>,
    /// client: SNI and the name the server certificate must be valid for [default: the target
    /// host].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// client: the server certificate must also carry these DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_dns: Vec<String>,
    /// client: the server certificate must also carry these URI SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_uri: Vec<String>,
}

/// The actions run after each validated change of one set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWatch {
    /// The set whose changes it acts on.
    #[serde(default)]
    pub credentials: String,
    /// Write each validated triple into this directory with kubelet's atomic `..data` swap
    /// (tls.crt, tls.key 0640, ca.crt) for the app to read, before any signal or program runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_dir: Option<PathBuf>,
    /// Signal sent to the target (pid-file, process-name or pid) after each validated change:
    /// HUP, USR1, USR2, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Signal the PID in this file (e.g. /var/run/nginx.pid on a shared volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Signal processes with this name (/proc/*/comm) whose parent has another name: nginx's
    /// master, not its workers. Needs `shareProcessNamespace: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    /// Signal this PID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// A program and its arguments (no shell): what `watch -- PROGRAM [ARGS..]` runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// POST the new credentials' facts as JSON to this http:// or https:// URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// CA bundle an https:// webhook must chain to [default: the system trust store].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca: Option<PathBuf>,
    /// After the other actions, handshake with the app here (host:port) until it serves the
    /// new certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_addr: Option<String>,
    /// How long verify-addr waits for the app to serve the new certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_timeout: Option<String>,
    /// Act on the first valid bundle at start-up too (by default the app is assumed to have
    /// started with those files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_on_start: Option<bool>,
    /// At most one run of the actions per interval; changes inside it coalesce into one run for
    /// the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
}
