//! Entry point: parse flags, set up logging, run the subcommand, map the outcome to the exit
//! codes of SPEC.md (0 ok, 1 invalid or runtime failure, 2 usage).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tracing::warn;
use tracing_subscriber::EnvFilter;

use mtls_sidecar::actions::signal::{comm_name, parse_signal, SignalAction, SignalTarget};
use mtls_sidecar::actions::stage::StageAction;
use mtls_sidecar::actions::verify::VerifyAction;
use mtls_sidecar::actions::webhook::{WebhookAction, WebhookInput, WebhookSetupError};
use mtls_sidecar::actions::{exec::ExecAction, Action, Pacing};
use mtls_sidecar::admin::{Listen, MAX_ADMIN_CONNECTIONS};
use mtls_sidecar::app::{self, BindError, ClientPlan, CorePlan, ServerPlan, WatchPlan};
use mtls_sidecar::check::ReportFormat;
use mtls_sidecar::cli::{
    non_empty, Cli, ClientArgs, Command, ConnArgs, LogFormat, OutputFormat, ReloadArgs, ServerArgs,
    WatchArgs,
};
use mtls_sidecar::creds::validate::Usage;
use mtls_sidecar::demo::DemoConfig;
use mtls_sidecar::limits::{self, ConnLimits, Fit};
use mtls_sidecar::proxy::inbound::Allow;
use mtls_sidecar::proxy::outbound::Remote;
use mtls_sidecar::proxy::{ListenerConfig, Protocol, Target};
use mtls_sidecar::reload::SetConfig;
use mtls_sidecar::signals;
use mtls_sidecar::tls::Pins;
use rustls::pki_types::ServerName;

