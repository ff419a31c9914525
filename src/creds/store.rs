//! The credential store of one set: the only writer of what is served. Publishing dedupes by
//! content hash, bumps the generation, swaps the bundle in with one `ArcSwap` store and notifies
//! subscribers (proxy listeners, actions) through a `watch` channel. A refused update keeps the
//! last good bundle and is remembered as `last_error`. Every outcome is logged and counted in
//! [`crate::events`].

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::validate::{Bundle, CertFacts};
use crate::events;
use crate::metrics::Metrics;
use crate::reason::Reason;

/// A bundle as served: validated, numbered, timestamped.
#[derive(Debug)]
pub struct Published {
    /// 1 for the first publish, +1 for each later one.
    pub generation: u64,
    pub bundle: Bundle,
    pub loaded_at: SystemTime,
}

/// Why the most recent update was refused.
#[derive(Clone, Debug)]
pub struct LastError {
    pub reason: Reason,
    pub message: String,
    pub at: SystemTime,
}

/// One credential set's served state.
pub struct Store {
    set: String,
    current: ArcSwapOption<Published>,
    generation: watch::Sender<u64>,
    /// Written by the set's reload task, read by `/status`; never touched on a connection path.
    last_error: Mutex<Option<LastError>>,
    metrics: Arc<Metrics>,
}

impl Store {
    pub fn new(set: impl Into<String>, metrics: Arc<Metrics>) -> Arc<Self> {
        let set = set.into();
        metrics.init_set(&set);
        Arc::new(Store {
            set,
            current: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
            last_error: Mutex::new(None),
            metrics,
        })
    }

    pub fn set(&self) -> &str {
        &self.set
    }

    /// What is served now: one atomic load, no lock.
    pub fn load(&self) -> Option<Arc<Published>> {
        self.current.load_full()
    }

    /// Yields the generation after every publish (intermediate values may be skipped).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.lock_last_error().clone()
    }

    /// True if `hash` is the content already served; counts it as an `unchanged` reload.
    pub fn is_unchanged(&self, hash: &[u8; 32]) -> bool {
        let same = self
            .current
            .load()
            .as_ref()
            .is_some_and(|p| &p.bundle.content_hash() == hash);
        if same {
            // The files on disk are fine again: whatever was refused earlier is no longer pending.
            *self.lock_last_error() = None;
            events::reload_unchanged(&self.metrics, &self.set);
        }
        same
    }

    /// Serves `bundle` from now on.
    pub fn publish(&self, bundle: Bundle) -> Arc<Published> {
        let old = self.current.load_full();
        let new = Arc::new(Published {
            generation: old.as_ref().map_or(1, |p| p.generation + 1),
            bundle,
            loaded_at: SystemTime::now(),
        });
        self.current.store(Some(new.clone()));
        *self.lock_last_error() = None;
        events::reload_published(&self.metrics, &self.set, old.as_deref(), &new);
        self.generation.send_replace(new.generation);
        new
    }

    /// Records a refused update; the served bundle stays.
    pub fn refuse(&self, reason: Reason, message: String, rejected: Option<&CertFacts>) {
        let current = self.current.load_full();
        events::reload_refused(
            &self.metrics,
            &self.set,
            reason,
            &message,
            current.as_deref(),
            rejected,
        );
        *self.lock_last_error() = Some(LastError {
            reason,
            message,
            at: SystemTime::now(),
        });
    }

    /// Records that files are not there yet before anything was ever served (not a failure).
    pub fn waiting(&self, reason: Reason, message: String) {
        let mut last = self.lock_last_error();
        // Polls repeat this every interval: log only when the situation changes.
        if last.as_ref().is_none_or(|e| e.message != message) {
            events::reload_waiting(&self.set, reason, &message);
        }
        *last = Some(LastError {
            reason,
            message,
            at: SystemTime::now(),
        });
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<LastError>> {
        // A panic while holding this lock cannot leave the Option half-written; keep going.
        self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }
}
