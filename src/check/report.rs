//! The `check` report: one serde shape (documented in README "check JSON") and its text
//! rendering. Only public facts go in; key material never reaches this module.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use time::OffsetDateTime;

use crate::creds::paths::CredentialPaths;
use crate::creds::validate::{
    human_span, rfc3339, CertFacts, ChainStatus, Facts, KeyFacts, Policy, Usage,
};
use crate::reason::Reason;

/// The whole report. Field order is the JSON order.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub valid: bool,
    pub usage: Usage,
    pub files: Files,
    pub leaf: Option<LeafReport>,
    pub intermediates: Vec<CertFacts>,
    pub key: Option<KeyFacts>,
    pub ca: Vec<CertFacts>,
    pub peer_ca: Vec<CertFacts>,
    pub chain: ChainStatus,
    pub failures: Vec<FailureReport>,
}

#[derive(Debug, Serialize)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub peer_ca: Option<PathBuf>,
}

/// The leaf's facts plus the time left at the moment of the check (negative once expired).
#[derive(Debug, Serialize)]
pub struct LeafReport {
    #[serde(flatten)]
    pub facts: CertFacts,
    pub seconds_left: i64,
}

/// One failed rule.
#[derive(Debug, Serialize)]
pub struct FailureReport {
    pub reason: Reason,
    pub file: PathBuf,
    pub message: String,
}

impl FailureReport {
    pub fn new(reason: Reason, file: &Path, message: String) -> Self {
        FailureReport {
            reason,
            file: file.to_path_buf(),
            message,
        }
    }
}

impl CheckReport {
    pub(super) fn new(
        paths: &CredentialPaths,
        policy: &Policy,
        facts: Facts,
        failures: Vec<FailureReport>,
        bundle_built: bool,
        now: SystemTime,
    ) -> Self {
        let now = OffsetDateTime::from(now);
        CheckReport {
            valid: bundle_built && failures.is_empty(),
            usage: policy.usage,
            files: Files {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
                ca: paths.ca.clone(),
                peer_ca: paths.peer_ca.clone(),
            },
            leaf: facts.leaf.map(|facts| LeafReport {
                seconds_left: (facts.not_after - now).whole_seconds(),
                facts,
            }),
            intermediates: facts.intermediates,
            key: facts.key,
            ca: facts.ca,
            peer_ca: facts.peer_ca,
            chain: facts.chain,
            failures,
        }
    }
}

/// Human-readable report: facts first, then every failure, then the verdict.
pub(crate) fn write_text(r: &CheckReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "certificate   {}", r.files.cert.display())?;
    if let Some(leaf) = &r.leaf {
        let f = &leaf.facts;
        writeln!(out, "  subject     {}", f.subject)?;
        writeln!(out, "  issuer      {}", f.issuer)?;
        writeln!(out, "  serial      {}", f.serial)?;
        writeln!(out, "  sha256      {}", f.sha256)?;
        writeln!(out, "  sans        {}", list_or(&f.sans, "(none)"))?;
        writeln!(out, "  public key  {}", f.public_key)?;
        writeln!(
            out,
            "  ekus        {}",
            list_or(&f.ekus, "(no EKU extension: any usage)")
        )?;
        writeln!(out, "  not before  {}", rfc3339(f.not_before))?;
        let left = if leaf.seconds_left >= 0 {
            format!("{} left", human_span(leaf.seconds_left))
        } else {
            format!("expired {} ago", human_span(leaf.seconds_left))
        };
        writeln!(out, "  not after   {} ({left})", rfc3339(f.not_after))?;
        for i in &r.intermediates {
            writeln!(
                out,
                "  intermediate {} (until {})",
                i.subject,
                rfc3339(i.not_after)
            )?;
        }
    }
    writeln!(out, "private key   {}", r.files.key.display())?;
    if let Some(k) = &r.key {
        writeln!(out, "  type        {} ({})", k.kind, k.encoding)?;
    }
    write_bundle(out, "CA bundle", &r.files.ca, &r.ca)?;
    if let Some(p) = &r.files.peer_ca {
        write_bundle(out, "peer CA", p, &r.peer_ca)?;
    }
    let chain = match &r.chain {
        ChainStatus::Ok { ca } => format!("ok: chains to {ca}"),
        ChainStatus::Failed => "FAILED (see below)".into(),
        ChainStatus::NotChecked => "not checked (an input is unusable)".into(),
    };
    writeln!(out, "chain         {chain}")?;
    writeln!(
        out,
        "usage         {}",
        format!("{:?}", r.usage).to_lowercase()
    )?;
    for f in &r.failures {
        writeln!(out, "FAIL {}: {}", f.reason, f.message)?;
    }
    if r.valid {
        writeln!(out, "result        valid")
    } else {
        let n = r.failures.len();
        writeln!(
            out,
            "result        INVALID ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )
    }
}

fn write_bundle(
    out: &mut dyn Write,
    title: &str,
    path: &Path,
    certs: &[CertFacts],
) -> io::Result<()> {
    writeln!(out, "{title:<13} {}", path.display())?;
    for c in certs {
        let ca = if c.is_ca { "" } else { " NOT A CA" };
        writeln!(out, "  {} (until {}){ca}", c.subject, rfc3339(c.not_after))?;
    }
    Ok(())
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(", ")
    }
}
