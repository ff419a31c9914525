//! The reload task of one credential set: on every trigger, read one consistent snapshot,
//! skip it if the content is what is served, validate it, and hand the result to the store;
//! every outcome is reported here (logged and counted by `crate::events`), inside a
//! `reload{set}` span; a refusal once per distinct refused content (see [`Report`]). An update that may still be half-written (files read outside one kubelet
//! `..data` generation: plain files rewritten in place, or a pair from two volumes updated at
//! different moments) is retried briefly before it counts as a failure; one read through a
//! single stable generation is judged at once. A certificate refused as not yet valid (a node
//! clock a little behind the issuer's) is checked again when its validity starts, and a read
//! that failed for want of a system resource (EMFILE, ENOMEM) again with backoff, without waiting
//! for a file event or the next poll (which may be off).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use crate::creds::load::LoadError;
use crate::creds::paths::CredentialPaths;
use crate::creds::snapshot::read_snapshot;
use crate::creds::store::{Refusal, Refused, Store};
use crate::creds::validate::{validate, Bundle, CertFacts, Policy, ValidateError};
use crate::events;
use crate::metrics::Metrics;
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

/// The longest single wait for a not-yet-valid certificate (then it is checked, and scheduled
/// again if still early).
const MAX_VALIDITY_WAIT: Duration = Duration::from_secs(24 * 3600);

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

/// When to look again without a trigger.
#[derive(Debug)]
struct Schedule {
    backoff: Duration,
}

impl Schedule {
    fn new() -> Self {
        Schedule {
            backoff: EXHAUSTED_FIRST,
        }
    }

    /// The instant to read again after `next` (`now` on both clocks), if any.
    fn after(&mut self, next: Next, now: Instant, wall: SystemTime) -> Option<Instant> {
        if next != Next::Retry {
            self.backoff = EXHAUSTED_FIRST;
        }
        match next {
            Next::Wait => None,
            // A second late, so the check does not land just before notBefore.
            Next::ValidFrom(t) => {
                let wait = t.duration_since(wall).unwrap_or_default();
                Some(now + wait.min(MAX_VALIDITY_WAIT) + Duration::from_secs(1))
            }
            Next::Retry => {
                let at = now + self.backoff;
                self.backoff = (self.backoff * 2).min(EXHAUSTED_MAX);
                Some(at)
            }
        }
    }
}

/// Runs until `cancel`, reloading on each trigger.
pub async fn run(
    set: SetConfig,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Trigger>,
    cancel: CancellationToken,
) {
    let report = Report {
        store: &store,
        metrics: &metrics,
        set: &set.name,
    };
    let mut schedule = Schedule::new();
    let mut recheck: Option<Instant> = None;
    loop {
        let due = async {
            match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let trigger = tokio::select! {
            _ = cancel.cancelled() => return,
            t = rx.recv() => match t {
                Some(trigger) => trigger,
                None => return,
            },
            () = due => Trigger::Scheduled,
        };
        let span = info_span!("reload", set = %set.name, ?trigger);
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = reload_once(&set, &report).instrument(span) => next,
        };
        recheck = schedule.after(next, Instant::now(), SystemTime::now());
        if next == Next::Retry {
            debug!(set = %set.name, ?recheck, "out of a system resource; reading again later");
        }
    }
}

/// One reload: read, dedupe, validate, publish or refuse (with brief retries while the files
/// may still be half-written). Says when to look again without a trigger, if ever.
pub async fn reload_once(set: &SetConfig, report: &Report<'_>) -> Next {
    let mut previous_hash = None;
    for attempt in 0..=RETRY_DELAYS.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_DELAYS[attempt - 1]).await;
        }
        let last_try = attempt == RETRY_DELAYS.len();
        let paths = set.paths.clone();
        let raw = match tokio::task::spawn_blocking(move || read_snapshot(&paths)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                if is_transient_load(&e) && !last_try && report.store.load().is_some() {
                    continue;
                }
                let exhausted = e.is_exhaustion();
                report.load_failed(e);
                return if exhausted { Next::Retry } else { Next::Wait };
            }
            // The blocking read panicked: a bug, but never a reason to stop serving.
            Err(join) => {
                report.internal(&format!("reading the credentials: {join}"));
                return Next::Wait;
            }
        };
        let hash = raw.content_hash();
        if report.store.serves(&hash) {
            report.unchanged();
            return Next::Wait;
        }
        let generations = raw.generations();
        let policy = set.policy.clone();
        let checked =
            tokio::task::spawn_blocking(move || validate(raw, &policy, SystemTime::now())).await;
        let rejection = match checked {
            Ok(Ok(bundle)) => {
                report.published(bundle);
                return Next::Wait;
            }
            Ok(Err(rejection)) => rejection,
            Err(join) => {
                report.internal(&format!("validating the credentials: {join}"));
                return Next::Wait;
            }
        };
        let e = rejection.primary();
        let changed = previous_hash.is_some_and(|h| h != hash);
        if !last_try && !settled(e, &generations) && (attempt == 0 || changed || cross_file(e)) {
            previous_hash = Some(hash);
            debug!(reason = %e.reason(), "update looks half-written; retrying");
            continue;
        }
        let leaf = rejection.facts.leaf.as_ref();
        report.refused(e, leaf, hash);
        // Only the leaf's start is known to end the refusal (a CA that is early is not
        // rescheduled: its start is not in the leaf's facts).
        return (e.reason() == Reason::NotYetValid)
            .then(|| leaf.map(|l| SystemTime::from(l.not_before)))
            .flatten()
            .filter(|start| *start > SystemTime::now())
            .map_or(Next::Wait, Next::ValidFrom);
    }
    Next::Wait
}

