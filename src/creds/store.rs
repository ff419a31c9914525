//! The credential store of one set: the only writer of what is served, and nothing else. It
//! holds the served bundle (one `ArcSwap` load to read it, no lock), numbers publishes, tells
//! subscribers (listeners, actions) through a `watch` channel, and remembers why the last update
//! was refused, and what it was about (so the same refusal again is not news). It neither logs
//! nor counts: the reload task reports every outcome (`crate::events`). A refused update keeps
//! the last good bundle.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::validate::Bundle;
use crate::reason::Reason;

/// A bundle as served: validated, numbered, timestamped.
#[derive(Debug)]
pub struct Published {
    /// 1 for the first publish, +1 for each later one.
    pub generation: u64,
    pub bundle: Bundle,
    pub loaded_at: SystemTime,
}

/// What a publish changed.
#[derive(Debug)]
pub struct Publish {
    pub old: Option<Arc<Published>>,
    pub new: Arc<Published>,
}

/// Why an update was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The files were read and refused: a reason code.
    Rejected(Reason),
    /// Our own failure (a panic while reading or validating): a bug, never the files' fault.
    Internal,
}

impl Refusal {
    /// The reason code, or `internal`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Rejected(r) => r.as_str(),
            Refusal::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the most recent update was refused.
#[derive(Clone, Debug)]
pub struct LastError {
    pub reason: Refusal,
    pub message: String,
    pub at: SystemTime,
}

/// What a refusal was about: the same again, with nothing published or cleared in between, is
/// the same refusal (reported once), not a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Files read and refused: the SHA-256 over their contents (never the contents: a key
    /// file's bytes are the private key) and the reason.
    Content { hash: [u8; 32], reason: Reason },
    /// Files that could not be read: the reason and the message.
    Unread { reason: Reason, message: String },
}

/// The pending refusal.
struct Pending {
    error: LastError,
    /// `None`: not to be told apart from another (waiting for files, an internal error).
    about: Option<Refused>,
}

/// One credential set's served state.
pub struct Store {
    set: String,
    current: ArcSwapOption<Published>,
    generation: watch::Sender<u64>,
    /// Written by the set's reload task, read by `/status`; never touched on a connection path.
    last_error: Mutex<Option<Pending>>,
}

impl Store {
    pub fn new(set: impl Into<String>) -> Arc<Self> {
        Arc::new(Store {
            set: set.into(),
            current: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
            last_error: Mutex::new(None),
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
        self.lock_last_error().as_ref().map(|p| p.error.clone())
    }

    /// True if the pending refusal is about `about`: refused already, and nothing was published
    /// or cleared since.
    pub fn refused_already(&self, about: &Refused) -> bool {
        self.lock_last_error()
            .as_ref()
            .is_some_and(|p| p.about.as_ref() == Some(about))
    }

    /// True if `hash` is the content served now.
    pub fn serves(&self, hash: &[u8; 32]) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|p| &p.bundle.content_hash() == hash)
    }

    /// Serves `bundle` from now on; whatever was refused before is no longer pending.
    pub fn publish(&self, bundle: Bundle) -> Publish {
        let old = self.current.load_full();
        let new = Arc::new(Published {
            generation: old.as_ref().map_or(1, |p| p.generation + 1),
            bundle,
            loaded_at: SystemTime::now(),
        });
        self.current.store(Some(new.clone()));
        *self.lock_last_error() = None;
        self.generation.send_replace(new.generation);
        Publish { old, new }
    }

    /// Records a refused update (about what, if it can be told apart); the served bundle stays.
    pub fn refuse(&self, reason: Refusal, message: String, about: Option<Refused>) {
        *self.lock_last_error() = Some(Pending {
            error: LastError {
                reason,
                message,
                at: SystemTime::now(),
            },
            about,
        });
    }

    /// Forgets the last refusal (the files match what is served again).
    pub fn clear_error(&self) {
        *self.lock_last_error() = None;
    }

