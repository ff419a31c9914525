//! Processes the tests start and must stop: `Reaped` (a child stopped on Drop, also on panic),
//! `HupCounter` (a shell standing in for the app: it counts the SIGHUPs it gets), and `/proc`
//! lookups to find a wrapper's descendants (nginx inside a PID namespace) and to prove that
//! nothing a test started outlives it (`ProcId`: a PID plus its start time, so a recycled PID
//! is not mistaken for the process).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::sidecar::wait_until;

/// Stops (and reaps) a helper process on Drop: SIGTERM first, so an nginx master takes its
/// workers down with it, then SIGKILL if it is still there after 3 s.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = wait_until(Duration::from_secs(3), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A shell that appends a line to its log on every SIGHUP: an app whose reloads we can count.
pub struct HupCounter {
    app: Reaped,
    log: PathBuf,
}

impl HupCounter {
    /// Start the shell; it logs to `log` (which should not exist yet).
    pub fn start(log: PathBuf) -> HupCounter {
        let script = "trap 'echo hup >> \"$HUP_LOG\"' HUP; while :; do sleep 0.05; done";
        let app = Reaped(
            Command::new("/bin/sh")
                .args(["-c", script])
                .env("HUP_LOG", &log)
                .spawn()
                .expect("spawn /bin/sh"),
        );
        HupCounter { app, log }
    }

    pub fn pid(&self) -> u32 {
        self.app.pid()
    }

    /// SIGHUPs received so far.
    pub fn count(&self) -> usize {
        fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// `/proc/PID/comm` without the newline.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Fields of `/proc/PID/stat` after the `(comm)`: index 0 is the state, 1 the parent PID,
/// 19 the start time (fields 3, 4 and 22 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The parent PID of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Every PID now listed in `/proc`.
fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every descendant of `root` (children, their children, ...), `root` excluded.
pub fn descendants(root: u32) -> Vec<u32> {
    let links: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, _) in links.iter().filter(|(_, pp)| *pp == p) {
            found.push(*child);
            frontier.push(*child);
        }
    }
    found
}

/// The PID of `pid` in the innermost PID namespace it lives in (last field of `NSpid`).
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The real UID of `pid` (first field of `Uid`).
pub fn uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One particular process: its PID and start time (a later process with a recycled PID has
/// another start time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub comm: String,
    start_time: u64,
}

impl ProcId {
    /// The process running as `pid` now, if any.
    pub fn of(pid: u32) -> Option<ProcId> {
        let start_time = stat_fields(pid)?.get(19)?.parse().ok()?;
        Some(ProcId {
            pid,
            comm: comm(pid)?,
            start_time,
        })
    }

    /// Still in the process table (running, or exited but not yet reaped).
    pub fn exists(&self) -> bool {
        stat_fields(self.pid)
            .and_then(|f| f.get(19)?.parse::<u64>().ok())
            .is_some_and(|t| t == self.start_time)
    }
}

/// True if `path` is the executable of `pid`.
pub fn runs(pid: u32, path: &Path) -> bool {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe.is_some() && exe == path.canonicalize().ok()
}