/// A refusal about files that were all read through one kubelet generation (kubelet writes a
/// generation completely before its `..data` swap) is final: waiting will not change them.
fn settled(e: &ValidateError, generations: &[(PathBuf, Option<PathBuf>)]) -> bool {
    let of = |path: &std::path::Path| {
        generations
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, g)| g.as_ref())
    };
    let mut involved = e.files().into_iter().map(of);
    match involved.next().flatten() {
        Some(first) => involved.all(|g| g == Some(first)),
        None => false,
    }
}

/// Failures that files from volumes updated at different moments produce.
fn cross_file(e: &ValidateError) -> bool {
    matches!(e.reason(), Reason::KeyMismatch | Reason::UntrustedChain)
}

/// Files vanishing or moving may be a writer in the middle of an update.
fn is_transient_load(e: &LoadError) -> bool {
    matches!(
        e,
        LoadError::Missing { .. } | LoadError::Inconsistent { .. }
    )
}

/// Every outcome of a reload, recorded in the store and reported (logged and counted) once. A
/// refusal the same as the pending one (the same files refused for the same reason, or the same
/// read error, with nothing published or cleared in between: a second event of one `..data`
/// swap, a poll, a re-watch) is not reported again; `/status` keeps the first one's `at`.
pub struct Report<'a> {
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    pub set: &'a str,
}