    /// Records that files are not there yet (before anything was ever served: not a failure);
    /// true if this is news (another message than the one recorded), so it is worth a log line.
    pub fn waiting(&self, reason: Reason, message: String) -> bool {
        let mut last = self.lock_last_error();
        let news = last.as_ref().is_none_or(|p| p.error.message != message);
        *last = Some(Pending {
            error: LastError {
                reason: Refusal::Rejected(reason),
                message,
                at: SystemTime::now(),
            },
            about: None,
        });
        news
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        // A panic while holding this lock cannot leave the Option half-written; keep going.
        self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::load::{RawBundle, RawFile};
    use crate::creds::paths::FileRole;
    use crate::creds::validate::{validate, Policy};

    fn bundle() -> Bundle {
        let ca = crate::test_pki::TestCa::new();
        let leaf = ca.server();
        let file = |role, pem: String| RawFile::new(role, "/t/f", pem.into_bytes());
        let raw = RawBundle {
            cert: file(FileRole::Cert, leaf.cert_pem),
            key: file(FileRole::Key, leaf.key_pem),
            ca: file(FileRole::Ca, ca.pem),
            peer_ca: None,
        };
        validate(raw, &Policy::default(), SystemTime::now()).expect("valid")
    }

    #[test]
    fn publishing_numbers_generations_notifies_and_clears_the_refusal() {
        let store = Store::new("t");
        let mut rx = store.subscribe();
        store.refuse(Refusal::Rejected(Reason::KeyMismatch), "no".into(), None);
        let (b1, b2) = (bundle(), bundle());
        let (h1, h2) = (b1.content_hash(), b2.content_hash());
        let first = store.publish(b1);
        assert!(first.old.is_none());
        assert_eq!(first.new.generation, 1);
        assert!(store.last_error().is_none(), "a publish ends the refusal");
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        assert!(store.serves(&h1) && !store.serves(&h2));
        let second = store.publish(b2);
        assert_eq!(second.old.map(|p| p.generation), Some(1));
        assert_eq!(second.new.generation, 2);
        assert!(store.serves(&h2), "serves() is a pure question");
        assert_eq!(store.load().map(|p| p.generation), Some(2));
    }

    #[test]
    fn refusals_are_recorded_and_waiting_is_news_once() {
        let store = Store::new("t");
        assert!(store.waiting(Reason::MissingFile, "no tls.crt".into()));
        assert!(!store.waiting(Reason::MissingFile, "no tls.crt".into()));
        assert!(store.waiting(Reason::MissingFile, "no tls.key".into()));
        store.refuse(Refusal::Internal, "bug".into(), None);
        let e = store.last_error().expect("recorded");
        assert_eq!(e.reason.as_str(), "internal");
        store.clear_error();
        assert!(store.last_error().is_none());
        assert!(store.load().is_none(), "refusals never serve anything");
    }

    #[test]
    fn a_refusal_is_the_same_until_something_else_is_refused_published_or_cleared() {
        let store = Store::new("t");
        let content = |byte, reason| Refused::Content {
            hash: [byte; 32],
            reason,
        };
        let (a, b) = (
            content(1, Reason::KeyMismatch),
            content(2, Reason::KeyMismatch),
        );
        let refuse = |about: &Refused| {
            store.refuse(
                Refusal::Rejected(Reason::KeyMismatch),
                "no".into(),
                Some(about.clone()),
            )
        };
        assert!(!store.refused_already(&a));
        refuse(&a);
        assert!(store.refused_already(&a));
        assert!(!store.refused_already(&b));
        assert!(
            !store.refused_already(&content(1, Reason::Expired)),
            "the same files refused for another reason"
        );
        refuse(&b);
        assert!(!store.refused_already(&a), "only the last refusal counts");
        refuse(&a);
        store.clear_error();
        assert!(!store.refused_already(&a));
        refuse(&a);
        store.publish(bundle());
        assert!(!store.refused_already(&a));
        refuse(&a);
        assert!(store.waiting(Reason::MissingFile, "no tls.crt".into()));
        assert!(!store.refused_already(&a));
        let unread = Refused::Unread {
            reason: Reason::MissingFile,
            message: "no tls.crt".into(),
        };
        store.refuse(
            Refusal::Rejected(Reason::MissingFile),
            "no tls.crt".into(),
            Some(unread.clone()),
        );
        assert!(store.refused_already(&unread));
        store.refuse(Refusal::Internal, "bug".into(), None);
        assert!(!store.refused_already(&unread));
    }
}
