//! What `watch` does after a publish. The runner follows a store's generations (a `watch`
//! channel, so changes that arrive while an action runs coalesce into one run for the newest
//! generation), runs at most once per `--min-interval`, and runs the configured actions in
//! order. A failed action is retried with backoff until it succeeds or a newer generation
//! supersedes it. A failed verify means the app did not take the new files (nginx answers a
//! SIGHUP even when its reload fails): each of its retries first runs the actions before it that
//! tell the app (signal, exec, webhook) again. A verify ends as soon as a newer generation is
//! published (the app may already serve that one; its own run verifies it). The first publish is
//! only staged unless `--act-on-start`: the app started with those files.

pub mod error;
pub mod exec;
pub mod outcome;
pub mod signal;
pub mod stage;
pub mod verify;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::creds::store::{Published, Store};
use crate::metrics::{ActionLabels, Metrics};

pub use error::ActionError;
pub use outcome::ActionOk;

/// Pauses between attempts at a failed action.
const RETRY_BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// One configured action.
#[derive(Clone, Debug)]
pub enum Action {
    Stage(stage::StageAction),
    Signal(signal::SignalAction),
    Exec(exec::ExecAction),
    Webhook(webhook::WebhookAction),
    Verify(verify::VerifyAction),
    /// A scripted action for the runner's tests.
    #[cfg(test)]
    Fake(tests::Fake),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stage(_) => "stage",
            Action::Signal(_) => "signal",
            Action::Exec(_) => "exec",
            Action::Webhook(_) => "webhook",
            Action::Verify(_) => "verify",
            #[cfg(test)]
            Action::Fake(a) => a.name,
        }
    }

    /// Every `reason` a failure of this action can have.
    pub fn failure_reasons(&self) -> &'static [&'static str] {
        match self {
            Action::Stage(_) => error::StageError::REASONS,
            Action::Signal(_) => error::SignalError::REASONS,
            Action::Exec(_) => error::ExecError::REASONS,
            Action::Webhook(_) => error::WebhookError::REASONS,
            Action::Verify(_) => error::VerifyError::REASONS,
            #[cfg(test)]
            Action::Fake(_) => error::ExecError::REASONS,
        }
    }

    fn is_verify(&self) -> bool {
        match self {
            Action::Verify(_) => true,
            #[cfg(test)]
            Action::Fake(a) => a.name == "verify",
            _ => false,
        }
    }

    /// Staging also runs for the first bundle and does not start the `--min-interval` window.
    fn is_stage(&self) -> bool {
        match self {
            Action::Stage(_) => true,
            #[cfg(test)]
            Action::Fake(a) => a.stage,
            _ => false,
        }
    }

    async fn run(&self, set: &str, published: &Published) -> Result<ActionOk, ActionError> {
        match self {
            Action::Stage(a) => Ok(a.run(published).await?),
            Action::Signal(a) => Ok(a.run().await?),
            Action::Exec(a) => Ok(a.run(set, published).await?),
            Action::Webhook(a) => Ok(a.run(set, published).await?),
            Action::Verify(a) => Ok(a.run(published).await?),
            #[cfg(test)]
            Action::Fake(a) => a.run(published).await,
        }
    }
}

/// How the runner paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    pub act_on_start: bool,
    pub min_interval: Duration,
}

/// Where a watch's actions begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At start-up: the app started with the set's first bundle.
    Startup,
    /// Added by a configuration change: the app already has this generation of the set.
    After(u64),
    /// Its set was replaced by one serving other credentials: act on what it serves.
    Replaced,
}

