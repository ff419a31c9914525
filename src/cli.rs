//! Command-line interface (clap derive). Every flag also reads `MTLS_SIDECAR_<FLAG_IN_CAPS>`; a
//! flag on the command line wins. This module only describes flags and resolves them into the
//! inputs of later stages; it does no I/O.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admin::Listen;
use crate::creds::paths::{CredentialPaths, FileRole, MissingPathError};
use crate::creds::validate::{Policy, Usage};
use crate::proxy::Protocol;
use crate::tls::MinTls;

#[derive(Debug, Parser)]
#[command(
    name = "mtls-sidecar",
    version,
    about = "Validate and hot-reload cert-manager mTLS credentials in a Kubernetes pod",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log line format.
    #[arg(long, global = true, env = "MTLS_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (e.g. `info`, `debug`, `mtls_sidecar=debug`); defaults to RUST_LOG, then `info`.
    #[arg(long, global = true, env = "MTLS_SIDECAR_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a cert/key/CA triple once, print a report, exit 0 (valid) or 1 (invalid).
    Check(CheckArgs),
    /// Terminate mTLS in front of a plaintext app: verify client certificates, forward to --target.
    Server(Box<ServerArgs>),
    /// Originate mTLS for a plaintext app: listen on loopback, connect to --target with our client certificate.
    Client(Box<ClientArgs>),
    /// Watch the credentials; on each validated change run the action (no proxy).
    Watch(Box<WatchArgs>),
    /// Try it: a throwaway PKI, a plaintext app, `server --protocol http` in front, rotation every 30 s.
    Demo(DemoArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Where one credential set lives and what its leaf must carry (SPEC "Credentials").
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// A mounted kubernetes.io/tls Secret: DIR/tls.crt, DIR/tls.key, DIR/ca.crt.
    #[arg(long, env = "MTLS_SIDECAR_CERT_DIR", value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Certificate file: leaf first, then intermediates (overrides DIR/tls.crt).
    #[arg(long, env = "MTLS_SIDECAR_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key file (overrides DIR/tls.key).
    #[arg(long, env = "MTLS_SIDECAR_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// CA bundle the leaf must chain to, e.g. from a trust-manager ConfigMap (overrides DIR/ca.crt).
    #[arg(long, env = "MTLS_SIDECAR_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// CA bundle peers are verified against, when peers come from another CA (default: --ca).
    #[arg(long, env = "MTLS_SIDECAR_PEER_CA", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
    /// The leaf must carry this DNS SAN (repeatable; the env var takes a comma-separated list).
    #[arg(
        long,
        env = "MTLS_SIDECAR_EXPECT_DNS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub expect_dns: Vec<String>,
    /// The leaf must carry this URI SAN, e.g. a SPIFFE ID (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_EXPECT_URI",
        value_name = "URI",
        value_delimiter = ','
    )]
    pub expect_uri: Vec<String>,
}

impl CredentialArgs {
    /// The files of the set; Err names the flag that is missing.
    pub fn paths(&self) -> Result<CredentialPaths, String> {
        CredentialPaths::resolve(
            self.cert_dir.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
            self.ca.as_deref(),
            self.peer_ca.as_deref(),
        )
        .map_err(|MissingPathError { role }| {
            format!(
                "{} is required when --cert-dir is not given (or pass --cert-dir DIR for a mounted kubernetes.io/tls Secret)",
                flag_of(role)
            )
        })
    }

    pub fn policy(&self, usage: Usage) -> Policy {
        Policy {
            usage,
            expect_dns: non_empty(&self.expect_dns),
            expect_uri: non_empty(&self.expect_uri),
        }
    }
}

/// The flag that sets the file of `role`.
pub const fn flag_of(role: FileRole) -> &'static str {
    match role {
        FileRole::Cert => "--cert",
        FileRole::Key => "--key",
        FileRole::Ca => "--ca",
        FileRole::PeerCa => "--peer-ca",
    }
}

