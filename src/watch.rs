//! Noticing changes: a non-recursive `notify` watch on every directory that holds a credential
//! file (never the files: kubelet replaces them by swapping `..data`), plus a poll as a safety
//! net. Every event is only a hint; the reload task compares content hashes. Output: a
//! [`Trigger`] on a channel that holds at most one pending trigger, so bursts coalesce.
//!
//! Timing: a rename onto `..data` (kubelet's commit point), a Rescan (queue overflow) or a
//! re-created watch fires at once; other events are debounced (`--debounce`, quiet period) with
//! a max wait so a steady stream cannot postpone a reload forever. After any fire, further
//! events wait out the debounce, so a burst of swaps costs a few reloads, not one per swap.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why a reload was asked for (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Event,
    Commit,
    Rescan,
    Rewatch,
    Poll,
    /// SIGHUP.
    Signal,
    /// A re-check the reload task scheduled itself (a certificate becoming valid, a backoff).
    Scheduled,
}

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub dirs: Vec<PathBuf>,
    pub debounce: Duration,
    /// `None`: no polling.
    pub poll: Option<Duration>,
}

impl WatchConfig {
    /// The longest a stream of events can postpone a reload.
    pub fn max_wait(&self) -> Duration {
        (self.debounce * 10).max(Duration::from_secs(1))
    }
}

/// How often missing or replaced directories are looked for again.
const REWATCH_EVERY: Duration = Duration::from_millis(250);

/// Runs until `cancel`; sends triggers to `tx` (capacity-1 channel: a full channel means a
/// reload is already pending, which is all a trigger asks for).
pub async fn run(cfg: WatchConfig, tx: mpsc::Sender<Trigger>, cancel: CancellationToken) {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = match notify::recommended_watcher(move |res| {
        let _ = raw_tx.send(res);
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot create a file watcher; relying on the poll interval alone");
            None
        }
    };
    let mut watched: BTreeMap<PathBuf, Option<(u64, u64)>> =
        cfg.dirs.iter().map(|d| (d.clone(), None)).collect();
    let mut debounce = Debouncer::new(cfg.debounce, cfg.max_wait());
    let mut rewatch = tokio::time::interval(REWATCH_EVERY);
    let poll_period = cfg.poll.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut poll = tokio::time::interval_at(Instant::now() + poll_period, poll_period);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _ = tx.try_send(Trigger::Startup);

    loop {
        let deadline = debounce.deadline();
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(res) = raw_rx.recv() => match res {
                Ok(ev) => {
                    // The watched directory itself went away: its watch is dead even if a new
                    // directory reuses the inode number, so re-watch on the next refresh.
                    if matches!(ev.kind, EventKind::Remove(_)) {
                        for p in &ev.paths {
                            if let Some(id) = watched.get_mut(p) {
                                *id = None;
                            }
                        }
                    }
                    if let Some(fire) = classify(&ev) {
                        debug!(kind = ?ev.kind, paths = ?ev.paths, "file event");
                        if let Some(t) = debounce.event(Instant::now(), fire) {
                            let _ = tx.try_send(t);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "file watcher error; re-reading everything");
                    let _ = tx.try_send(Trigger::Rescan);
                }
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if let Some(t) = debounce.expire(Instant::now()) {
                    let _ = tx.try_send(t);
                }
            }
            _ = rewatch.tick() => {
                if let Some(w) = watcher.as_mut() {
                    if refresh_watches(w, &mut watched) {
                        let _ = tx.try_send(Trigger::Rewatch);
                    }
                }
            }
            _ = poll.tick(), if cfg.poll.is_some() => {
                let _ = tx.try_send(Trigger::Poll);
            }
        }
    }
}

/// How an event should fire: `None` to ignore it.
fn classify(ev: &Event) -> Option<Trigger> {
    if ev.need_rescan() {
        return Some(Trigger::Rescan);
    }
    match ev.kind {
        // Opens and reads (ours included) change nothing; a close after writing does.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Trigger::Event),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == "..data")) =>
        {
            Some(Trigger::Commit)
        }
        _ => Some(Trigger::Event),
    }
}

/// Watches directories that appeared, drops watches on directories that vanished or were
/// replaced (new inode). Returns true if a watch was (re)established: the caller reloads, since
/// changes made while unwatched were not seen.
fn refresh_watches(
    w: &mut RecommendedWatcher,
    watched: &mut BTreeMap<PathBuf, Option<(u64, u64)>>,
) -> bool {
    let mut added = false;
    for (dir, id) in watched.iter_mut() {
        let now = identity(dir);
        if *id == now {
            continue;
        }
        if id.is_some() {
            let _ = w.unwatch(dir);
            info!(path = %dir.display(), "watched directory vanished or was replaced");
            *id = None;
        } else if now.is_some() {
            // Removed and re-created (maybe with the same inode): drop whatever is left of the old watch.
            let _ = w.unwatch(dir);
        }
        if now.is_some() {
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    info!(path = %dir.display(), "watching directory");
                    *id = now;
                    added = true;
                }
                // Existing but unwatchable (e.g. fs.inotify.max_user_watches reached): say so.
                Err(e) => {
                    warn!(path = %dir.display(), error = %e, "cannot watch directory; relying on the poll until it works")
                }
            }
        }
    }
    added
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Leading-edge for commits, trailing-edge (quiet period, max wait) for everything else.
struct Debouncer {
    quiet: Duration,
    max_wait: Duration,
    /// When a commit last loaded at once (trailing fires do not count: kubelet's own clean-up
    /// after a swap causes one, and it must not delay the next swap).
    last_immediate: Option<Instant>,
    /// First and latest event of the pending burst.
    pending: Option<(Instant, Instant, Trigger)>,
}

