//! The reload task of one credential set: on every trigger, read one consistent snapshot,
//! skip it if the content is what is served, validate it, and hand the result to the store.
//! Transient states (a cert/key pair or a CA from volumes updated at different moments, a file
//! being rewritten in place) are retried briefly before they count as a failure. A certificate
//! refused as not yet valid (a node clock a little behind the issuer's) is checked again when
//! its validity starts, and a read that failed for want of a system resource (EMFILE, ENOMEM)
//! again with backoff, without waiting for a file event or the next poll (which may be off).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::creds::load::LoadError;
use crate::creds::paths::CredentialPaths;
use crate::creds::snapshot::read_snapshot;
use crate::creds::store::Store;
use crate::creds::validate::{validate, Policy};
use crate::reason::Reason;
use crate::watch::Trigger;

/// What a set is made of and must satisfy.
#[derive(Clone, Debug)]
pub struct SetConfig {
    pub name: String,
    pub paths: CredentialPaths,
    pub policy: Policy,
}

/// Pauses between attempts at an update that looks half-written (about 1.5 s in all).
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Pauses before reading again after the system ran short of a resource: doubling from the
/// first, never longer than the last.
const EXHAUSTED_FIRST: Duration = Duration::from_secs(1);
const EXHAUSTED_MAX: Duration = Duration::from_secs(30);

/// What the reload task does after one reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing until the next trigger.
    Wait,
    /// Check again when this refused certificate becomes valid.
    ValidFrom(SystemTime),
    /// The system ran short of a resource: read again after a backoff.
    Retry,
}

/// The longest single wait for a not-yet-valid certificate (then it is checked, and scheduled
/// again if still early).
const MAX_VALIDITY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Runs until `cancel`, reloading on each trigger.
pub async fn run(
    set: SetConfig,
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Trigger>,
    cancel: CancellationToken,
) {
    let mut recheck: Option<tokio::time::Instant> = None;
    let mut backoff = EXHAUSTED_FIRST;
    loop {
        let due = async {
            match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            t = rx.recv() => match t {
                Some(trigger) => debug!(set = %set.name, ?trigger, "reload triggered"),
                None => return,
            },
            () = due => debug!(set = %set.name, "reading again as scheduled"),
        }
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = reload_once(&set, &store) => next,
        };
        let now = tokio::time::Instant::now();
        recheck = match next {
            Next::Wait => None,
            // A second late, so the check does not land just before not_before.
            Next::ValidFrom(t) => {
                let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
                Some(now + wait.min(MAX_VALIDITY_WAIT) + Duration::from_secs(1))
            }
            Next::Retry => {
                let at = now + backoff;
                debug!(set = %set.name, retry_in = ?backoff, "out of a system resource; reading again later");
                backoff = (backoff * 2).min(EXHAUSTED_MAX);
                Some(at)
            }
        };
        if next != Next::Retry {
            backoff = EXHAUSTED_FIRST;
        }
    }
}

/// One reload: read, dedupe, validate, publish or refuse (with brief retries). Says when to
/// look again without a trigger, if ever.
pub async fn reload_once(set: &SetConfig, store: &Store) -> Next {
    let mut previous_hash = None;
    for attempt in 0..=RETRY_DELAYS.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_DELAYS[attempt - 1]).await;
        }
        let last_try = attempt == RETRY_DELAYS.len();
        let paths = set.paths.clone();
        let read = tokio::task::spawn_blocking(move || read_snapshot(&paths)).await;
        let raw = match read {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                if is_transient_load(&e) && !last_try && store.load().is_some() {
                    continue;
                }
                let exhausted = e.is_exhaustion();
                refuse_load(store, e);
                return if exhausted { Next::Retry } else { Next::Wait };
            }
            // The blocking read panicked: a bug, but never a reason to stop serving.
            Err(join) => {
                let msg =
                    format!("internal error while reading credentials (please report it): {join}");
                store.refuse(Reason::Unreadable, msg, None);
                return Next::Wait;
            }
        };
        let hash = raw.content_hash();
        if store.is_unchanged(&hash) {
            return Next::Wait;
        }
        let policy = set.policy.clone();
        let checked =
            tokio::task::spawn_blocking(move || validate(raw, &policy, SystemTime::now())).await;
        match checked {
            Ok(Ok(bundle)) => {
                store.publish(bundle);
                return Next::Wait;
            }
            Ok(Err(rejection)) => {
                let e = rejection.primary();
                let changed = previous_hash.is_some_and(|h| h != hash);
                let cross_file = matches!(e.reason(), Reason::KeyMismatch | Reason::UntrustedChain);
                if !last_try && (attempt == 0 || changed || cross_file) {
                    previous_hash = Some(hash);
                    debug!(set = %set.name, reason = %e.reason(), "update looks half-written; retrying");
                    continue;
                }
                let leaf = rejection.facts.leaf.as_ref();
                store.refuse(e.reason(), e.to_string(), leaf);
                // Only the leaf's start is known to end the refusal (a CA that is early is not
                // rescheduled: its start is not in the leaf's facts).
                return (e.reason() == Reason::NotYetValid)
                    .then(|| leaf.map(|l| SystemTime::from(l.not_before)))
                    .flatten()
                    .filter(|start| *start > SystemTime::now())
                    .map_or(Next::Wait, Next::ValidFrom);
            }
            Err(join) => {
                let msg = format!("internal error while validating (please report it): {join}");
                store.refuse(Reason::BadPem, msg, None);
                return Next::Wait;
            }
        }
    }
    Next::Wait
}

/// Files vanishing or moving may be a writer in the middle of an update.
fn is_transient_load(e: &LoadError) -> bool {
    matches!(
        e,
        LoadError::Missing { .. } | LoadError::Inconsistent { .. }
    )
}

fn refuse_load(store: &Store, e: LoadError) {
    if store.load().is_none() && matches!(e, LoadError::Missing { .. }) {
        // SPEC: missing files at start-up are not an error; readiness stays false meanwhile.
        store.waiting(e.reason(), e.to_string());
    } else {
        store.refuse(e.reason(), e.to_string(), None);
    }
}
