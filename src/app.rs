//! Wiring: runs a checked [`Config`] (one or several credential sets, `server` and `client`
//! listeners, watch actions) in one process with one metrics registry, one admin endpoint and
//! one shutdown. `server`, `client` and `watch` run a one-set configuration made from their
//! flags; `run --config` one from a file, which is read again on SIGHUP and when its directory
//! changes (a ConfigMap's `..data` swap): a new configuration is checked and applied part by
//! part (what did not change keeps running, open connections included), a broken one is
//! refused and the running one stays. Signal handlers are installed before anything else (see
//! [`crate::signals`]). The only module that knows every stage.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::actions;
use crate::admin::{self, AdminState, ConfigStatus, Listen};
use crate::config::model::{ListenerPlan, Role, SetPlan, WatchPlan};
use crate::config::{self, Config, RawConfig};
use crate::creds::store::Store;
use crate::events;
use crate::limits;
use crate::metrics::Metrics;
use crate::proxy::handshake::HandshakeFailure;
use crate::proxy::inbound::Inbound;
use crate::proxy::listener::{self, Handler, ListenerStats, Shared};
use crate::proxy::outbound::Outbound;
use crate::reload::{self, SetConfig};
use crate::signals::{Received, Signals};
use crate::watch::{self, Trigger, WatchConfig};

/// An address that could not be bound at start-up. The OS error is part of the message, not
/// a `source`: printed with its chain (`{:#}`) it would appear twice.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the admin endpoint cannot listen on {addr}: {error}{}", bind_hint(.error, .addr, "use another address, or turn it off"))]
    Admin {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("listener {name} cannot listen on {addr}: {error}{}", bind_hint(.error, .addr, ""))]
    Listener {
        name: String,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// What a bind error likely means, and `advice`, in parentheses (empty when neither applies).
fn bind_hint(error: &std::io::Error, addr: &std::net::SocketAddr, advice: &str) -> String {
    use std::io::ErrorKind;
    let why = match error.kind() {
        ErrorKind::AddrInUse => Some("another socket already listens on this port"),
        ErrorKind::PermissionDenied if addr.port() < 1024 => {
            Some("a port below 1024 needs CAP_NET_BIND_SERVICE")
        }
        ErrorKind::AddrNotAvailable => Some("no network interface here has this address"),
        _ => None,
    };
    match (why, advice.is_empty()) {
        (None, true) => String::new(),
        (None, false) => format!(" ({advice})"),
        (Some(why), true) => format!(" ({why})"),
        (Some(why), false) => format!(" ({why}; {advice})"),
    }
}

/// The file a configuration came from, for `run --config` (read again when it changes).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    /// What runs now.
    raw: RawConfig,
    /// The SHA-256 of the text last read (applied or refused): an event that leaves the file
    /// as it was is not a new configuration.
    seen: [u8; 32],
    /// The pending refusal: the text's SHA-256 (zeros if none could be read) and the message.
    /// The same again (a poll re-trying a text that failed for a reason outside the file,
    /// SIGHUP) is not reported again.
    refused: Option<([u8; 32], String)>,
}

impl ConfigFile {
    /// `raw` was parsed from `text`, the content of `path`.
    pub fn new(path: PathBuf, text: &str, raw: RawConfig) -> Self {
        ConfigFile {
            path,
            raw,
            seen: Sha256::digest(text.as_bytes()).into(),
            refused: None,
        }
    }
}

/// How a task ended: on purpose (its token was cancelled) or not (a bug: the process exits
/// so the container is restarted).
struct Ended {
    name: String,
    expected: bool,
}

