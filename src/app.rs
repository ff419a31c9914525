//! Wiring: builds the stages of a long-running subcommand (store, watcher, reload task, then
//! actions for `watch` or a TLS listener for `server`/`client`, and the admin endpoint), owns their tasks,
//! and shuts them down on SIGTERM/SIGINT. Signal handlers are installed before anything else
//! (see [`crate::signals`]): SIGHUP asks the reload task for a re-read, a SIGTERM that arrives
//! during start-up drains like a later one. The only module that knows every stage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::actions::{self, Action};
use crate::admin::{self, AdminState, Listen};
use crate::creds::store::Store;
use crate::metrics::Metrics;
use crate::proxy::handshake::HandshakeFailure;
use crate::proxy::inbound::{Allow, Inbound};
use crate::proxy::listener::{self, Handler, Shared};
use crate::proxy::outbound::{Outbound, Remote};
use crate::proxy::{ListenerConfig, ListenerStats};
use crate::reload::{self, SetConfig};
use crate::signals::{Received, Signals};
use crate::tls::Pins;
use crate::watch::{self, Trigger, WatchConfig};

/// An address that could not be bound at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the admin endpoint cannot listen on {addr}: {source} (port in use? use another address, or turn it off)")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name} cannot listen on {addr}: {source} (port in use, or not allowed?)")]
    Listener {
        name: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How credentials are watched, for every long-running subcommand.
#[derive(Clone, Debug)]
pub struct CorePlan {
    pub set: SetConfig,
    pub poll_interval: Duration,
    pub debounce: Duration,
    pub admin: Listen,
}

/// A checked `watch` invocation.
#[derive(Debug)]
pub struct WatchPlan {
    pub core: CorePlan,
    pub actions: Vec<Action>,
    pub pacing: actions::Pacing,
}

/// A checked `server` invocation.
#[derive(Debug)]
pub struct ServerPlan {
    pub core: CorePlan,
    pub listener: ListenerConfig,
    pub allow: Allow,
    pub shutdown_grace: Duration,
}

/// A checked `client` invocation.
#[derive(Debug)]
pub struct ClientPlan {
    pub core: CorePlan,
    pub listener: ListenerConfig,
    pub remote: Remote,
    pub pins: Pins,
    pub shutdown_grace: Duration,
}

/// The running credential pipeline of one set.
struct Core {
    cancel: CancellationToken,
    /// Cancelled by SIGTERM/SIGINT.
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    /// Set when the drain starts; `/readyz` reads it.
    draining: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

fn start_core(plan: &CorePlan, signals: Signals) -> Core {
    let cancel = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let store = Store::new(plan.set.name.clone());
    // Every series of the set at zero, so rate() and increase() work from the start.
    metrics.init_set(&plan.set.name);
    let mut tasks = JoinSet::new();
    let (tx, rx) = mpsc::channel(1);
    tasks.spawn(handle_signals(
        signals,
        vec![tx.clone()],
        shutdown.clone(),
        cancel.clone(),
    ));
    let watch_cfg = WatchConfig {
        dirs: watched_dirs(&plan.set),
        debounce: plan.debounce,
        poll: (!plan.poll_interval.is_zero()).then_some(plan.poll_interval),
    };
    tasks.spawn(watch::run(watch_cfg, tx, cancel.clone()));
    tasks.spawn(reload::run(
        plan.set.clone(),
        store.clone(),
        metrics.clone(),
        rx,
        cancel.clone(),
    ));
    Core {
        cancel,
        shutdown,
        metrics,
        store,
        draining: Arc::new(AtomicBool::new(false)),
        tasks,
    }
}

impl Core {
    async fn start_admin(
        &mut self,
        addr: Listen,
        listeners: Vec<Arc<ListenerStats>>,
    ) -> anyhow::Result<()> {
        let Listen::On(addr) = addr else {
            return Ok(());
        };
        let socket = admin::bind(addr)
            .await
            .map_err(|source| BindError::Admin { addr, source })?;
        let state = Arc::new(AdminState {
            stores: vec![self.store.clone()],
            metrics: self.metrics.clone(),
            listeners,
            draining: self.draining.clone(),
        });
        self.tasks
            .spawn(admin::serve(socket, state, self.cancel.clone()));
        Ok(())
    }

    /// Until SIGTERM/SIGINT (Ok), or until a pipeline task ends on its own (Err: nothing would
    /// reload any more, so exit non-zero and let Kubernetes restart the container).
    async fn wait_for_shutdown(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.shutdown.cancelled() => {
                // Not ready from now on, while open connections drain.
                self.draining.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(ended) = self.tasks.join_next() => {
                self.cancel.cancel();
                Err(anyhow::anyhow!("an internal task stopped unexpectedly ({ended:?}); exiting so the container is restarted"))
            }
        }
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs `watch` until SIGTERM or SIGINT; Ok means a clean shutdown (exit 0).
pub async fn run_watch(plan: WatchPlan) -> anyhow::Result<()> {
    let signals = install_signals()?;
    let mut core = start_core(&plan.core, signals);
    core.start_admin(plan.core.admin, Vec::new()).await?;
    core.tasks.spawn(actions::run(
        core.store.clone(),
        plan.actions,
        plan.pacing,
        core.metrics.clone(),
        core.cancel.clone(),
    ));
    core.wait_for_shutdown().await?;
    info!("shutting down");
    core.stop().await;
    Ok(())
}

/// Runs `server` until SIGTERM or SIGINT, then drains for up to the grace period.
pub async fn run_server(plan: ServerPlan) -> anyhow::Result<()> {
    let signals = install_signals()?;
    let reasons = HandshakeFailure::INBOUND;
    let (socket, mut core, shared) =
        start_listener(plan.listener, &plan.core, signals, reasons).await?;
    let handler = Inbound::new(shared, plan.allow);
    core.tasks
        .spawn(handler.follow(core.store.clone(), core.cancel.clone()));
    serve_until_shutdown(socket, core, handler, plan.shutdown_grace).await
}

/// Runs `client` until SIGTERM or SIGINT, then drains for up to the grace period.
pub async fn run_client(plan: ClientPlan) -> anyhow::Result<()> {
    let signals = install_signals()?;
    let reasons = HandshakeFailure::OUTBOUND;
    let (socket, mut core, shared) =
        start_listener(plan.listener, &plan.core, signals, reasons).await?;
    let handler = Outbound::new(shared, plan.remote, plan.pins);
    core.tasks
        .spawn(handler.follow(core.store.clone(), core.cancel.clone()));
    serve_until_shutdown(socket, core, handler, plan.shutdown_grace).await
}

/// Binds the listener (first, so a taken port fails fast), starts the credential pipeline and
/// the admin endpoint, and returns what the connections of this listener share.
async fn start_listener(
    cfg: ListenerConfig,
    plan: &CorePlan,
    signals: Signals,
    reasons: &[HandshakeFailure],
) -> anyhow::Result<(tokio::net::TcpListener, Core, Shared)> {
    let (socket, address) = listener::bind(&cfg)
        .await
        .map_err(|source| BindError::Listener {
            name: cfg.name.clone(),
            addr: cfg.listen,
            source,
        })?;
    let mut core = start_core(plan, signals);
    let shared = Shared::new(cfg, core.metrics.clone(), address, reasons);
    core.start_admin(plan.admin, vec![shared.stats.clone()])
        .await?;
    Ok((socket, core, shared))
}

/// Accepts connections until SIGTERM/SIGINT, then stops accepting and lets open connections
/// finish for up to `grace`.
async fn serve_until_shutdown<H: Handler>(
    socket: tokio::net::TcpListener,
    mut core: Core,
    handler: H,
    grace: Duration,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept = tokio::spawn(listener::serve(
        socket,
        Arc::new(handler),
        shutdown.clone(),
        tracker.clone(),
    ));
    core.wait_for_shutdown().await?;
    info!(grace = ?grace, "shutting down: no new connections, draining open ones");
    shutdown.cancel();
    let _ = accept.await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "shutdown grace period over; closing the remaining connections"
        );
    }
    core.stop().await;
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

fn install_signals() -> anyhow::Result<Signals> {
    Signals::install().context("installing the signal handlers")
}

/// Acts on signals until `cancel`: the first SIGTERM/SIGINT cancels `shutdown`, SIGHUP asks
/// every set's reload task for a re-read, the others are logged and ignored.
async fn handle_signals(
    mut signals: Signals,
    reloads: Vec<mpsc::Sender<Trigger>>,
    shutdown: CancellationToken,
    cancel: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = signals.next() => r,
        };
        match received {
            Received::Shutdown(s) if shutdown.is_cancelled() => {
                info!(signal = %s, "signal received; already shutting down")
            }
            Received::Shutdown(s) => {
                info!(signal = %s, "signal received; shutting down");
                shutdown.cancel();
            }
            Received::Reload(s) => {
                info!(signal = %s, "signal received; re-reading the credentials");
                for tx in &reloads {
                    // A full channel means a reload is already pending: that one reads anew.
                    let _ = tx.try_send(Trigger::Signal);
                }
            }
            Received::Ignored(s) => {
                warn!(signal = %s, "signal ignored (SIGTERM or SIGINT stop, SIGHUP re-reads the credentials)")
            }
        }
    }
}
