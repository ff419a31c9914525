//! Entry point: parse flags, set up logging, run the subcommand, map the outcome to the exit
//! codes of SPEC.md (0 ok, 1 invalid or runtime failure, 2 usage).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use mtls_sidecar::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.log_level.as_deref());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match &cli.command {
        Command::Check(args) => match args.creds.paths() {
            Err(e) => usage_error(&e.to_string()),
            Ok(paths) => match mtls_sidecar::check::run(args, &paths, &mut out) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => runtime_error(&anyhow::Error::from(e)),
            },
        },
        Command::Demo(args) => match mtls_sidecar::demo::run(args, &mut out) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => runtime_error(&e),
        },
    };
    let _ = out.flush();
    code
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\nFor more information, try '--help'.");
    ExitCode::from(2)
}

fn runtime_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(1)
}

fn init_tracing(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
