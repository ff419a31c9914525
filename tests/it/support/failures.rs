//! What went wrong in a background load: the failure messages of client threads, collected
//! behind a lock that a panicking thread cannot poison for the others.

use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct Failures(Mutex<Vec<String>>);

impl Failures {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record one failure.
    pub fn push(&self, what: String) {
        self.lock().push(what);
    }

    /// Every failure so far, oldest first.
    pub fn list(&self) -> Vec<String> {
        self.lock().clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