fn main() -> ExitCode {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| clap_exit(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| clap_exit(e));
    if !matches!(cli.command, Command::Check(_)) {
        // Before any thread exists: a signal during start-up waits for its handler.
        if let Err(e) = signals::block() {
            return runtime_error(&anyhow::anyhow!("blocking signals during start-up: {e}"));
        }
    }
    if let Err(msg) = init_tracing(cli.log_format, cli.log_level.as_deref()) {
        return usage_error(&msg);
    }
    // Whether a flag of the subcommand was set (command line or environment), not defaulted.
    let chosen = |id: &str| {
        matches
            .subcommand()
            .and_then(|(_, m)| m.value_source(id))
            .is_some_and(|s| s != ValueSource::DefaultValue)
    };
    let conn_limits_chosen = match &cli.command {
        Command::Server(_) | Command::Client(_) => LimitsChosen {
            connections: chosen("max_connections"),
            upstream: chosen("max_upstream_connections"),
        },
        _ => LimitsChosen::default(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match &cli.command {
        Command::Check(args) => match args.creds.paths() {
            Err(e) => usage_error(&e.to_string()),
            Ok(paths) => match mtls_sidecar::check::run(
                &paths,
                &args.creds.policy(args.usage.into()),
                match args.output {
                    OutputFormat::Text => ReportFormat::Text,
                    OutputFormat::Json => ReportFormat::Json,
                },
                &mut out,
            ) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => runtime_error(&anyhow::Error::from(e)),
            },
        },
        Command::Server(args) => match server_plan(args, conn_limits_chosen) {
            Err(msg) => usage_error(&msg),
            Ok(plan) => match run_async(app::run_server(plan)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => runtime_error(&e),
            },
        },
        Command::Client(args) => match client_plan(args, conn_limits_chosen) {
            Err(msg) => usage_error(&msg),
            Ok(plan) => match run_async(app::run_client(plan)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => runtime_error(&e),
            },
        },
        Command::Watch(args) => match watch_plan(args) {
            Err(msg) => usage_error(&msg),
            Ok(plan) => match run_async(app::run_watch(plan)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => runtime_error(&e),
            },
        },
        Command::Demo(args) => {
            let demo = DemoConfig {
                dir: args.dir.clone(),
                listen: args.listen,
                admin: args.admin_listen,
                rotate_every: args.rotate_every,
            };
            match run_async(mtls_sidecar::demo::run(&demo, &mut std::io::stdout())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => runtime_error(&e),
            }
        }
    };
    let _ = out.flush();
    code
}

/// Checks what clap cannot (cross-flag rules) and builds the plan.
fn watch_plan(args: &WatchArgs) -> Result<WatchPlan, String> {
    let paths = args.creds.paths().map_err(|e| e.to_string())?;
    let mut actions = Vec::new();
    if let Some(dir) = &args.stage_dir {
        actions.push(Action::Stage(StageAction { dir: dir.clone() }));
    }
    let target = match (&args.pid_file, &args.process_name, args.pid) {
        (Some(f), _, _) => Some(SignalTarget::PidFile(f.clone())),
        (_, Some(n), _) => Some(SignalTarget::ProcessName(
            comm_name(n).map_err(|e| format!("--process-name {n:?}: {e}"))?,
        )),
        (_, _, Some(p)) => Some(SignalTarget::Pid(p)),
        _ => None,
    };
    match (target, &args.signal) {
        (Some(target), name) => {
            let signal = parse_signal(name.as_deref().unwrap_or("HUP"))
                .map_err(|e| format!("--signal: {e}"))?;
            actions.push(Action::Signal(SignalAction {
                signal,
                target,
                proc_root: "/proc".into(),
            }));
        }
        (None, Some(_)) => {
            return Err(
                "--signal needs a target: --pid-file FILE, --process-name NAME or --pid N".into(),
            );
        }
        (None, None) => {}
    }
    if let Some((program, rest)) = args.command.split_first() {
        actions.push(Action::Exec(ExecAction {
            program: program.clone(),
            args: rest.to_vec(),
        }));
    }
    if let Some(url) = &args.webhook {
        let webhook = WebhookAction::new(url, args.webhook_ca.as_deref()).map_err(|e| {
            match (e.input(), &e) {
                (WebhookInput::Ca, _) => format!("--webhook-ca: {e}"),
                (_, WebhookSetupError::NoSystemRoots { .. }) => {
                    format!("--webhook: {e} with --webhook-ca FILE")
                }
                _ => format!("--webhook: {e}"),
            }
        })?;
        actions.push(Action::Webhook(webhook));
    } else if args.webhook_ca.is_some() {
        return Err("--webhook-ca needs an https:// --webhook URL".into());
    }
    if let Some(addr) = &args.verify_addr {
        if actions.is_empty() {
            return Err("--verify-addr checks the result of another action: add --signal, --stage-dir, --webhook or `-- PROGRAM`".into());
        }
        if !addr.contains(':') {
            return Err(format!("--verify-addr: expected HOST:PORT, got {addr:?}"));
        }
        actions.push(Action::Verify(VerifyAction {
            addr: addr.clone(),
            timeout: args.verify_timeout,
        }));
    }
    if actions.is_empty() {
        return Err(
            "watch needs an action: --stage-dir DIR, --signal NAME with --pid-file/--process-name/--pid, --webhook URL, or `-- PROGRAM [ARGS..]`"
                .into(),
        );
    }
    let set = SetConfig {
        name: "default".into(),
        paths,
        policy: args.creds.policy(args.usage.into()),
    };
    Ok(WatchPlan {
        core: core_plan(set, &args.reload, args.admin.admin_listen),
        actions,
        pacing: Pacing {
            act_on_start: args.act_on_start,
            min_interval: args.min_interval,
        },
    })
}

fn core_plan(set: SetConfig, reload: &ReloadArgs, admin: Listen) -> CorePlan {
    CorePlan {
        set,
        poll_interval: reload.poll_interval,
        debounce: reload.debounce,
        admin,
    }
}

/// Which connection limits the user set (command line or environment) rather than defaulted.
#[derive(Clone, Copy, Default)]
struct LimitsChosen {
    connections: bool,
    upstream: bool,
}

fn server_plan(args: &ServerArgs, limits_chosen: LimitsChosen) -> Result<ServerPlan, String> {
    let paths = args.creds.paths().map_err(|e| e.to_string())?;
    let target = Target::parse(&args.target).map_err(|e| format!("--target: {e}"))?;
    let allow = Allow {
        all: args.allow_all,
        cn: non_empty(&args.allow_cn),
        ou: non_empty(&args.allow_ou),
        dns: non_empty(&args.allow_dns),
        uri: non_empty(&args.allow_uri),
    };
    if !allow.is_configured() {
        return Err("server needs an access rule: --allow-all, or one or more of --allow-cn, --allow-ou, --allow-dns, --allow-uri".into());
    }
    let set = SetConfig {
        name: "default".into(),
        paths,
        // Our own leaf serves TLS: it needs serverAuth.
        policy: args.creds.policy(Usage::Server),
    };
    Ok(ServerPlan {
        core: core_plan(set, &args.reload, args.admin.admin_listen),
        listener: listener_config(
            "server",
            args.listen,
            target,
            args.protocol.into(),
            &args.conn,
            (limits_chosen, args.admin.admin_listen),
        )?,
        allow,
        shutdown_grace: args.conn.shutdown_grace,
    })
}

fn client_plan(args: &ClientArgs, limits_chosen: LimitsChosen) -> Result<ClientPlan, String> {
    let paths = args.creds.paths().map_err(|e| e.to_string())?;
    if !args.listen.ip().is_loopback() && !args.unsafe_listen {
        return Err(format!(
            "--listen {}: client mode listens in plaintext and connects as this pod's identity, so it must be loopback (127.0.0.1:PORT or [::1]:PORT); add --unsafe-listen if you really mean it",
            args.listen
        ));
    }
    let target = match Target::parse(&args.target) {
        Ok(t @ Target::Tcp(_)) => t,
        Ok(Target::Unix(_)) => {
            return Err("--target: client mode connects over TCP: expected host:port".into())
        }
        Err(_) => {
            return Err(format!(
            "--target: expected host:port (e.g. api.production.svc.cluster.local:443), got {:?}",
            args.target
        ))
        }
    };
    let addr = target.to_string();
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "443"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = args.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| match &args.server_name {
        Some(_) => format!("--server-name {name:?}: {e} (expected a DNS name or an IP address)"),
        None => format!(
            "--target {:?}: its host {host:?} is not a valid server name ({e}); pass --server-name NAME",
            args.target
        ),
    })?;
    let authority = match (port, &server_name) {
        ("443", ServerName::DnsName(_)) => name.to_string(),
        (_, ServerName::IpAddress(_)) if name.contains(':') => format!("[{name}]:{port}"),
        _ => format!("{name}:{port}"),
    };
    let set = SetConfig {
        name: "default".into(),
        paths,
        // Our own leaf authenticates us to the server: it needs clientAuth.
        policy: args.creds.policy(Usage::Client),
    };
    Ok(ClientPlan {
        core: core_plan(set, &args.reload, args.admin.admin_listen),
        listener: listener_config(
            "client",
            args.listen,
            target,
            args.protocol.into(),
            &args.conn,
            (limits_chosen, args.admin.admin_listen),
        )?,
        remote: Remote {
            addr,
            server_name,
            authority,
        },
        pins: Pins {
            dns: non_empty(&args.verify_dns),
            uri: non_empty(&args.verify_uri),
        },
        shutdown_grace: args.conn.shutdown_grace,
    })
}