/// Runs `actions` for every generation of `store` after where it `start`s, until `cancel`.
pub async fn run(
    store: Arc<Store>,
    actions: Vec<Action>,
    pacing: Pacing,
    metrics: Arc<Metrics>,
    start: Start,
    cancel: CancellationToken,
) {
    // Every series at zero, so rate() and increase() work from the start.
    for a in &actions {
        let _ = metrics.actions.get_or_create(&ActionLabels {
            set: store.set().into(),
            action: a.name(),
            result: "success",
            reason: None,
        });
        for reason in a.failure_reasons() {
            let _ = metrics.actions.get_or_create(&ActionLabels {
                set: store.set().into(),
                action: a.name(),
                result: "failure",
                reason: Some(reason),
            });
        }
    }
    let mut generations = store.subscribe();
    let mut last_acted = match start {
        Start::Startup | Start::Replaced => 0,
        Start::After(generation) => generation,
    };
    let mut last_run: Option<Instant> = None;
    loop {
        // Look before waiting: a publish may have happened before this task subscribed.
        let newer = store.load().filter(|p| p.generation > last_acted);
        let Some(published) = newer else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = generations.changed() => if changed.is_err() { return },
            }
            continue;
        };
        if let Some(t) = last_run {
            // Coalesce: whatever is published meanwhile is picked up by the load above.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(t + pacing.min_interval) => {}
            }
            if store
                .load()
                .is_some_and(|p| p.generation > published.generation)
            {
                continue;
            }
        }
        last_acted = published.generation;
        // The app started with the first bundle's files: only staging runs for it (the app may
        // read the staged copy), unless --act-on-start.
        let first = start == Start::Startup && published.generation == 1 && !pacing.act_on_start;
        let due: Vec<&Action> = actions.iter().filter(|a| !first || a.is_stage()).collect();
        // Only a run that signals, executes or posts starts the --min-interval window.
        if due.iter().any(|a| !a.is_stage()) {
            last_run = Some(Instant::now());
        }
        tokio::select! {
            // Shutdown does not wait for an action; a child process is killed on drop.
            _ = cancel.cancelled() => return,
            () = run_generation(&due, &store, &published, &metrics) => {}
        }
    }
}

/// Runs one generation's `due` actions in order (see the module docs).
async fn run_generation(due: &[&Action], store: &Store, published: &Published, metrics: &Metrics) {
    for (i, action) in due.iter().enumerate() {
        if action.is_verify() {
            let tell: Vec<&Action> = due[..i]
                .iter()
                .copied()
                .filter(|a| !a.is_stage() && !a.is_verify())
                .collect();
            verify_with_retries(action, &tell, store, published, metrics).await;
        } else {
            run_with_retries(action, store, published, metrics).await;
        }
    }
}

fn superseded(store: &Store, published: &Published) -> bool {
    store
        .load()
        .is_some_and(|p| p.generation > published.generation)
}

/// Runs the verify `action` until it succeeds, retries run out, or a newer generation is
/// published (which also ends an attempt in progress, unreported). Before each retry the `tell`
/// actions run again: the app did not take the files it was told about.
async fn verify_with_retries(
    action: &Action,
    tell: &[&Action],
    store: &Store,
    published: &Published,
    metrics: &Metrics,
) {
    let mut generations = store.subscribe();
    let mut backoff = RETRY_BACKOFF.iter();
    loop {
        let newer = generations.wait_for(|g| *g > published.generation);
        let outcome = tokio::select! {
            outcome = action.run(store.set(), published) => outcome,
            _ = newer => return,
        };
        report(action, store, published, metrics, &outcome);
        let Some(pause) = backoff.next().filter(|_| outcome.is_err()) else {
            return;
        };
        tokio::time::sleep(*pause).await;
        if superseded(store, published) {
            return;
        }
        for again in tell {
            run_with_retries(again, store, published, metrics).await;
        }
    }
}

/// Logs and counts one attempt of `action`.
fn report(
    action: &Action,
    store: &Store,
    published: &Published,
    metrics: &Metrics,
    outcome: &Result<ActionOk, ActionError>,
) {
    crate::events::action_done(
        metrics,
        store.set(),
        action.name(),
        published.generation,
        match outcome {
            Ok(detail) => Ok(detail),
            Err(e) => Err((e.reason(), e)),
        },
    );
}

