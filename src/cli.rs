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
use crate::config::raw::{RawConfig, RawListener, RawSet, RawWatch};
use crate::config::{defaults, values};
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
    /// Several credential sets, listeners and watch actions in one process, from a YAML file.
    Run(RunArgs),
    /// Turn a running sidecar's readiness off (GET /drain) and wait until its drain-delay is over: for the app's preStop hook.
    Drain(DrainArgs),
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

/// Where one credential set lives and what its leaf must carry (the contract: "Credentials").
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
            expect_dns: values::non_empty(&self.expect_dns),
            expect_uri: values::non_empty(&self.expect_uri),
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

/// How changes are noticed (the contract: "Credentials").
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Re-hash the files this often even without file events; `0` turns polling off.
    #[arg(long, env = "MTLS_SIDECAR_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::POLL_INTERVAL)]
    pub poll_interval: Duration,
    /// Quiet period after file events before reloading (a rename onto ..data reloads at once).
    #[arg(long, env = "MTLS_SIDECAR_DEBOUNCE", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::DEBOUNCE)]
    pub debounce: Duration,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Address of /healthz, /readyz, /status and /metrics, or `off`.
    #[arg(long, env = "MTLS_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse_listen, default_value = defaults::ADMIN_LISTEN)]
    pub admin_listen: Listen,
    /// After the first GET or POST /drain on the admin endpoint, how long /readyz answers 503
    /// before /drain answers (the app's preStop hook waits for it); `0` answers at once.
    #[arg(long, env = "MTLS_SIDECAR_DRAIN_DELAY", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::DRAIN_DELAY)]
    pub drain_delay: Duration,
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
    #[arg(long, env = "MTLS_SIDECAR_VERIFY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::VERIFY_TIMEOUT)]
    pub verify_timeout: Duration,
    /// Act on the first valid bundle at start-up too (by default the app is assumed to have
    /// started with those files).
    #[arg(long, env = "MTLS_SIDECAR_ACT_ON_START", value_parser = BoolishValueParser::new())]
    pub act_on_start: bool,
    /// At most one action per interval; changes inside it coalesce into one action for the newest.
    #[arg(long, env = "MTLS_SIDECAR_MIN_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::MIN_INTERVAL)]
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
        default_value = defaults::SERVER_LISTEN
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
    /// /readyz also requires that a connection to --target succeeds (tried at most once a
    /// second, for up to min(--connect-timeout, 1s)).
    #[arg(long, env = "MTLS_SIDECAR_READY_UPSTREAM", value_parser = BoolishValueParser::new())]
    pub ready_upstream: bool,
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
    #[arg(long, env = "MTLS_SIDECAR_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::HANDSHAKE_TIMEOUT)]
    pub handshake_timeout: Duration,
    /// Longest time to connect to --target.
    #[arg(long, env = "MTLS_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::CONNECT_TIMEOUT)]
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed; also the longest wait for an upstream response (then 504).
    #[arg(long, env = "MTLS_SIDECAR_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::IDLE_TIMEOUT)]
    pub idle_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog.
    #[arg(
        long,
        env = "MTLS_SIDECAR_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = defaults::MAX_CONNECTIONS
    )]
    pub max_connections: usize,
    /// http mode: upstream connections open at most; a request that finds them all busy waits
    /// up to --connect-timeout for one, then gets 503.
    #[arg(
        long,
        env = "MTLS_SIDECAR_MAX_UPSTREAM_CONNECTIONS",
        value_name = "N",
        default_value_t = defaults::MAX_UPSTREAM_CONNECTIONS
    )]
    pub max_upstream_connections: usize,
    /// Close connections gracefully once this old, so clients re-handshake with current credentials (default: off).
    #[arg(long, env = "MTLS_SIDECAR_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, env = "MTLS_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration, default_value = defaults::SHUTDOWN_GRACE)]
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    values::duration(s)
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    values::socket_addr(s)
}

fn parse_pid(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) => values::pid(n),
        Err(_) => Err(format!(
            "expected a process ID (a number above 1), got {s:?}"
        )),
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    values::listen(s)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The YAML configuration: sets, listeners and watch entries (see the README's config
    /// reference). Read again on SIGHUP and when its directory changes.
    #[arg(long, env = "MTLS_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Check the file and exit: 0 valid, 2 not.
    #[arg(long)]
    pub check: bool,
    /// With --check: check every set's credentials too (exit 1 if any is invalid).
    #[arg(long, requires = "check")]
    pub check_credentials: bool,
    /// Print the configuration as understood, every default filled in, and exit.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The sidecar's admin endpoint (its --admin-listen; in a pod, loopback reaches it).
    #[arg(long, env = "MTLS_SIDECAR_ADMIN", value_name = "ADDR", value_parser = parse_socket_addr, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Give up (exit 1) when the answer takes longer than this; keep it above the sidecar's --drain-delay.
    #[arg(long, env = "MTLS_SIDECAR_TIMEOUT", value_name = "DURATION", value_parser = parse_timeout, default_value = "60s")]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match values::duration(s)? {
        d if d.is_zero() => Err("expected a duration above 0, like 30s or 2m".into()),
        d => Ok(d),
    }
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

// === Flags -> raw configuration ===
//
// `server`, `client` and `watch` are one-set configurations: their flags become the raw
// configuration a file would give, and go through the same check.