/// Runs `config` until SIGTERM or SIGINT, then drains; Ok means a clean shutdown (exit 0).
pub async fn run(config: Config, file: Option<ConfigFile>) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("installing the signal handlers")?;
    let metrics = Arc::new(Metrics::new());
    let admin_state = AdminState::new(metrics.clone());
    let mut rt = Runtime {
        metrics,
        admin: admin_state.clone(),
        tasks: JoinSet::new(),
        drains: TaskTracker::new(),
        cancel: CancellationToken::new(),
        sets: BTreeMap::new(),
        candidates: BTreeMap::new(),
        listeners: BTreeMap::new(),
        watches: Vec::new(),
        grace: config.shutdown_grace,
        admin_listen: config.admin,
    };
    let admin_addr = config.admin;
    // The config file is polled like the credentials (every set has the global interval).
    let poll = config.sets.first().and_then(|s| s.poll_interval);
    rt.apply(config, true).await?;
    if let Listen::On(addr) = admin_addr {
        let socket = admin::bind(addr)
            .await
            .map_err(|error| BindError::Admin { addr, error })?;
        rt.spawn(
            "admin",
            admin::serve(socket, admin_state, rt.cancel.clone()),
        );
    }
    // `run --config`: the file's directory is watched like a credential volume.
    let (config_tx, mut config_rx) = mpsc::channel(1);
    let mut current = file;
    if let Some(f) = &current {
        rt.metrics.init_config();
        rt.admin.set_config(ConfigStatus {
            path: f.path.clone(),
            generation: 1,
            loaded_at: SystemTime::now(),
            last_error: None,
        });
        let watch_cfg = WatchConfig {
            dirs: vec![parent_dir(&f.path)],
            debounce: Duration::from_millis(100),
            poll,
        };
        rt.spawn(
            "config watcher",
            watch::run(watch_cfg, config_tx, rt.cancel.clone()),
        );
    }
    loop {
        tokio::select! {
            received = signals.next() => match received {
                Received::Shutdown(s) => {
                    info!(signal = %s, "signal received; shutting down");
                    break;
                }
                Received::Reload(s) => {
                    info!(signal = %s, "signal received; re-reading the credentials");
                    rt.trigger_all();
                    if let Some(f) = &mut current {
                        rt.reload_config(f, true).await;
                    }
                }
                Received::Ignored(s) => {
                    warn!(signal = %s, "signal ignored (SIGTERM or SIGINT stop, SIGHUP re-reads the credentials)")
                }
            },
            Some(_) = config_rx.recv() => {
                if let Some(f) = &mut current {
                    rt.reload_config(f, false).await;
                }
            }
            Some(ended) = rt.tasks.join_next() => match ended {
                Ok(Ended { expected: true, .. }) => {}
                Ok(Ended { name, .. }) => {
                    rt.cancel.cancel();
                    anyhow::bail!("internal task {name} stopped unexpectedly; exiting so the container is restarted");
                }
                Err(e) => {
                    rt.cancel.cancel();
                    anyhow::bail!("an internal task failed ({e}); exiting so the container is restarted");
                }
            },
        }
    }
    // Signals keep arriving while the drain runs: each one is logged, none changes the drain.
    let shutdown = rt.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            received = signals.next() => match received {
                Received::Shutdown(s) => {
                    info!(signal = %s, "signal received; shutdown already under way, nothing changes")
                }
                Received::Reload(s) | Received::Ignored(s) => {
                    warn!(signal = %s, "signal ignored; shutdown already under way")
                }
            },
        }
    }
    Ok(())
}

/// Everything that runs.
struct Runtime {
    metrics: Arc<Metrics>,
    admin: Arc<AdminState>,
    tasks: JoinSet<Ended>,
    /// Listeners removed by a configuration change, finishing their open connections.
    drains: TaskTracker,
    /// Cancels every task.
    cancel: CancellationToken,
    sets: BTreeMap<String, SetRun>,
    /// The store of each new or changed set that had no valid credentials when a configuration
    /// was refused, by name, with the set's fingerprint: the next try of that set (the same text
    /// at the next poll) reads into it again, so a refusal it already reported is not reported
    /// again.
    candidates: BTreeMap<String, (String, Arc<Store>)>,
    listeners: BTreeMap<String, ListenerRun>,
    watches: Vec<WatchRun>,
    grace: Duration,
    admin_listen: Listen,
}

struct SetRun {
    fingerprint: String,
    store: Arc<Store>,
    trigger: mpsc::Sender<Trigger>,
    cancel: CancellationToken,
}

