//! Typed events: each function writes the log line and updates the metrics for one thing that
//! happened, so logs and metrics cannot drift (the contract: "Logging": one line per reload with set,
//! old and new serial, not_after, result and reason).

use std::time::SystemTime;

use tracing::{debug, error, info, warn};

use crate::creds::store::Published;
use crate::creds::validate::{rfc3339, CertFacts};
use crate::metrics::{
    ActionLabels, InfoLabels, Metrics, ResultLabels, SetLabels, SetReasonLabels, SetResultLabels,
    SetRoleLabels,
};
use crate::reason::Reason;

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn info_labels(set: &str, p: &Published) -> InfoLabels {
    let leaf = p.bundle.leaf();
    InfoLabels {
        set: set.to_string(),
        subject: leaf.subject.clone(),
        serial: leaf.serial.clone(),
        sha256: leaf.sha256.clone(),
    }
}

pub(crate) fn reload_published(m: &Metrics, set: &str, old: Option<&Published>, new: &Published) {
    let leaf = new.bundle.leaf();
    info!(
        set,
        generation = new.generation,
        old_serial = old.map(|p| p.bundle.leaf().serial.as_str()).unwrap_or("none"),
        new_serial = %leaf.serial,
        sha256 = %leaf.sha256,
        not_after = %rfc3339(leaf.not_after),
        result = "success",
        "credentials published"
    );
    m.reloads
        .get_or_create(&SetResultLabels {
            set: set.into(),
            result: "success",
        })
        .inc();
    m.last_success
        .get_or_create(&SetLabels { set: set.into() })
        .set(unix(new.loaded_at));
    let role = |role| SetRoleLabels {
        set: set.into(),
        role,
    };
    m.expiration
        .get_or_create(&role("leaf"))
        .set(leaf.not_after.unix_timestamp());
    if let Some(ca) = new.bundle.ca_not_after() {
        m.expiration
            .get_or_create(&role("ca"))
            .set(ca.unix_timestamp());
    }
    if let Some(old) = old {
        m.info.remove(&info_labels(set, old));
    }
    m.info.get_or_create(&info_labels(set, new)).set(1);
}

pub(crate) fn reload_refused(
    m: &Metrics,
    set: &str,
    reason: Reason,
    message: &str,
    current: Option<&Published>,
    rejected: Option<&CertFacts>,
) {
    error!(
        set,
        old_serial = current.map(|p| p.bundle.leaf().serial.as_str()).unwrap_or("none"),
        new_serial = rejected.map(|c| c.serial.as_str()).unwrap_or("unreadable"),
        not_after = %rejected.map(|c| rfc3339(c.not_after)).unwrap_or_default(),
        result = "failure",
        reason = reason.as_str(),
        error = message,
        "credentials refused; {}",
        kept(current.is_some())
    );
    m.reloads
        .get_or_create(&SetResultLabels {
            set: set.into(),
            result: "failure",
        })
        .inc();
    m.reload_failures
        .get_or_create(&SetReasonLabels {
            set: set.into(),
            reason: reason.as_str(),
        })
        .inc();
}

/// The same refusal as the last one (the same files, or the same read error, and nothing
/// published since): already logged and counted, so neither again.
pub(crate) fn reload_still_refused(set: &str, reason: Reason, content: bool) {
    let same = if content { "content" } else { "error" };
    debug!(
        set,
        reason = reason.as_str(),
        "credentials still refused: same {same} as before"
    );
}

/// What a refusal leaves served, for its log line.
fn kept(serving: bool) -> &'static str {
    if serving {
        "keeping the last good ones"
    } else {
        "nothing served yet"
    }
}

/// Our own failure while reloading: counted as a failed reload, without a reason code.
pub(crate) fn reload_internal(m: &Metrics, set: &str, message: &str, serving: bool) {
    error!(
        set,
        result = "failure",
        reason = "internal",
        error = message,
        "credentials not reloaded; {}",
        kept(serving)
    );
    m.reloads
        .get_or_create(&SetResultLabels {
            set: set.into(),
            result: "failure",
        })
        .inc();
}

pub(crate) fn reload_unchanged(m: &Metrics, set: &str) {
    debug!(set, result = "unchanged", "credentials unchanged");
    m.reloads
        .get_or_create(&SetResultLabels {
            set: set.into(),
            result: "unchanged",
        })
        .inc();
}

pub(crate) fn reload_waiting(set: &str, reason: Reason, message: &str) {
    warn!(
        set,
        reason = reason.as_str(),
        error = message,
        "waiting for credentials to appear"
    );
}

/// A changed `run --config` file was checked and applied.
pub(crate) fn config_applied(m: &Metrics, path: &std::path::Path, generation: u64, digest: &str) {
    info!(path = %path.display(), generation, digest, result = "success", "configuration applied");
    m.config_reloads
        .get_or_create(&ResultLabels { result: "success" })
        .inc();
}

/// A changed `run --config` file was refused; the running configuration stays.
pub(crate) fn config_refused(m: &Metrics, path: &std::path::Path, message: &str) {
    error!(path = %path.display(), result = "failure", error = message, "configuration refused; keeping the running one");
    m.config_reloads
        .get_or_create(&ResultLabels { result: "failure" })
        .inc();
}

/// The `run --config` file was refused again with the same text and message: already logged
/// and counted, so neither again.
pub(crate) fn config_still_refused(path: &std::path::Path) {
    debug!(path = %path.display(), "configuration still refused: same text and error as before");
}

/// The `run --config` file was read again and has not changed.
pub(crate) fn config_unchanged(m: &Metrics, path: &std::path::Path) {
    debug!(path = %path.display(), result = "unchanged", "configuration unchanged");
    m.config_reloads
        .get_or_create(&ResultLabels {
            result: "unchanged",
        })
        .inc();
}

/// An action ran after a publish: `Ok(detail)`, or `Err((reason, error))`.
pub(crate) fn action_done(
    m: &Metrics,
    set: &str,
    action: &'static str,
    generation: u64,
    outcome: Result<&dyn std::fmt::Display, (&'static str, &dyn std::fmt::Display)>,
) {
    let (result, reason) = match outcome {
        Ok(detail) => {
            info!(set, action, generation, detail = %detail, "action succeeded");
            ("success", None)
        }
        Err((reason, err)) => {
            error!(set, action, generation, reason, error = %err, "action failed");
            ("failure", Some(reason))
        }
    };
    m.actions
        .get_or_create(&ActionLabels {
            set: set.into(),
            action,
            result,
            reason,
        })
        .inc();
}
