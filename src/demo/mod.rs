//! `mtls-sidecar demo`: the first thing a newcomer runs. Today it writes a throwaway PKI (a CA,
//! a server and a client certificate, made with rcgen) into two kubelet-style Secret volumes,
//! validates both with `check`, and prints commands to try. The proxy part of the demo arrives
//! with the `server` subcommand.

mod pki;
pub mod volume;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use crate::check::check;
use crate::cli::DemoArgs;
use crate::creds::paths::CredentialPaths;
use crate::creds::validate::{Policy, Usage};

/// Writes the demo volumes and reports on them; returns the directory used.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> anyhow::Result<PathBuf> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mtls-sidecar-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::DemoPki::generate().context("generating the demo PKI")?;
    for (name, leaf) in [("server", &pki.server), ("client", &pki.client)] {
        let files = [
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", pki.ca_pem.as_bytes()),
        ];
        volume::write_generation(&dir.join(name), &files)
            .with_context(|| format!("writing the {name} volume under {}", dir.display()))?;
    }
    writeln!(
        out,
        "demo PKI written to {} (kubelet layout: ..data -> timestamped dir)\n",
        dir.display()
    )?;
    for (name, usage) in [("server", Usage::Server), ("client", Usage::Client)] {
        let paths = CredentialPaths::resolve(Some(&dir.join(name)), None, None, None, None)?;
        let policy = Policy {
            usage,
            ..Policy::default()
        };
        let report = check(&paths, &policy, SystemTime::now());
        writeln!(out, "== {name} credentials ==")?;
        crate::check::write_text(&report, out)?;
        writeln!(out)?;
    }
    write_next_steps(out, &dir)?;
    Ok(dir)
}

fn write_next_steps(out: &mut dyn Write, dir: &Path) -> std::io::Result<()> {
    let d = dir.display();
    writeln!(out, "try next:")?;
    writeln!(
        out,
        "  mtls-sidecar check --cert-dir {d}/server --expect-dns api.production.svc.cluster.local"
    )?;
    writeln!(
        out,
        "  mtls-sidecar check --cert-dir {d}/client --usage client --output json"
    )?;
    writeln!(
        out,
        "  mtls-sidecar check --cert-dir {d}/client   # a client cert used as server: wrong_usage"
    )?;
    writeln!(out, "  mtls-sidecar check --cert {d}/server/tls.crt --key {d}/client/tls.key --ca {d}/server/ca.crt   # key_mismatch")?;
    writeln!(
        out,
        "(the TLS proxy part of the demo comes with `mtls-sidecar server`; see README \"Status\")"
    )
}
