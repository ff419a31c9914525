//! `mtls-sidecar check`: read a credential set once, apply every validation rule, and report
//! facts and failures (text for people, JSON for scripts). Files that cannot be read are reported
//! with their reason and the rest is still inspected, so one run shows every problem.

mod report;

use std::io::Write;
use std::time::SystemTime;

pub use report::{CheckReport, FailureReport};

use crate::creds::load::{read_file, LoadError};
use crate::creds::paths::{CredentialPaths, FileRole};
use crate::creds::validate::{inspect, Parts, Policy};

/// How the report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
}

/// Runs the check and writes the report; returns whether the set is valid. A reader that went
/// away (`check ... | head -1`: a broken pipe) is not an error: the verdict stands.
pub fn run(
    paths: &CredentialPaths,
    policy: &Policy,
    format: ReportFormat,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let report = check(paths, policy, SystemTime::now());
    let written = match format {
        ReportFormat::Text => report::write_text(&report, out),
        ReportFormat::Json => serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
    }
    .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(report.valid),
    }
}

/// Loads what it can, inspects it, and assembles the report.
pub fn check(paths: &CredentialPaths, policy: &Policy, now: SystemTime) -> CheckReport {
    let mut load_errors: Vec<LoadError> = Vec::new();
    let mut read = |role: FileRole, path: &std::path::Path| match read_file(role, path) {
        Ok(f) => Some(f),
        Err(e) => {
            load_errors.push(e);
            None
        }
    };
    let parts = Parts {
        cert: read(FileRole::Cert, &paths.cert),
        key: read(FileRole::Key, &paths.key),
        ca: read(FileRole::Ca, &paths.ca),
        peer_ca: paths
            .peer_ca
            .as_deref()
            .and_then(|p| read(FileRole::PeerCa, p)),
    };
    let inspection = inspect(parts, policy, now);
    let failures = load_errors
        .iter()
        .map(|e| FailureReport::new(e.reason(), e.path(), e.to_string()))
        .chain(
            inspection
                .errors
                .iter()
                .map(|e| FailureReport::new(e.reason(), e.path(), e.to_string())),
        )
        .collect();
    CheckReport::new(
        paths,
        policy,
        inspection.facts,
        failures,
        inspection.bundle.is_some(),
        now,
    )
}
