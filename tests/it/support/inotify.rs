//! Forcing inotify queue overflow (KUBELET.md scenario 12) for real.
//!
//! The kernel reads `fs.inotify.max_queued_events` once, when a process calls
//! `inotify_init`. With the limit at 0, every event that reaches the queue is replaced by a
//! single `IN_Q_OVERFLOW` (notify reports it as `Event{kind: Other, flag: Rescan, paths: []}`),
//! so the process under test learns about changes *only* through overflow and must re-read
//! everything. `start_with_tiny_queue` lowers the limit (as root), starts the sidecar,
//! waits until it holds an inotify descriptor, and restores the limit at once (Drop guard,
//! also on panic). `INOTIFY_GATE` keeps other tests from starting processes in that window.

use std::ffi::OsStr;
use std::fs;
use std::time::Duration;

use super::sidecar::{wait_until, Sidecar, INOTIFY_GATE};

const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Restores `max_queued_events` on Drop.
struct QueueLimit {
    old: String,
}

impl QueueLimit {
    /// Lower the limit; `None` if the sysctl is not writable (not root, read-only /proc).
    fn set(limit: u32) -> Option<QueueLimit> {
        let old = fs::read_to_string(MAX_QUEUED).ok()?;
        fs::write(MAX_QUEUED, limit.to_string()).ok()?;
        Some(QueueLimit { old })
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        if let Err(e) = fs::write(MAX_QUEUED, self.old.trim()) {
            eprintln!("could not restore {MAX_QUEUED} to {}: {e}", self.old.trim());
        }
    }
}

/// True if `/proc/sys/fs/inotify/max_queued_events` can be changed by this process.
pub fn can_limit_queue() -> bool {
    let Ok(old) = fs::read_to_string(MAX_QUEUED) else {
        return false;
    };
    fs::write(MAX_QUEUED, old.trim()).is_ok()
}

/// Start a sidecar whose inotify queue holds `limit` events (0: only overflow events).
/// `None` if the sysctl is not writable.
pub fn start_with_tiny_queue<S: AsRef<OsStr>>(
    limit: u32,
    args: impl IntoIterator<Item = S>,
) -> Option<Sidecar> {
    let _gate = INOTIFY_GATE.write().unwrap_or_else(|e| e.into_inner());
    let guard = QueueLimit::set(limit)?;
    let sidecar = Sidecar::watch_ungated(args);
    let pid = sidecar.pid();
    let has_inotify = wait_until(Duration::from_secs(10), || inotify_fds(pid) > 0);
    drop(guard);
    assert!(
        has_inotify,
        "the sidecar never opened an inotify descriptor"
    );
    Some(sidecar)
}

/// How many inotify descriptors process `pid` holds.
pub fn inotify_fds(pid: u32) -> usize {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:inotify")
        .count()
}
