//! Entry point: parse flags, set up logging, run the subcommand, map the outcome to the exit
//! codes of the README (0 ok, 1 invalid or runtime failure, 2 usage).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tracing::warn;
use tracing_subscriber::EnvFilter;

use mtls_sidecar::app::{self, BindError, ConfigFile};
use mtls_sidecar::check::ReportFormat;
use mtls_sidecar::cli::{Cli, Command, LimitsChosen, LogFormat, OutputFormat, RunArgs};
use mtls_sidecar::config::{self, Config, ConfigErrors, Origin, RawConfig};
use mtls_sidecar::demo::DemoConfig;
use mtls_sidecar::limits;
use mtls_sidecar::proxy::Protocol;
use mtls_sidecar::signals;

/// mimalloc instead of the C library's allocator: glibc's keeps freed connection buffers in its
/// per-thread arenas (README "Sizing"), and musl's (a static build) is slow under many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| clap_exit(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| clap_exit(e));
    let long_running = match &cli.command {
        Command::Check(_) | Command::Drain(_) => false,
        Command::Run(args) => !(args.check || args.print),
        _ => true,
    };
    if long_running {
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
    let limits_chosen = match &cli.command {
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
        Command::Server(args) => run_flags(Ok(args.raw(limits_chosen))),
        Command::Client(args) => run_flags(Ok(args.raw(limits_chosen))),
        Command::Watch(args) => run_flags(args.raw()),
        Command::Run(args) => run_file(args, &mut out),
        Command::Drain(args) => match mtls_sidecar::admin::drain::request(args.admin, args.timeout)
        {
            Ok(body) => {
                let _ = writeln!(out, "{body}");
                ExitCode::SUCCESS
            }
            Err(e) => runtime_error(&anyhow::Error::from(e)),
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

/// `server`, `client`, `watch`: the flags as a one-set configuration, checked like a file.
fn run_flags(raw: Result<RawConfig, String>) -> ExitCode {
    let raw = match raw {
        Ok(r) => r,
        Err(msg) => return usage_error(&msg),
    };
    let mut config = match config::check::check(&raw, &Origin::Flags) {
        Ok(c) => c,
        Err(errors) => return usage_error(&ConfigErrors::new(&Origin::Flags, &errors).to_string()),
    };
    if let Err(e) = fit_limits(&mut config) {
        let flags = match config.listeners.first().map(|l| l.cfg.protocol) {
            Some(Protocol::Http) => "--max-connections and --max-upstream-connections",
            _ => "--max-connections",
        };
        return usage_error(&format!(
            "{flags} need about {} file descriptors, but this process may open only {} (RLIMIT_NOFILE, already raised to its hard limit): raise the container's nofile limit (ulimit -n), or lower {flags}",
            e.needed, e.available
        ));
    }
    match run_async(app::run(config, None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => runtime_error(&e),
    }
}

/// `run --config FILE` (and its `--check`, `--check-credentials`, `--print`).
fn run_file(args: &RunArgs, out: &mut impl Write) -> ExitCode {
    let text = match config::read_text(&args.config) {
        Ok(t) => t,
        Err(e) => return config_error(&e),
    };
    let (raw, origin) = match config::parse(&text, &args.config) {
        Ok(r) => r,
        Err(e) => return config_error(&e),
    };
    let mut config = match config::check::check(&raw, &origin) {
        Ok(c) => c,
        Err(errors) => return config_error(&ConfigErrors::new(&origin, &errors)),
    };
    if args.print {
        let _ =
            out.write_all(config::print::to_yaml(&config::print::filled(&raw, &config)).as_bytes());
        return ExitCode::SUCCESS;
    }
    if args.check {
        let path = args.config.display();
        let _ = writeln!(
            out,
            "{path}: valid: {} set(s), {} listener(s), {} watch entr{}",
            config.sets.len(),
            config.listeners.len(),
            config.watches.len(),
            if config.watches.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
        if !args.check_credentials {
            return ExitCode::SUCCESS;
        }
        let mut all_valid = true;
        for plan in &config.sets {
            let _ = writeln!(out, "\nset {}:", plan.set.name);
            match mtls_sidecar::check::run(
                &plan.set.paths,
                &plan.set.policy,
                ReportFormat::Text,
                out,
            ) {
                Ok(valid) => all_valid &= valid,
                Err(e) => return runtime_error(&anyhow::Error::from(e)),
            }
        }
        return if all_valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    if let Err(e) = fit_limits(&mut config) {
        return usage_error(&format!("{}: {e}", args.config.display()));
    }
    let file = ConfigFile::new(args.config.clone(), &text, raw);
    match run_async(app::run(config, Some(file))) {
        Ok(()) => ExitCode::SUCCESS,
        // The file, not a flag, chose the address.
        Err(e) => match e.downcast_ref::<BindError>() {
            Some(BindError::Admin { .. }) => {
                say(&format!(
                    "error: {}: admin-listen: {e:#}\n",
                    args.config.display()
                ));
                ExitCode::from(1)
            }
            Some(BindError::Listener { .. }) => {
                say(&format!("error: {}: {e:#}\n", args.config.display()));
                ExitCode::from(1)
            }
            None => runtime_error(&e),
        },
    }
}

/// Raises the open-file limit and fits the connection limits into it (see `limits`).
fn fit_limits(config: &mut Config) -> Result<(), limits::TooSmall> {
    match limits::raise_nofile() {
        Ok(nofile) => {
            app::report_fitted(&limits::fit_config(config, nofile)?);
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit (RLIMIT_NOFILE); not checking the connection limits against it");
        }
    }
    Ok(())
}

/// A configuration file with mistakes: each on its own line, exit 2.
fn config_error(e: &ConfigErrors) -> ExitCode {
    let mut msg = String::new();
    for line in &e.lines {
        msg.push_str("error: ");
        msg.push_str(line);
        msg.push('\n');
    }
    say(&msg);
    ExitCode::from(2)
}

/// Runs `fut` on a runtime with one worker thread per CPU this process may use:
/// `available_parallelism` reads the cgroup's CPU quota (a container's `limits.cpu`, rounded up)
/// and the CPU affinity mask, so a sidecar limited to one CPU gets one worker and no cross-thread
/// wake-ups.
fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