/// Drops empty items: `MTLS_SIDECAR_EXPECT_DNS=""` or a trailing comma (common in templated
/// manifests) must not become a requirement for an empty name.
pub fn non_empty(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub creds: CredentialArgs,
    /// Which role the leaf must be fit for (its extended key usage).
    #[arg(long, env = "MTLS_SIDECAR_USAGE", value_enum, default_value_t = UsageArg::Server)]
    pub usage: UsageArg,
    /// Report format; `json` is a stable shape documented in the README.
    #[arg(long, env = "MTLS_SIDECAR_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// How changes are noticed (SPEC "Credentials").
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Re-hash the files this often even without file events; `0` turns polling off.
    #[arg(long, env = "MTLS_SIDECAR_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub poll_interval: Duration,
    /// Quiet period after file events before reloading (a rename onto ..data reloads at once).
    #[arg(long, env = "MTLS_SIDECAR_DEBOUNCE", value_name = "DURATION", value_parser = parse_duration, default_value = "100ms")]
    pub debounce: Duration,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Address of /healthz, /readyz, /status and /metrics, or `off`.
    #[arg(long, env = "MTLS_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse_listen, default_value = "0.0.0.0:9901")]
    pub admin_listen: Listen,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub creds: CredentialArgs,
    /// Which role the leaf must be fit for (its extended key usage).
    #[arg(long, env = "MTLS_SIDECAR_USAGE", value_enum, default_value_t = UsageArg::Server)]
    pub usage: UsageArg,
    #[command(flatten)]
    pub reload: ReloadArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Write each validated triple into DIR with kubelet's atomic ..data swap (tls.crt, tls.key
    /// 0640, ca.crt) for the app to read, before any signal or program runs.
    #[arg(long, env = "MTLS_SIDECAR_STAGE_DIR", value_name = "DIR")]
    pub stage_dir: Option<PathBuf>,
    /// Signal to send to the target after each validated change (HUP, USR1, USR2, ...; default HUP).
    #[arg(long, env = "MTLS_SIDECAR_SIGNAL", value_name = "NAME")]
    pub signal: Option<String>,
    /// Signal the PID in this file (e.g. /var/run/nginx.pid on a shared volume).
    #[arg(
        long,
        env = "MTLS_SIDECAR_PID_FILE",
        value_name = "FILE",
        group = "signal_target"
    )]
    pub pid_file: Option<PathBuf>,
    /// Signal processes with this name (/proc/*/comm: the first 15 bytes of the executable's file
    /// name) whose parent has another name: nginx's master, not its workers. Needs
    /// `shareProcessNamespace: true`.
    #[arg(
        long,
        env = "MTLS_SIDECAR_PROCESS_NAME",
        value_name = "NAME",
        group = "signal_target"
    )]
    pub process_name: Option<String>,
    /// Signal this PID.
    #[arg(
        long,
        env = "MTLS_SIDECAR_PID",
        value_name = "N",
        value_parser = parse_pid,
        group = "signal_target"
    )]
    pub pid: Option<i32>,
    /// POST the new credentials' facts as JSON to this http:// or https:// URL after each
    /// validated change.
    #[arg(long, env = "MTLS_SIDECAR_WEBHOOK", value_name = "URL")]
    pub webhook: Option<String>,
    /// PEM CA bundle that an https:// --webhook must chain to [default: the system trust store].
    #[arg(long, env = "MTLS_SIDECAR_WEBHOOK_CA", value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// After the other actions, handshake with the app here until it serves the new certificate.
    #[arg(long, env = "MTLS_SIDECAR_VERIFY_ADDR", value_name = "HOST:PORT")]
    pub verify_addr: Option<String>,
    /// How long --verify-addr waits for the app to serve the new certificate.
    #[arg(long, env = "MTLS_SIDECAR_VERIFY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub verify_timeout: Duration,
    /// Act on the first valid bundle at start-up too (by default the app is assumed to have
    /// started with those files).
    #[arg(long, env = "MTLS_SIDECAR_ACT_ON_START", value_parser = BoolishValueParser::new())]
    pub act_on_start: bool,
    /// At most one action per interval; changes inside it coalesce into one action for the newest.
    #[arg(long, env = "MTLS_SIDECAR_MIN_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub min_interval: Duration,
    /// Program to run after each validated change (no shell), with MTLS_SIDECAR_SET,
    /// MTLS_SIDECAR_GENERATION and MTLS_SIDECAR_SHA256 in its environment.
    #[arg(last = true, value_name = "PROGRAM [ARGS]")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub creds: CredentialArgs,
    #[command(flatten)]
    pub reload: ReloadArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// TLS address to listen on.
    #[arg(
        long,
        env = "MTLS_SIDECAR_LISTEN",
        value_name = "ADDR",
        value_parser = parse_socket_addr,
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// The plaintext app: `host:port` or `unix:/path`.
    #[arg(long, env = "MTLS_SIDECAR_TARGET", value_name = "ADDR")]
    pub target: String,
    /// `tcp` copies bytes; `http` proxies requests and adds client-identity headers.
    #[arg(long, env = "MTLS_SIDECAR_PROTOCOL", value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,
    /// Allow every client with a certificate that chains to the CA.
    #[arg(long, env = "MTLS_SIDECAR_ALLOW_ALL", value_parser = BoolishValueParser::new())]
    pub allow_all: bool,
    /// Allow clients with this subject CN (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_ALLOW_CN",
        value_name = "CN",
        value_delimiter = ','
    )]
    pub allow_cn: Vec<String>,
    /// Allow clients with this subject OU (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_ALLOW_OU",
        value_name = "OU",
        value_delimiter = ','
    )]
    pub allow_ou: Vec<String>,
    /// Allow clients with this DNS SAN (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_ALLOW_DNS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub allow_dns: Vec<String>,
    /// Allow clients with this URI SAN; a trailing `/*` matches one segment, `/**` any suffix.
    #[arg(
        long,
        env = "MTLS_SIDECAR_ALLOW_URI",
        value_name = "URI",
        value_delimiter = ','
    )]
    pub allow_uri: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Timeouts and limits of a listener (`server` and `client`).
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Lowest TLS version accepted (server) or offered (client).
    #[arg(long, env = "MTLS_SIDECAR_MIN_TLS", value_enum, default_value_t = MinTlsArg::V12)]
    pub min_tls: MinTlsArg,
    /// Longest time a TLS handshake may take.
    #[arg(long, env = "MTLS_SIDECAR_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Longest time to connect to --target.
    #[arg(long, env = "MTLS_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed; also the longest wait for an upstream response (then 504).
    #[arg(long, env = "MTLS_SIDECAR_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub idle_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog.
    #[arg(
        long,
        env = "MTLS_SIDECAR_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    /// http mode: upstream connections open at most; a request that finds them all busy waits
    /// up to --connect-timeout for one, then gets 503.
    #[arg(
        long,
        env = "MTLS_SIDECAR_MAX_UPSTREAM_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_upstream_connections: usize,
    /// Close connections gracefully once this old, so clients re-handshake with current credentials (default: off).
    #[arg(long, env = "MTLS_SIDECAR_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, env = "MTLS_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration, default_value = "25s")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub creds: CredentialArgs,
    #[command(flatten)]
    pub reload: ReloadArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Plaintext address the app connects to; must be loopback unless --unsafe-listen.
    #[arg(long, env = "MTLS_SIDECAR_LISTEN", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub listen: SocketAddr,
    /// Allow a --listen address that is not loopback (anyone who reaches it talks as us).
    #[arg(long, env = "MTLS_SIDECAR_UNSAFE_LISTEN", value_parser = BoolishValueParser::new())]
    pub unsafe_listen: bool,
    /// The mTLS server: `host:port`.
    #[arg(long, env = "MTLS_SIDECAR_TARGET", value_name = "HOST:PORT")]
    pub target: String,
    /// SNI and the name the server certificate must be valid for [default: the --target host].
    #[arg(long, env = "MTLS_SIDECAR_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// The server certificate must also carry this DNS SAN (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_VERIFY_DNS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub verify_dns: Vec<String>,
    /// The server certificate must also carry this URI SAN (repeatable; env: comma-separated).
    #[arg(
        long,
        env = "MTLS_SIDECAR_VERIFY_URI",
        value_name = "URI",
        value_delimiter = ','
    )]
    pub verify_uri: Vec<String>,
    /// `tcp` carries bytes; `http` forwards requests over a pool of kept-alive mTLS connections.
    #[arg(long, env = "MTLS_SIDECAR_PROTOCOL", value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `--usage`: which TLS role the leaf must be fit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsageArg {
    Server,
    Client,
    Both,
}

