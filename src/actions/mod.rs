//! What `watch` does after a publish. The runner follows a store's generations (a `watch`
//! channel, so changes that arrive while an action runs coalesce into one run for the newest
//! generation) and runs the configured actions in order. The first publish is not acted on
//! unless `--act-on-start`: the app started with those files.

pub mod exec;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::creds::store::{Published, Store};
use crate::metrics::Metrics;

/// One configured action.
#[derive(Clone, Debug)]
pub enum Action {
    Exec(exec::ExecAction),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Exec(_) => "exec",
        }
    }

    async fn run(&self, set: &str, published: &Published) -> Result<String, String> {
        match self {
            Action::Exec(a) => a.run(set, published).await,
        }
    }
}

/// Runs `actions` for every new generation of `store` until `cancel`.
pub async fn run(
    store: Arc<Store>,
    actions: Vec<Action>,
    act_on_start: bool,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut generations = store.subscribe();
    let mut last_acted = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = generations.changed() => if changed.is_err() { return },
        }
        let Some(published) = store.load() else {
            continue;
        };
        if published.generation <= last_acted {
            continue;
        }
        last_acted = published.generation;
        if published.generation == 1 && !act_on_start {
            continue;
        }
        for action in &actions {
            let outcome = action.run(store.set(), &published).await;
            crate::events::action_done(
                &metrics,
                store.set(),
                action.name(),
                published.generation,
                outcome,
            );
        }
    }
}