/// Which connection limits the user set (command line or environment) rather than defaulted.
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitsChosen {
    pub connections: bool,
    pub upstream: bool,
}

fn dur(d: Duration) -> Option<String> {
    Some(humantime::format_duration(d).to_string())
}

impl CredentialArgs {
    fn raw(&self, usage: Option<UsageArg>) -> RawSet {
        RawSet {
            cert_dir: self.cert_dir.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            peer_ca: self.peer_ca.clone(),
            expect_dns: self.expect_dns.clone(),
            expect_uri: self.expect_uri.clone(),
            usage: usage.map(|u| {
                match u {
                    UsageArg::Server => "server",
                    UsageArg::Client => "client",
                    UsageArg::Both => "both",
                }
                .to_string()
            }),
        }
    }
}

/// The global part: the one set, admin endpoint and reload timing.
fn base(set: RawSet, reload: &ReloadArgs, admin: &AdminArgs) -> RawConfig {
    RawConfig {
        admin_listen: Some(match admin.admin_listen {
            Listen::On(a) => a.to_string(),
            Listen::Off => "off".into(),
        }),
        drain_delay: dur(admin.drain_delay),
        poll_interval: dur(reload.poll_interval),
        debounce: dur(reload.debounce),
        sets: [(defaults::SET.to_string(), set)].into(),
        ..RawConfig::default()
    }
}

impl ConnArgs {
    fn raw(
        &self,
        name: &str,
        kind: &str,
        protocol: ProtocolArg,
        chosen: LimitsChosen,
    ) -> RawListener {
        RawListener {
            name: name.into(),
            kind: kind.into(),
            credentials: defaults::SET.into(),
            protocol: Some(
                match protocol {
                    ProtocolArg::Tcp => "tcp",
                    ProtocolArg::Http => "http",
                }
                .into(),
            ),
            min_tls: Some(
                match self.min_tls {
                    MinTlsArg::V12 => "1.2",
                    MinTlsArg::V13 => "1.3",
                }
                .into(),
            ),
            handshake_timeout: dur(self.handshake_timeout),
            connect_timeout: dur(self.connect_timeout),
            idle_timeout: dur(self.idle_timeout),
            max_connections: chosen.connections.then_some(self.max_connections),
            max_upstream_connections: chosen.upstream.then_some(self.max_upstream_connections),
            max_connection_age: self.max_connection_age.and_then(dur),
            ..RawListener::default()
        }
    }
}

impl ServerArgs {
    pub fn raw(&self, chosen: LimitsChosen) -> RawConfig {
        let mut listener = self.conn.raw("server", "server", self.protocol, chosen);
        listener.listen = Some(self.listen.to_string());
        listener.target = Some(self.target.clone());
        listener.allow_all = self.allow_all.then_some(true);
        listener.allow_cn = self.allow_cn.clone();
        listener.allow_ou = self.allow_ou.clone();
        listener.allow_dns = self.allow_dns.clone();
        listener.allow_uri = self.allow_uri.clone();
        listener.ready_upstream = self.ready_upstream.then_some(true);
        RawConfig {
            shutdown_grace: dur(self.conn.shutdown_grace),
            listeners: vec![listener],
            ..base(self.creds.raw(None), &self.reload, &self.admin)
        }
    }
}

impl ClientArgs {
    pub fn raw(&self, chosen: LimitsChosen) -> RawConfig {
        let mut listener = self.conn.raw("client", "client", self.protocol, chosen);
        listener.listen = Some(self.listen.to_string());
        listener.target = Some(self.target.clone());
        listener.unsafe_listen = self.unsafe_listen.then_some(true);
        listener.server_name = self.server_name.clone();
        listener.verify_dns = self.verify_dns.clone();
        listener.verify_uri = self.verify_uri.clone();
        RawConfig {
            shutdown_grace: dur(self.conn.shutdown_grace),
            listeners: vec![listener],
            ..base(self.creds.raw(None), &self.reload, &self.admin)
        }
    }
}

impl WatchArgs {
    /// Err if the program or its arguments are not UTF-8 (a config holds text).
    pub fn raw(&self) -> Result<RawConfig, String> {
        let exec = self
            .command
            .iter()
            .map(|a| {
                a.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`-- PROGRAM [ARGS..]`: {a:?} is not UTF-8 text"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let watch = RawWatch {
            credentials: defaults::SET.into(),
            stage_dir: self.stage_dir.clone(),
            signal: self.signal.clone(),
            pid_file: self.pid_file.clone(),
            process_name: self.process_name.clone(),
            pid: self.pid.map(i64::from),
            exec,
            webhook: self.webhook.clone(),
            webhook_ca: self.webhook_ca.clone(),
            verify_addr: self.verify_addr.clone(),
            verify_timeout: dur(self.verify_timeout),
            act_on_start: self.act_on_start.then_some(true),
            min_interval: dur(self.min_interval),
        };
        Ok(RawConfig {
            watch: vec![watch],
            ..base(self.creds.raw(Some(self.usage)), &self.reload, &self.admin)
        })
    }
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
    fn pids_are_checked_at_parse_time() {
        assert!(parse_pid("1").unwrap_err().contains("pause process"));
        assert!(parse_pid("x").is_err());
        assert_eq!(parse_pid("42"), Ok(42));
    }
}