impl Report<'_> {
    fn published(&self, bundle: Bundle) {
        let p = self.store.publish(bundle);
        events::reload_published(self.metrics, self.set, p.old.as_deref(), &p.new);
    }

    fn unchanged(&self) {
        // The files on disk are fine again: whatever was refused earlier is no longer pending.
        self.store.clear_error();
        events::reload_unchanged(self.metrics, self.set);
    }

    fn refused(&self, e: &ValidateError, leaf: Option<&CertFacts>, hash: [u8; 32]) {
        let about = Refused::Content {
            hash,
            reason: e.reason(),
        };
        if self.store.refused_already(&about) {
            events::reload_still_refused(self.set, e.reason(), true);
            return;
        }
        let message = e.to_string();
        let current = self.store.load();
        events::reload_refused(
            self.metrics,
            self.set,
            e.reason(),
            &message,
            current.as_deref(),
            leaf,
        );
        self.store
            .refuse(Refusal::Rejected(e.reason()), message, Some(about));
    }

    fn load_failed(&self, e: LoadError) {
        let (reason, message) = (e.reason(), e.to_string());
        if self.store.load().is_none() && matches!(e, LoadError::Missing { .. }) {
            // Missing files at start-up are not an error; readiness stays false meanwhile.
            if self.store.waiting(reason, message.clone()) {
                events::reload_waiting(self.set, reason, &message);
            }
            return;
        }
        let about = Refused::Unread {
            reason,
            message: message.clone(),
        };
        if self.store.refused_already(&about) {
            events::reload_still_refused(self.set, reason, false);
            return;
        }
        let current = self.store.load();
        events::reload_refused(
            self.metrics,
            self.set,
            reason,
            &message,
            current.as_deref(),
            None,
        );
        self.store
            .refuse(Refusal::Rejected(reason), message, Some(about));
    }

    fn internal(&self, what: &str) {
        let message = format!("internal error while {what} (please report it)");
        let serving = self.store.load().is_some();
        events::reload_internal(self.metrics, self.set, &message, serving);
        self.store.refuse(Refusal::Internal, message, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resource_shortage_backs_off_doubling_to_30s_and_resets() {
        let mut s = Schedule::new();
        let wall = SystemTime::now();
        let mut waits = Vec::new();
        for _ in 0..7 {
            let now = Instant::now();
            let at = s.after(Next::Retry, now, wall).expect("a retry");
            waits.push((at - now).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(s.after(Next::Wait, Instant::now(), wall), None);
        let now = Instant::now();
        assert_eq!(s.after(Next::Retry, now, wall), Some(now + EXHAUSTED_FIRST));
    }

    #[tokio::test(start_paused = true)]
    async fn not_yet_valid_is_checked_a_second_after_its_start() {
        let mut s = Schedule::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let start = wall + Duration::from_secs(90);
        assert_eq!(
            s.after(Next::ValidFrom(start), now, wall),
            Some(now + Duration::from_secs(91))
        );
        // Far in the future: looked at again after a day at most.
        let far = wall + Duration::from_secs(400 * 24 * 3600);
        assert_eq!(
            s.after(Next::ValidFrom(far), now, wall),
            Some(now + MAX_VALIDITY_WAIT + Duration::from_secs(1))
        );
        // Already valid by the time it is scheduled: at once (plus the second).
        let past = wall - Duration::from_secs(5);
        assert_eq!(
            s.after(Next::ValidFrom(past), now, wall),
            Some(now + Duration::from_secs(1))
        );
    }

    /// Runs one reload of `dir`'s files on a fresh store; the refusal and the (virtual) time
    /// it took.
    async fn reload_of(dir: &std::path::Path) -> (Option<Refusal>, Duration) {
        let set = SetConfig {
            name: "t".into(),
            paths: CredentialPaths::resolve(Some(dir), None, None, None, None).unwrap(),
            policy: Policy::default(),
        };
        let (store, metrics) = (Store::new("t"), Metrics::new());
        let report = Report {
            store: &store,
            metrics: &metrics,
            set: "t",
        };
        let start = Instant::now();
        reload_once(&set, &report).await;
        (store.last_error().map(|e| e.reason), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_mismatched_pair_in_one_generation_is_refused_at_once() {
        let ca = crate::test_pki::TestCa::new();
        let (leaf, other) = (ca.server(), ca.server());
        let tmp = tempfile::tempdir().unwrap();
        let files: [(&str, &[u8]); 3] = [
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", other.key_pem.as_bytes()),
            ("ca.crt", ca.pem.as_bytes()),
        ];
        // Kubelet-style: one complete generation behind `..data`.
        let kubelet = tmp.path().join("kubelet");
        crate::atomic_dir::write_generation(&kubelet, &files).unwrap();
        let (reason, took) = reload_of(&kubelet).await;
        assert_eq!(reason, Some(Refusal::Rejected(Reason::KeyMismatch)));
        assert_eq!(took, Duration::ZERO, "retried a settled generation");
        // Plain files: a writer may be between the two, so it is retried first.
        let plain = tmp.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        for (name, body) in files {
            std::fs::write(plain.join(name), body).unwrap();
        }
        let (reason, took) = reload_of(&plain).await;
        assert_eq!(reason, Some(Refusal::Rejected(Reason::KeyMismatch)));
        assert_eq!(took, RETRY_DELAYS.iter().sum::<Duration>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_generation_is_published_and_then_unchanged() {
        let ca = crate::test_pki::TestCa::new();
        let leaf = ca.server();
        let tmp = tempfile::tempdir().unwrap();
        let files: [(&str, &[u8]); 3] = [
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", ca.pem.as_bytes()),
        ];
        crate::atomic_dir::write_generation(tmp.path(), &files).unwrap();
        let set = SetConfig {
            name: "t".into(),
            paths: CredentialPaths::resolve(Some(tmp.path()), None, None, None, None).unwrap(),
            policy: Policy::default(),
        };
        let (store, metrics) = (Store::new("t"), Metrics::new());
        metrics.init_set("t");
        let report = Report {
            store: &store,
            metrics: &metrics,
            set: "t",
        };
        assert_eq!(reload_once(&set, &report).await, Next::Wait);
        assert_eq!(store.load().map(|p| p.generation), Some(1));
        assert_eq!(reload_once(&set, &report).await, Next::Wait);
        assert_eq!(
            store.load().map(|p| p.generation),
            Some(1),
            "unchanged twice"
        );
        let text = metrics.encode();
        for series in [
            r#"mtls_sidecar_reloads_total{set="t",result="success"} 1"#,
            r#"mtls_sidecar_reloads_total{set="t",result="unchanged"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_refused_files_are_reported_once_until_something_is_published() {
        let ca = crate::test_pki::TestCa::new();
        let (a, b, good) = (ca.server(), ca.server(), ca.server());
        let tmp = tempfile::tempdir().unwrap();
        let write = |cert: &crate::test_pki::TestLeaf, key: &crate::test_pki::TestLeaf| {
            let files: [(&str, &[u8]); 3] = [
                ("tls.crt", cert.cert_pem.as_bytes()),
                ("tls.key", key.key_pem.as_bytes()),
                ("ca.crt", ca.pem.as_bytes()),
            ];
            crate::atomic_dir::write_generation(tmp.path(), &files).unwrap();
        };
        let set = SetConfig {
            name: "t".into(),
            paths: CredentialPaths::resolve(Some(tmp.path()), None, None, None, None).unwrap(),
            policy: Policy::default(),
        };
        let (store, metrics) = (Store::new("t"), Metrics::new());
        metrics.init_set("t");
        let report = Report {
            store: &store,
            metrics: &metrics,
            set: "t",
        };
        let failures = || {
            let series = r#"mtls_sidecar_reloads_total{set="t",result="failure"} "#;
            let text = metrics.encode();
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .map(|n| n.trim().to_string())
                .unwrap_or_else(|| panic!("no {series}in\n{text}"))
        };
        let refused_at = || store.last_error().expect("refused").at;
        // Nothing served yet, a mismatched pair: refused once, however often it is read.
        write(&a, &b);
        reload_once(&set, &report).await;
        assert_eq!(failures(), "1");
        let first = refused_at();
        reload_once(&set, &report).await;
        reload_once(&set, &report).await;
        assert_eq!(failures(), "1", "the same files counted again");
        assert_eq!(refused_at(), first, "last_error stays the first refusal");
        // The same files in a new generation are still the same content.
        write(&a, &b);
        reload_once(&set, &report).await;
        assert_eq!(failures(), "1");
        // Other bad files: news.
        write(&b, &a);
        reload_once(&set, &report).await;
        assert_eq!(failures(), "2");
        // The first bad files again: news too (not the last refused).
        write(&a, &b);
        reload_once(&set, &report).await;
        assert_eq!(failures(), "3");
        // A publish in between: the same bad files again are a new refusal.
        write(&good, &good);
        reload_once(&set, &report).await;
        assert_eq!(store.load().map(|p| p.generation), Some(1));
        write(&a, &b);
        reload_once(&set, &report).await;
        reload_once(&set, &report).await;
        assert_eq!(failures(), "4");
        // Back to what is served (the refusal clears), then the same bad files: again news.
        write(&good, &good);
        reload_once(&set, &report).await;
        assert!(store.last_error().is_none());
        write(&a, &b);
        reload_once(&set, &report).await;
        assert_eq!(failures(), "5");
        // Files that cannot be read: the same error once too.
        std::fs::remove_file(tmp.path().join("..data").join("tls.key")).unwrap();
        for _ in 0..3 {
            reload_once(&set, &report).await;
        }
        assert_eq!(failures(), "6");
        let missing = r#"mtls_sidecar_reload_failures_total{set="t",reason="missing_file"} 1"#;
        assert!(metrics.encode().contains(missing), "{}", metrics.encode());
    }

    fn mismatch() -> ValidateError {
        ValidateError::KeyMismatch {
            key: "/v/tls.key".into(),
            cert: "/v/tls.crt".into(),
            serial: "01".into(),
        }
    }

    #[test]
    fn a_refusal_within_one_generation_is_settled() {
        let gen = |g: Option<&str>| g.map(PathBuf::from);
        let files = |key: Option<&str>, cert: Option<&str>| {
            vec![
                ("/v/tls.crt".into(), gen(cert)),
                ("/v/tls.key".into(), gen(key)),
                ("/ca/ca.crt".into(), gen(Some("/ca/..2"))),
            ]
        };
        assert!(settled(&mismatch(), &files(Some("/v/..1"), Some("/v/..1"))));
        // Plain files: a writer may be between the two.
        assert!(!settled(&mismatch(), &files(None, None)));
        assert!(!settled(&mismatch(), &files(Some("/v/..1"), None)));
        // Two volumes: updated at different moments.
        let chain = ValidateError::UntrustedChain {
            cert: "/v/tls.crt".into(),
            ca: "/ca/ca.crt".into(),
            detail: String::new(),
        };
        assert!(!settled(&chain, &files(Some("/v/..1"), Some("/v/..1"))));
        let expired = ValidateError::Expired {
            path: "/v/tls.crt".into(),
            serial: "01".into(),
            not_after: String::new(),
            ago: String::new(),
        };
        assert!(settled(&expired, &files(None, Some("/v/..1"))));
        assert!(!settled(&expired, &files(None, None)));
    }
}