impl Debouncer {
    fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debouncer {
            quiet,
            max_wait,
            last_immediate: None,
            pending: None,
        }
    }

    /// Records an event; returns a trigger to send now, if any.
    fn event(&mut self, now: Instant, kind: Trigger) -> Option<Trigger> {
        let immediate = matches!(kind, Trigger::Commit | Trigger::Rescan);
        // At most one commit per max wait loads at once: kubelet swaps are a minute apart,
        // while a storm of swaps is paced like any other burst of events.
        let rested = self
            .last_immediate
            .is_none_or(|t| now.duration_since(t) >= self.max_wait);
        if immediate && rested {
            // Events pending before a commit were the writing of this very generation.
            self.pending = None;
            self.last_immediate = Some(now);
            return Some(kind);
        }
        self.pending = Some(match self.pending {
            Some((first, _, k)) => (first, now, if immediate { kind } else { k }),
            None => (now, now, kind),
        });
        None
    }

    fn deadline(&self) -> Option<Instant> {
        self.pending
            .map(|(first, last, _)| (last + self.quiet).min(first + self.max_wait))
    }

    fn expire(&mut self, now: Instant) -> Option<Trigger> {
        match self.deadline() {
            Some(d) if d <= now => self.pending.take().map(|(_, _, k)| k),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn commit_fires_at_once_when_rested() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(d.event(t0, Trigger::Commit), Some(Trigger::Commit));
        assert_eq!(d.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn events_wait_for_quiet() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(d.event(t0, Trigger::Event), None);
        assert_eq!(
            d.event(t0 + Duration::from_millis(50), Trigger::Event),
            None
        );
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(d.expire(t0 + Duration::from_millis(149)), None);
        assert_eq!(
            d.expire(t0 + Duration::from_millis(150)),
            Some(Trigger::Event)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_cannot_postpone_past_max_wait() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..100u64 {
            d.event(t0 + Duration::from_millis(20 * i), Trigger::Event);
        }
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn commit_after_the_writes_of_its_generation_fires_at_once() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(d.event(t0, Trigger::Event), None);
        assert_eq!(
            d.event(t0 + Duration::from_millis(1), Trigger::Commit),
            Some(Trigger::Commit)
        );
        assert_eq!(d.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn commits_right_after_a_fire_are_debounced() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(d.event(t0, Trigger::Commit).is_some());
        assert_eq!(
            d.event(t0 + Duration::from_millis(20), Trigger::Commit),
            None
        );
        assert_eq!(
            d.expire(t0 + Duration::from_millis(120)),
            Some(Trigger::Commit)
        );
        // 500 ms later: still within the max wait of the last fire, so debounced again.
        assert_eq!(
            d.event(t0 + Duration::from_millis(620), Trigger::Commit),
            None
        );
        assert!(d.expire(t0 + Duration::from_millis(720)).is_some());
        // More than the max wait later the watcher is rested: at once.
        assert!(d
            .event(t0 + Duration::from_millis(1800), Trigger::Commit)
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn clean_up_after_a_swap_does_not_delay_the_next_swap() {
        let mut d = Debouncer::new(Q, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(d.event(t0, Trigger::Commit).is_some());
        // Kubelet's steps 10-12 right after the rename: a trailing fire.
        assert_eq!(d.event(t0 + Duration::from_millis(5), Trigger::Event), None);
        assert!(d.expire(t0 + Duration::from_millis(105)).is_some());
        // The next swap, a little over the max wait after the previous commit: at once.
        assert!(d
            .event(t0 + Duration::from_millis(1050), Trigger::Commit)
            .is_some());
    }

    #[test]
    fn rename_onto_data_is_a_commit_and_opens_are_ignored() {
        let ev = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::To)))
            .add_path("/v/..data".into());
        assert_eq!(classify(&ev), Some(Trigger::Commit));
        let open = Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any)))
            .add_path("/v/tls.crt".into());
        assert_eq!(classify(&open), None);
        let tmp = Event::new(EventKind::Create(notify::event::CreateKind::File))
            .add_path("/v/..data_tmp".into());
        assert_eq!(classify(&tmp), Some(Trigger::Event));
    }
}
