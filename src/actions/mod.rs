//! What `watch` does after a publish. The runner follows a store's generations (a `watch`
//! channel, so changes that arrive while an action runs coalesce into one run for the newest
//! generation), runs at most once per `--min-interval`, and runs the configured actions in
//! order. A failed action is retried with backoff until it succeeds or a newer generation
//! supersedes it. The first publish is only staged unless `--act-on-start`: the app started
//! with those files.

pub mod exec;
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
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stage(_) => "stage",
            Action::Signal(_) => "signal",
            Action::Exec(_) => "exec",
            Action::Webhook(_) => "webhook",
            Action::Verify(_) => "verify",
        }
    }

    async fn run(&self, set: &str, published: &Published) -> Result<String, String> {
        match self {
            Action::Stage(a) => a.run(published).await,
            Action::Signal(a) => a.run().await,
            Action::Exec(a) => a.run(set, published).await,
            Action::Webhook(a) => a.run(set, published).await,
            Action::Verify(a) => a.run(published).await,
        }
    }
}

/// How the runner paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    pub act_on_start: bool,
    pub min_interval: Duration,
}

/// Runs `actions` for every new generation of `store` until `cancel`.
pub async fn run(
    store: Arc<Store>,
    actions: Vec<Action>,
    pacing: Pacing,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    for a in &actions {
        for result in ["success", "failure"] {
            let _ = metrics.actions.get_or_create(&ActionLabels {
                set: store.set().into(),
                action: a.name(),
                result,
            });
        }
    }
    let mut generations = store.subscribe();
    let mut last_acted = 0;
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
        let first = published.generation == 1 && !pacing.act_on_start;
        let due: Vec<&Action> = actions
            .iter()
            .filter(|a| !first || matches!(a, Action::Stage(_)))
            .collect();
        // Only a run that signals, executes or posts starts the --min-interval window.
        if due.iter().any(|a| !matches!(a, Action::Stage(_))) {
            last_run = Some(Instant::now());
        }
        for action in due {
            tokio::select! {
                // Shutdown does not wait for an action; a child process is killed on drop.
                _ = cancel.cancelled() => return,
                () = run_with_retries(action, &store, &published, &metrics) => {}
            }
        }
    }
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
        let ok = outcome.is_ok();
        crate::events::action_done(
            metrics,
            store.set(),
            action.name(),
            published.generation,
            outcome,
        );
        let Some(pause) = backoff.next().filter(|_| !ok) else {
            return;
        };
        tokio::time::sleep(*pause).await;
        if store
            .load()
            .is_some_and(|p| p.generation > published.generation)
        {
            return;
        }
    }
}
