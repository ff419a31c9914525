//! Wiring: builds the stages of one `watch` process (store, watcher, reload task, actions,
//! admin endpoint), owns their tasks, and shuts them down on SIGTERM/SIGINT. The only module
//! that knows every stage.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::actions::{self, Action};
use crate::admin::{self, AdminState};
use crate::cli::{Listen, ReloadArgs};
use crate::creds::store::Store;
use crate::metrics::Metrics;
use crate::reload::{self, SetConfig};
use crate::watch::{self, WatchConfig};

/// A checked `watch` invocation.
#[derive(Debug)]
pub struct WatchPlan {
    pub set: SetConfig,
    pub poll_interval: Duration,
    pub debounce: Duration,
    pub admin: Listen,
    pub actions: Vec<Action>,
    pub act_on_start: bool,
}

impl WatchPlan {
    pub fn new(
        set: SetConfig,
        reload: &ReloadArgs,
        admin: Listen,
        actions: Vec<Action>,
        act_on_start: bool,
    ) -> Self {
        WatchPlan {
            set,
            poll_interval: reload.poll_interval,
            debounce: reload.debounce,
            admin,
            actions,
            act_on_start,
        }
    }
}

/// Runs `watch` until SIGTERM or SIGINT; Ok means a clean shutdown (exit 0).
pub async fn run_watch(plan: WatchPlan) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let store = Store::new(plan.set.name.clone(), metrics.clone());
    let mut tasks = tokio::task::JoinSet::new();

    if let Listen::On(addr) = plan.admin {
        let listener = admin::bind(addr).await.with_context(|| {
            format!(
                "--admin-listen {addr}: cannot listen (port in use? use another address or `off`)"
            )
        })?;
        let state = Arc::new(AdminState {
            stores: vec![store.clone()],
            metrics: metrics.clone(),
        });
        tasks.spawn(admin::serve(listener, state, cancel.clone()));
    }

    let (tx, rx) = mpsc::channel(1);
    let watch_cfg = WatchConfig {
        dirs: watched_dirs(&plan.set),
        debounce: plan.debounce,
        poll: (!plan.poll_interval.is_zero()).then_some(plan.poll_interval),
    };
    tasks.spawn(watch::run(watch_cfg, tx, cancel.clone()));
    tasks.spawn(reload::run(
        plan.set.clone(),
        store.clone(),
        rx,
        cancel.clone(),
    ));
    tasks.spawn(actions::run(
        store.clone(),
        plan.actions,
        plan.act_on_start,
        metrics.clone(),
        cancel.clone(),
    ));

    wait_for_shutdown_signal().await?;
    info!("shutting down");
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Parent directories of every file of the set, each once.
fn watched_dirs(set: &SetConfig) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = set
        .paths
        .files()
        .filter_map(|(_, p)| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    ".".into()
                } else {
                    d.to_path_buf()
                }
            })
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