struct ListenerRun {
    fingerprint: String,
    /// The address the configuration gives (port 0 stays 0).
    listen: SocketAddr,
    stats: Arc<ListenerStats>,
    /// Stops accepting.
    stop: CancellationToken,
    /// Closes its connections gracefully (also cancelled by a drain, for a server listener).
    conns: CancellationToken,
    /// The listening socket, once the accept loop stopped (dropped: closed).
    socket: oneshot::Receiver<TcpListener>,
    /// The set it serves, and the task that keeps its TLS config in step with the set's store
    /// (started again on a new store when the set is replaced).
    set: String,
    follow: Follow,
    following: CancellationToken,
    /// Stops the task that follows the store.
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Starts following a store: `(store, cancel)` -> the task.
type Follow = Arc<
    dyn Fn(Arc<Store>, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// The socket a listener about to start will serve.
enum Socket {
    Bound(TcpListener),
    /// That of the running listener of this name, which stops.
    From(String),
}

struct WatchRun {
    fingerprint: String,
    cancel: CancellationToken,
}

impl Runtime {
    fn spawn(&mut self, name: &str, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.spawn_with(name, self.cancel.clone(), fut);
    }

    /// Spawns `fut`; it may end only once `cancel` is cancelled.
    fn spawn_with(
        &mut self,
        name: &str,
        cancel: CancellationToken,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let name = name.to_string();
        self.tasks.spawn(async move {
            fut.await;
            Ended {
                name,
                expected: cancel.is_cancelled(),
            }
        });
    }

    /// Makes the running parts those of `config`: unchanged parts keep running, changed or
    /// removed ones stop (a listener finishes its open connections), new ones start. What can
    /// fail happens before anything stops: a new or changed set must load valid credentials
    /// (except at start-up, where a set waits for its files), and every new listener's socket
    /// is bound (a changed listener that keeps its address takes over the old one's socket).
    /// On an error nothing changed.
    async fn apply(&mut self, config: Config, initial: bool) -> anyhow::Result<()> {
        if !initial && config.admin != self.admin_listen {
            warn!("the admin endpoint's address changed in the configuration; it applies after a restart");
        }
        self.grace = config.shutdown_grace;
        self.admin.drain.set_delay(config.drain_delay);
        let stores = self.load_sets(&config.sets, initial).await?;
        let stopping = stale(
            &self.listeners,
            |run| &run.fingerprint,
            config
                .listeners
                .iter()
                .map(|l| (&l.cfg.name, &l.fingerprint)),
        );
        let sockets = self.sockets(&config.listeners, &stopping)?;
        self.candidates.clear();
        let served_before = self.replace_sets(&config.sets, stores);
        self.replace_listeners(config.listeners, stopping, sockets)
            .await;
        self.replace_watches(config.watches, &served_before, initial);
        self.admin.set_parts(
            self.sets.values().map(|s| s.store.clone()).collect(),
            self.listeners.values().map(|l| l.stats.clone()).collect(),
        );
        Ok(())
    }

    /// A store for every new or changed set. After start-up each one reads and validates its
    /// files first: a set with no valid credentials refuses the whole configuration.
    async fn load_sets(
        &mut self,
        sets: &[SetPlan],
        initial: bool,
    ) -> anyhow::Result<BTreeMap<String, Arc<Store>>> {
        let mut stores = BTreeMap::new();
        for plan in sets {
            let name = &plan.set.name;
            if self
                .sets
                .get(name)
                .is_some_and(|run| run.fingerprint == plan.fingerprint)
            {
                continue;
            }
            let store = match self.candidates.remove(name) {
                Some((fingerprint, store)) if fingerprint == plan.fingerprint => store,
                _ => Store::new(name.clone()),
            };
            // Every series of the set at zero, so rate() and increase() work from the start.
            self.metrics.init_set(name);
            if !initial {
                let report = reload::Report {
                    store: &store,
                    metrics: &self.metrics,
                    set: name,
                };
                let span = info_span!("reload", set = %name, trigger = "Config");
                reload::reload_once(&plan.set, &report)
                    .instrument(span)
                    .await;
                if store.load().is_none() {
                    let why = store
                        .last_error()
                        .map_or_else(|| "no credentials".to_string(), |e| e.message);
                    self.candidates
                        .insert(name.clone(), (plan.fingerprint.clone(), store));
                    anyhow::bail!("set {name:?} has no valid credentials: {why}");
                }
            }
            stores.insert(name.clone(), store);
        }
        Ok(stores)
    }

    /// A socket for every listener that starts: bound now, or (on the address of a listener
    /// that stops) handed over from it, so no connection is refused in between.
    fn sockets(
        &self,
        listeners: &[ListenerPlan],
        stopping: &[String],
    ) -> Result<BTreeMap<String, Socket>, BindError> {
        let mut sockets = BTreeMap::new();
        for plan in listeners {
            let name = &plan.cfg.name;
            if self.listeners.contains_key(name) && !stopping.contains(name) {
                continue;
            }
            let addr = plan.cfg.listen;
            let from = stopping
                .iter()
                .find(|old| addr.port() != 0 && self.listeners[*old].listen == addr);
            let socket = match from {
                Some(old) => Socket::From(old.clone()),
                None => {
                    Socket::Bound(listener::bind(addr).map_err(|error| BindError::Listener {
                        name: name.clone(),
                        addr,
                        error,
                    })?)
                }
            };
            sockets.insert(name.clone(), socket);
        }
        Ok(sockets)
    }

    /// Stops the changed and removed sets and starts the new ones on their `stores`; the
    /// running listeners of a replaced set follow its new store. Returns the content hash each
    /// replaced set served (its watch actions act on the new credentials only if they differ).
    fn replace_sets(
        &mut self,
        sets: &[SetPlan],
        mut stores: BTreeMap<String, Arc<Store>>,
    ) -> BTreeMap<String, [u8; 32]> {
        let stopping = stale(
            &self.sets,
            |run| &run.fingerprint,
            sets.iter().map(|s| (&s.set.name, &s.fingerprint)),
        );
        let mut served_before = BTreeMap::new();
        for name in stopping {
            if let Some(run) = self.sets.remove(&name) {
                info!(set = %name, "credential set stopped (changed or removed)");
                run.cancel.cancel();
                if let Some(p) = run.store.load() {
                    served_before.insert(name, p.bundle.content_hash());
                }
            }
        }
        for plan in sets {
            if let Some(store) = stores.remove(&plan.set.name) {
                self.refollow(&plan.set.name, &store);
                self.start_set(plan, store);
            }
        }
        served_before
    }

    /// Stops the `stopping` listeners (their open connections finish) and starts the new and
    /// changed ones on their `sockets`.
    async fn replace_listeners(
        &mut self,
        listeners: Vec<ListenerPlan>,
        stopping: Vec<String>,
        mut sockets: BTreeMap<String, Socket>,
    ) {
        let mut handed = BTreeMap::new();
        for name in stopping {
            if let Some(run) = self.listeners.remove(&name) {
                info!(listener = %name, "listener stopped (changed or removed); its open connections finish");
                if let Some(socket) = self.drain(run).await {
                    handed.insert(name, socket);
                }
            }
        }
        for plan in listeners {
            let socket = match sockets.remove(&plan.cfg.name) {
                Some(Socket::Bound(socket)) => Some(socket),
                Some(Socket::From(old)) => handed.remove(&old),
                None => continue,
            };
            let (Some(socket), Some(store)) =
                (socket, self.sets.get(&plan.set).map(|s| s.store.clone()))
            else {
                error!(listener = %plan.cfg.name, "listener not started: its socket was lost");
                continue;
            };
            let name = plan.cfg.name.clone();
            if let Err(e) = self.start_listener(plan, store, socket) {
                error!(listener = %name, error = %e, "listener not started");
            }
        }
    }

    /// Keeps the watch entries that did not change (as a multiset of fingerprints), stops the
    /// rest and starts the new ones. One started by a change begins after what is served (the
    /// app has that), unless its set was replaced by one that serves other credentials.
    fn replace_watches(
        &mut self,
        mut wanted: Vec<WatchPlan>,
        served_before: &BTreeMap<String, [u8; 32]>,
        initial: bool,
    ) {
        let mut kept = Vec::new();
        for run in std::mem::take(&mut self.watches) {
            match wanted.iter().position(|w| w.fingerprint == run.fingerprint) {
                Some(i) => {
                    wanted.remove(i);
                    kept.push(run);
                }
                None => run.cancel.cancel(),
            }
        }
        self.watches = kept;
        for plan in wanted {
            let Some(store) = self.sets.get(&plan.set).map(|s| s.store.clone()) else {
                continue;
            };
            let start = match store.load() {
                _ if initial => actions::Start::Startup,
                None => actions::Start::After(0),
                Some(p) => match served_before.get(&plan.set) {
                    Some(before) if *before != p.bundle.content_hash() => actions::Start::Replaced,
                    _ => actions::Start::After(p.generation),
                },
            };
            let cancel = self.cancel.child_token();
            self.spawn_with(
                "watch actions",
                cancel.clone(),
                actions::run(
                    store,
                    plan.actions,
                    plan.pacing,
                    self.metrics.clone(),
                    start,
                    cancel.clone(),
                ),
            );
            self.watches.push(WatchRun {
                fingerprint: plan.fingerprint,
                cancel,
            });
        }
    }

    /// Starts watching and reloading a set into `store` (which may already serve what its files
    /// hold).
    fn start_set(&mut self, plan: &SetPlan, store: Arc<Store>) {
        let name = plan.set.name.clone();
        let cancel = self.cancel.child_token();
        let (tx, rx) = mpsc::channel(1);
        let watch_cfg = WatchConfig {
            dirs: watched_dirs(&plan.set),
            debounce: plan.debounce,
            poll: plan.poll_interval,
        };
        self.spawn_with(
            "credential watcher",
            cancel.clone(),
            watch::run(watch_cfg, tx.clone(), cancel.clone()),
        );
        self.spawn_with(
            "credential reload",
            cancel.clone(),
            reload::run(
                plan.set.clone(),
                store.clone(),
                self.metrics.clone(),
                rx,
                cancel.clone(),
            ),
        );
        self.sets.insert(
            name,
            SetRun {
                fingerprint: plan.fingerprint.clone(),
                store,
                trigger: tx,
                cancel,
            },
        );
    }

    fn start_listener(
        &mut self,
        plan: ListenerPlan,
        store: Arc<Store>,
        socket: TcpListener,
    ) -> std::io::Result<()> {
        let cfg = plan.cfg;
        let address = socket.local_addr()?;
        info!(listener = %cfg.name, %address, target = %cfg.target, "listener bound");
        let (name, listen) = (cfg.name.clone(), cfg.listen);
        let (stop, cancel) = (CancellationToken::new(), self.cancel.child_token());
        let (handover, socket_back) = oneshot::channel();
        // A server listener's connections close at a drain (`/drain`), a client listener's (the
        // app's own calls) only with the listener.
        let conns = match plan.role {
            Role::Server { .. } => self.admin.drain.token().child_token(),
            Role::Client { .. } => CancellationToken::new(),
        };
        let tracker = TaskTracker::new();
        let (stats, follow): (_, Follow);
        match plan.role {
            Role::Server { allow } => {
                let shared = Shared::new(
                    cfg,
                    self.metrics.clone(),
                    address,
                    HandshakeFailure::INBOUND,
                );
                stats = shared.stats.clone();
                let handler = Arc::new(Inbound::new(shared, allow));
                // Done (not failed) once `conns` is cancelled.
                self.spawn_with(
                    "upstream pool",
                    conns.clone(),
                    handler.stop_pooling_at(conns.clone()),
                );
                let h = handler.clone();
                follow = Arc::new(move |store, cancel| Box::pin(h.follow(store, cancel)));
                self.serve(handler, socket, (&stop, &conns), handover, &tracker);
            }
            Role::Client { remote, pins } => {
                let shared = Shared::new(
                    cfg,
                    self.metrics.clone(),
                    address,
                    HandshakeFailure::OUTBOUND,
                );
                stats = shared.stats.clone();
                let handler = Arc::new(Outbound::new(shared, remote, pins));
                let h = handler.clone();
                follow = Arc::new(move |store, cancel| h.follow(store, cancel));
                self.serve(handler, socket, (&stop, &conns), handover, &tracker);
            }
        }
        let following = cancel.child_token();
        self.spawn_with(
            "tls config",
            following.clone(),
            follow(store, following.clone()),
        );
        self.listeners.insert(
            name,
            ListenerRun {
                fingerprint: plan.fingerprint,
                listen,
                set: plan.set,
                stats,
                stop,
                conns,
                socket: socket_back,
                follow,
                following,
                cancel,
                tracker,
            },
        );
        Ok(())
    }

    /// A set was replaced: its running listeners take their credentials from `store` from now
    /// on (open connections keep theirs, as at a rotation).
    fn refollow(&mut self, set: &str, store: &Arc<Store>) {
        let mut started = Vec::new();
        for run in self.listeners.values_mut().filter(|run| run.set == set) {
            run.following.cancel();
            run.following = run.cancel.child_token();
            started.push((run.follow.clone(), run.following.clone()));
        }
        for (follow, following) in started {
            self.spawn_with(
                "tls config",
                following.clone(),
                follow(store.clone(), following),
            );
        }
    }

    fn serve<H: Handler>(
        &mut self,
        handler: Arc<H>,
        socket: TcpListener,
        (stop, conns): (&CancellationToken, &CancellationToken),
        handover: oneshot::Sender<TcpListener>,
        tracker: &TaskTracker,
    ) {
        let (stop, tracker) = (stop.clone(), tracker.clone());
        let accept = listener::serve(socket, handler, stop.clone(), conns.clone(), tracker);
        self.spawn_with("accept loop", stop, async move {
            // Nobody waiting for it: the socket closes here.
            let _ = handover.send(accept.await);
        });
    }

    /// Stops a listener: it stops accepting now and gives its socket back (for a changed
    /// listener on the same address; dropped, it closes); its open connections get up to the
    /// grace period (in the background), then its other tasks stop.
    async fn drain(&mut self, run: ListenerRun) -> Option<TcpListener> {
        run.stop.cancel();
        run.conns.cancel();
        let socket = run.socket.await.ok();
        run.tracker.close();
        let grace = self.grace;
        self.drains.spawn(async move {
            let _ = tokio::time::timeout(grace, run.tracker.wait()).await;
            run.cancel.cancel();
        });
        socket
    }

    /// SIGHUP: every set reads its files again now.
    fn trigger_all(&self) {
        for set in self.sets.values() {
            // A full channel means a reload is already pending: that one reads anew.
            let _ = set.trigger.try_send(Trigger::Signal);
        }
    }

    /// Reads `file` again; applies it if it changed and is valid, else keeps the running one.
    /// A text already seen is looked at again only when `asked` (SIGHUP): other events in the
    /// directory (a sibling file, a swap to the same content) are not a new configuration.
    async fn reload_config(&mut self, file: &mut ConfigFile, asked: bool) {
        let path = file.path.clone();
        // A blocking read (a hung volume) must not stall the runtime's other work.
        let text = match tokio::task::spawn_blocking(move || config::read_text(&path)).await {
            Ok(Ok(text)) => text,
            // Nothing was read: whatever is read next is looked at.
            Ok(Err(e)) => {
                file.seen = [0; 32];
                return self.refuse_config(file, [0; 32], e.to_string());
            }
            Err(e) => {
                file.seen = [0; 32];
                return self.refuse_config(file, [0; 32], format!("reading the file failed: {e}"));
            }
        };
        let seen: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if seen == file.seen && !asked {
            return;
        }
        file.seen = seen;
        let (raw, mut config) = match config::load(&text, &file.path) {
            Ok(loaded) => loaded,
            Err(e) => return self.refuse_config(file, seen, e.to_string()),
        };
        if raw == file.raw {
            events::config_unchanged(&self.metrics, &file.path);
            // Back to what runs (e.g. a broken edit reverted): nothing is wrong any more.
            file.refused = None;
            if let Some(mut status) = self.admin.config().filter(|s| s.last_error.is_some()) {
                status.last_error = None;
                self.admin.set_config(status);
            }
            return;
        }
        match limits::raise_nofile().map(|n| limits::fit_config(&mut config, n)) {
            Ok(Err(e)) => return self.refuse_config(file, seen, e.to_string()),
            Ok(Ok(fitted)) => report_fitted(&fitted),
            Err(_) => {}
        }
        if let Err(e) = self.apply(config, false).await {
            // What was wrong is outside the file (a port in use, credentials not there yet):
            // the same text is tried again at the next event or poll.
            file.seen = [0; 32];
            return self.refuse_config(file, seen, format!("{e:#}"));
        }
        file.raw = raw;
        file.refused = None;
        let generation = self.admin.config().map_or(1, |c| c.generation) + 1;
        self.admin.set_config(ConfigStatus {
            path: file.path.clone(),
            generation,
            loaded_at: SystemTime::now(),
            last_error: None,
        });
        events::config_applied(&self.metrics, &file.path, generation, &digest(&file.raw));
    }

    /// Reports a refused configuration (the text's SHA-256, zeros if none was read), unless it
    /// is the pending refusal again: the same text refused with the same message.
    fn refuse_config(&self, file: &mut ConfigFile, text: [u8; 32], message: String) {
        let refusal = (text, message);
        if file.refused.as_ref() == Some(&refusal) {
            events::config_still_refused(&file.path);
            return;
        }
        events::config_refused(&self.metrics, &file.path, &refusal.1);
        if let Some(mut status) = self.admin.config() {
            status.last_error = Some((refusal.1.clone(), SystemTime::now()));
            self.admin.set_config(status);
        }
        file.refused = Some(refusal);
    }

    /// SIGTERM: not ready, stop accepting everywhere, let open connections finish for up to
    /// the grace period, then stop everything.
    async fn shutdown(mut self) {
        self.admin.shutting_down.store(true, Ordering::Relaxed);
        info!(grace = ?self.grace, "shutting down: no new connections, draining open ones");
        for run in self.listeners.values() {
            run.stop.cancel();
            run.conns.cancel();
        }
        let mut open = 0;
        for run in self.listeners.values_mut() {
            // Dropped: closed, so new connections are refused while the open ones finish.
            drop((&mut run.socket).await);
            run.tracker.close();
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        for run in self.listeners.values() {
            if tokio::time::timeout_at(deadline, run.tracker.wait())
                .await
                .is_err()
            {
                open += run.tracker.len();
            }
        }
        self.drains.close();
        let _ = tokio::time::timeout_at(deadline, self.drains.wait()).await;
        if open > 0 {
            warn!(
                open,
                "shutdown grace period over; closing the remaining connections"
            );
        }
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The names of `running` parts that `wanted` (name, fingerprint) does not keep as they are:
/// removed, or changed.
fn stale<'a, R>(
    running: &BTreeMap<String, R>,
    fingerprint: impl Fn(&R) -> &String,
    wanted: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    let wanted: BTreeMap<&String, &String> = wanted.collect();
    running
        .iter()
        .filter(|(name, run)| wanted.get(name) != Some(&fingerprint(run)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Logs what fitting the connection limits to the open-file limit changed.
pub fn report_fitted(fitted: &limits::Fitted) {
    for (name, l, nofile) in &fitted.lowered {
        warn!(
            listener = %name,
            nofile,
            max_connections = l.max_connections,
            max_upstream_connections = l.max_upstream_connections,
            "the open-file limit (RLIMIT_NOFILE) is too low for the default connection limits; using lower limits (raise the container's nofile limit to keep the defaults)"
        );
    }
}

/// A short digest of a configuration, for the log line of an applied change.
fn digest(raw: &RawConfig) -> String {
    let text = serde_json::to_string(raw).unwrap_or_default();
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => ".".into(),
    }
}

/// Parent directories of every file of the set, each once.
fn watched_dirs(set: &SetConfig) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = set
        .paths
        .files()
        .filter_map(|(_, p)| p.parent().map(|_| parent_dir(p)))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}