impl From<UsageArg> for Usage {
    fn from(u: UsageArg) -> Self {
        match u {
            UsageArg::Server => Usage::Server,
            UsageArg::Client => Usage::Client,
            UsageArg::Both => Usage::Both,
        }
    }
}

/// `--min-tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MinTlsArg {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

impl From<MinTlsArg> for MinTls {
    fn from(m: MinTlsArg) -> Self {
        match m {
            MinTlsArg::V12 => MinTls::V12,
            MinTlsArg::V13 => MinTls::V13,
        }
    }
}

/// `--protocol`: what a listener carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Http,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Http => Protocol::Http,
        }
    }
}

/// humantime (`500ms`, `30s`, `5m`), or `0` for "off".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (use a duration like 100ms, 30s, 5m, or 0)"))
}

/// `IP:PORT`, with a hint for the usual mistakes (a bare port, a host name).
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        let hint = if s.trim().parse::<u16>().is_ok() {
            format!(" (a port alone is not enough: 0.0.0.0:{0} for every IPv4 address, [::]:{0} for every address, 127.0.0.1:{0} for loopback)", s.trim())
        } else {
            String::new()
        };
        format!("expected IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443, got {s:?}{hint}")
    })
}

/// A PID that may be signalled: never 0 (the whole process group) or 1 (the pod's pause
/// process, or init).
fn parse_pid(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        Ok(p) => Err(format!(
            "PID {p} is never signalled (0 is the whole process group, 1 the pod's pause process or init): give the app's PID, or use --pid-file or --process-name"
        )),
        Err(_) => Err(format!("expected a process ID (a number above 1), got {s:?}")),
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::On)
        .map_err(|_| format!("expected IP:PORT (e.g. 0.0.0.0:9901, [::]:9901) or `off`, got {s:?}"))
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the demo PKI (default: a new directory under the system temp dir).
    #[arg(long, env = "MTLS_SIDECAR_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// TLS address of the demo server.
    #[arg(
        long,
        env = "MTLS_SIDECAR_LISTEN",
        value_name = "ADDR",
        value_parser = parse_socket_addr,
        default_value = "127.0.0.1:8443"
    )]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz, /status and /metrics, or `off`.
    #[arg(long, env = "MTLS_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse_listen, default_value = "127.0.0.1:9901")]
    pub admin_listen: Listen,
    /// How often the server certificate is renewed; `0` turns rotation off.
    #[arg(long, env = "MTLS_SIDECAR_ROTATE_EVERY", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub rotate_every: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_listen_addresses() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(
            parse_duration("2160h"),
            Ok(Duration::from_secs(2160 * 3600))
        );
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
        assert_eq!(parse_listen("off"), Ok(Listen::Off));
        assert_eq!(
            parse_listen("127.0.0.1:0"),
            Ok(Listen::On("127.0.0.1:0".parse().unwrap()))
        );
        assert!(parse_listen("localhost").is_err());
        assert!(parse_socket_addr("8443")
            .unwrap_err()
            .contains("0.0.0.0:8443"));
        assert_eq!(
            parse_socket_addr("[::]:8443"),
            Ok("[::]:8443".parse().unwrap())
        );
        assert!(parse_pid("1").unwrap_err().contains("pause process"));
        assert!(parse_pid("0").is_err());
        assert_eq!(parse_pid("42"), Ok(42));
    }
}