/// `budget`: whether the user chose the connection limits, and the admin endpoint (whose
/// connections count against the file-descriptor limit too).
fn listener_config(
    name: &str,
    listen: std::net::SocketAddr,
    target: Target,
    protocol: Protocol,
    conn: &ConnArgs,
    budget: (LimitsChosen, Listen),
) -> Result<ListenerConfig, String> {
    if conn.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if conn.max_upstream_connections == 0 {
        return Err("--max-upstream-connections must be at least 1".into());
    }
    let limits = fit_fd_limit(protocol, conn, budget.0, budget.1)?;
    Ok(ListenerConfig {
        name: name.into(),
        listen,
        target,
        protocol,
        min_tls: conn.min_tls.into(),
        handshake_timeout: conn.handshake_timeout,
        connect_timeout: conn.connect_timeout,
        idle_timeout: conn.idle_timeout,
        max_connections: limits.max_connections,
        max_upstream_connections: limits.max_upstream_connections,
        max_connection_age: conn.max_connection_age.filter(|d| !d.is_zero()),
    })
}

/// Raises the open-file limit and checks the connection limits against it (see `limits`).
fn fit_fd_limit(
    protocol: Protocol,
    conn: &ConnArgs,
    chosen: LimitsChosen,
    admin: Listen,
) -> Result<ConnLimits, String> {
    // The upstream cap applies in http mode only.
    let chosen = chosen.connections || (protocol == Protocol::Http && chosen.upstream);
    let requested = ConnLimits {
        max_connections: conn.max_connections,
        max_upstream_connections: conn.max_upstream_connections,
    };
    let nofile = match limits::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit (RLIMIT_NOFILE); not checking the connection limits against it");
            return Ok(requested);
        }
    };
    let admin = match admin {
        Listen::On(_) => MAX_ADMIN_CONNECTIONS as u64,
        Listen::Off => 0,
    };
    let flags = match protocol {
        Protocol::Tcp => "--max-connections",
        Protocol::Http => "--max-connections and --max-upstream-connections",
    };
    match limits::fit(protocol, requested, chosen, admin, nofile) {
        Fit::Fits => Ok(requested),
        Fit::Lowered(l) => {
            warn!(
                nofile,
                max_connections = l.max_connections,
                max_upstream_connections = l.max_upstream_connections,
                "the open-file limit (RLIMIT_NOFILE) is too low for the default {flags}; using lower limits (raise the container's nofile limit to keep the defaults)"
            );
            Ok(l)
        }
        Fit::TooSmall { needed, available } => Err(format!(
            "{flags} need about {needed} file descriptors, but this process may open only {available} (RLIMIT_NOFILE, already raised to its hard limit): raise the container's nofile limit (ulimit -n), or lower {flags}"
        )),
    }
}

fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    let result = rt.block_on(fut);
    // A blocking read stuck in the kernel (e.g. a hung network filesystem) must not hold up exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn usage_error(msg: &str) -> ExitCode {
    say(&format!(
        "error: {msg}\n\nFor more information, try '--help'.\n"
    ));
    ExitCode::from(2)
}

fn runtime_error(err: &anyhow::Error) -> ExitCode {
    // Say which flag chose an address that could not be bound.
    let flag = match err.downcast_ref::<BindError>() {
        Some(BindError::Admin { .. }) => "--admin-listen: ",
        Some(BindError::Listener { .. }) => "--listen: ",
        None => "",
    };
    say(&format!("error: {flag}{err:#}\n"));
    ExitCode::from(1)
}

/// Prints clap's message (help, version, or a usage error) and exits with its code; for an
/// invalid value that came from an `MTLS_SIDECAR_*` variable, also says which one.
fn clap_exit(e: clap::Error) -> ! {
    let _ = e.print();
    if let Some(note) = env_note(&e) {
        say(&note);
    }
    std::process::exit(e.exit_code())
}

/// "the value came from MTLS_SIDECAR_X", when it did: clap names only the flag.
fn env_note(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--listen <ADDR>" -> "--listen"
    let flag = arg.split_whitespace().next()?;
    let var = format!(
        "MTLS_SIDECAR_{}",
        flag.strip_prefix("--")?
            .to_ascii_uppercase()
            .replace('-', "_")
    );
    let value = std::env::var(&var).ok()?;
    let given = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    (!given).then(|| format!("note: {value:?} is the value of the environment variable {var}\n"))
}

/// Writes to stderr; a closed stderr is not worth a panic (eprintln! would panic).
fn say(msg: &str) {
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

fn init_tracing(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| {
            format!("--log-level {l:?}: {e} (try info, debug, or mtls_sidecar=debug)")
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line that cannot be written (stderr is a closed pipe) is dropped: reporting
        // that on stderr too would panic, and logging must never stop the process.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