/// Runs `action` until it succeeds, retries run out, or a newer generation is published.
async fn run_with_retries(
    action: &Action,
    store: &Store,
    published: &Published,
    metrics: &Metrics,
) {
    let mut backoff = RETRY_BACKOFF.iter();
    loop {
        let outcome = action.run(store.set(), published).await;
        report(action, store, published, metrics, &outcome);
        let Some(pause) = backoff.next().filter(|_| outcome.is_err()) else {
            return;
        };
        tokio::time::sleep(*pause).await;
        if superseded(store, published) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::creds::load::{RawBundle, RawFile};
    use crate::creds::paths::FileRole;
    use crate::creds::validate::{validate, Policy};

    /// (action name, generation, seconds since the test started) of every attempt, in order.
    type Log = Arc<Mutex<Vec<(&'static str, u64, u64)>>>;

    /// A scripted action: logs each attempt when it starts, takes `takes`, and fails (as an
    /// exec timeout) while `failures` is above zero.
    #[derive(Clone, Debug)]
    pub struct Fake {
        pub(super) name: &'static str,
        pub(super) stage: bool,
        takes: Duration,
        failures: Arc<AtomicUsize>,
        log: Log,
        t0: Instant,
    }

    impl Fake {
        pub(super) async fn run(&self, p: &Published) -> Result<ActionOk, ActionError> {
            let at = (Instant::now() - self.t0).as_secs();
            self.log.lock().unwrap().push((self.name, p.generation, at));
            tokio::time::sleep(self.takes).await;
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(error::ExecError::Timeout {
                    program: self.name.into(),
                    after: self.takes,
                }
                .into());
            }
            Ok(ActionOk::Exited {
                program: self.name.into(),
            })
        }
    }

    /// A validated bundle made of a fresh rcgen CA and server leaf, as raw PEM files.
    fn raw_bundle() -> RawBundle {
        let ca = crate::test_pki::TestCa::new();
        let leaf = ca.server();
        let file = |role, name: &str, pem: String| {
            RawFile::new(role, format!("/t/{name}"), pem.into_bytes())
        };
        RawBundle {
            cert: file(FileRole::Cert, "tls.crt", leaf.cert_pem),
            key: file(FileRole::Key, "tls.key", leaf.key_pem),
            ca: file(FileRole::Ca, "ca.crt", ca.pem),
            peer_ca: None,
        }
    }

    /// A runner on its own store, with fakes that share one log.
    struct Harness {
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        raw: RawBundle,
        log: Log,
        t0: Instant,
        cancel: CancellationToken,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Harness {
        fn new() -> Self {
            let metrics = Arc::new(Metrics::new());
            Harness {
                store: Store::new("t"),
                metrics,
                raw: raw_bundle(),
                log: Log::default(),
                t0: Instant::now(),
                cancel: CancellationToken::new(),
                task: None,
            }
        }

        /// An action named `name` (`stage` acts as staging) that takes `takes` and fails its
        /// first `failures` attempts.
        fn fake(&self, name: &'static str, takes: Duration, failures: usize) -> Action {
            Action::Fake(Fake {
                name,
                stage: name == "stage",
                takes,
                failures: Arc::new(AtomicUsize::new(failures)),
                log: self.log.clone(),
                t0: self.t0,
            })
        }

        fn start(&mut self, actions: Vec<Action>, act_on_start: bool, min_interval: Duration) {
            let pacing = Pacing {
                act_on_start,
                min_interval,
            };
            self.task = Some(tokio::spawn(run(
                self.store.clone(),
                actions,
                pacing,
                self.metrics.clone(),
                Start::Startup,
                self.cancel.clone(),
            )));
        }

        /// Publishes a new generation `at` seconds after the start.
        async fn publish_at(&self, at: u64) {
            tokio::time::sleep_until(self.t0 + secs(at)).await;
            let bundle = validate(self.raw.clone(), &Policy::default(), SystemTime::now())
                .expect("test bundle is valid");
            self.store.publish(bundle);
        }

        /// Lets the runner work until `at` seconds after the start, stops it, and returns the log.
        async fn log_at(&mut self, at: u64) -> Vec<(&'static str, u64, u64)> {
            tokio::time::sleep_until(self.t0 + secs(at)).await;
            self.cancel.cancel();
            if let Some(task) = self.task.take() {
                task.await.unwrap();
            }
            self.log.lock().unwrap().clone()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_during_a_run_coalesce_into_one_run_for_the_newest() {
        let mut h = Harness::new();
        let signal = h.fake("signal", secs(5), 0);
        h.start(vec![signal], false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        // The run for generation 2 lasts until 6 s; 3 and 4 arrive meanwhile.
        h.publish_at(2).await;
        h.publish_at(3).await;
        assert_eq!(h.log_at(30).await, [("signal", 2, 1), ("signal", 4, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_within_min_interval_coalesce_into_one_run_at_its_end() {
        let mut h = Harness::new();
        let signal = h.fake("signal", Duration::ZERO, 0);
        h.start(vec![signal], false, secs(10));
        h.publish_at(0).await;
        h.publish_at(1).await;
        h.publish_at(2).await;
        h.publish_at(5).await;
        // Past the window: at once.
        h.publish_at(30).await;
        assert_eq!(
            h.log_at(60).await,
            [("signal", 2, 1), ("signal", 4, 11), ("signal", 5, 30)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_publish_is_only_staged_unless_act_on_start() {
        let mut h = Harness::new();
        let actions = vec![
            h.fake("stage", Duration::ZERO, 0),
            h.fake("signal", Duration::ZERO, 0),
        ];
        h.start(actions, false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        assert_eq!(
            h.log_at(10).await,
            [("stage", 1, 0), ("stage", 2, 1), ("signal", 2, 1)]
        );

        let mut h = Harness::new();
        let actions = vec![
            h.fake("stage", Duration::ZERO, 0),
            h.fake("signal", Duration::ZERO, 0),
        ];
        h.start(actions, true, Duration::ZERO);
        h.publish_at(0).await;
        assert_eq!(h.log_at(10).await, [("stage", 1, 0), ("signal", 1, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_run_that_does_more_than_stage_starts_the_min_interval_window() {
        let mut h = Harness::new();
        let actions = vec![
            h.fake("stage", Duration::ZERO, 0),
            h.fake("signal", Duration::ZERO, 0),
        ];
        h.start(actions, false, secs(10));
        // Staging the first bundle at 0 s opens no window: generation 2 is acted on at once.
        h.publish_at(0).await;
        h.publish_at(1).await;
        // That run did open one: generation 3 waits until 11 s, staging included.
        h.publish_at(2).await;
        assert_eq!(
            h.log_at(30).await,
            [
                ("stage", 1, 0),
                ("stage", 2, 1),
                ("signal", 2, 1),
                ("stage", 3, 11),
                ("signal", 3, 11),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_when_a_newer_generation_arrives() {
        let mut h = Harness::new();
        let signal = h.fake("signal", Duration::ZERO, usize::MAX);
        h.start(vec![signal], false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        // Generation 2 is tried at 1, 2 and 4 s; at 8 s (after the 4 s pause) generation 3 is
        // there: generation 2 is dropped and 3 tried, then retried after 1, 2, 4, 8 and 16 s.
        h.publish_at(5).await;
        let log = h.log_at(120).await;
        let at = |generation| -> Vec<u64> {
            log.iter()
                .filter(|(_, g, _)| *g == generation)
                .map(|(_, _, at)| *at)
                .collect()
        };
        assert_eq!(at(2), [1, 2, 4]);
        assert_eq!(at(3), [8, 9, 11, 15, 23, 39]);
        let text = h.metrics.encode();
        for series in [
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="failure",reason="timeout"} 9"#,
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="failure",reason="spawn_failed"} 0"#,
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="success"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_first_success() {
        let mut h = Harness::new();
        let signal = h.fake("signal", Duration::ZERO, 2);
        h.start(vec![signal], false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        assert_eq!(
            h.log_at(60).await,
            [("signal", 2, 1), ("signal", 2, 2), ("signal", 2, 4)]
        );
        let text = h.metrics.encode();
        for series in [
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="failure",reason="timeout"} 2"#,
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="success"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_verify_tells_the_app_again_before_each_retry() {
        let mut h = Harness::new();
        let actions = vec![
            h.fake("stage", Duration::ZERO, 0),
            h.fake("signal", Duration::ZERO, 0),
            h.fake("verify", Duration::ZERO, 2),
        ];
        h.start(actions, false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        assert_eq!(
            h.log_at(60).await,
            [
                ("stage", 1, 0),
                ("stage", 2, 1),
                ("signal", 2, 1),
                ("verify", 2, 1),
                // After 1 s: signal again, then look again; after 2 s more, the same.
                ("signal", 2, 2),
                ("verify", 2, 2),
                ("signal", 2, 4),
                ("verify", 2, 4),
            ]
        );
        let text = h.metrics.encode();
        for series in [
            r#"mtls_sidecar_actions_total{set="t",action="verify",result="success"} 1"#,
            r#"mtls_sidecar_actions_total{set="t",action="signal",result="success"} 3"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_generation_ends_a_verify_in_progress_unreported() {
        let mut h = Harness::new();
        let actions = vec![
            h.fake("signal", Duration::ZERO, 0),
            h.fake("verify", secs(10), 0),
        ];
        h.start(actions, false, Duration::ZERO);
        h.publish_at(0).await;
        h.publish_at(1).await;
        // Generation 2's verify would take until 11 s; generation 3 arrives at 3 s.
        h.publish_at(3).await;
        assert_eq!(
            h.log_at(60).await,
            [
                ("signal", 2, 1),
                ("verify", 2, 1),
                ("signal", 3, 3),
                ("verify", 3, 3),
            ]
        );
        let text = h.metrics.encode();
        for series in [
            r#"mtls_sidecar_actions_total{set="t",action="verify",result="success"} 1"#,
            r#"mtls_sidecar_actions_total{set="t",action="verify",result="failure",reason="timeout"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn success_details_read_as_before() {
        let signalled = ActionOk::Signalled {
            signal: nix::sys::signal::Signal::SIGHUP,
            pids: vec![7, 8],
        };
        assert_eq!(signalled.to_string(), "sent SIGHUP to pid 7, 8");
        let staged = ActionOk::Staged {
            dir: "/etc/tls/staged".into(),
        };
        assert_eq!(staged.to_string(), "staged into /etc/tls/staged");
    }
}
