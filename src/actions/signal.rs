//! `--signal NAME` to `--pid-file FILE` | `--process-name NAME` | `--pid N`: tell the main
//! container to reload (SIGHUP to nginx). The target is resolved again before every send; PID 1
//! and below are never signalled (in a pod with `shareProcessNamespace: true`, PID 1 is the pause
//! process, which exits on SIGTERM/SIGINT); among processes named NAME only those whose parent
//! has another name are signalled (nginx's master, not its workers). The signal goes through a
//! pidfd opened after resolution and checked again, so a PID recycled in between is not hit.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use tracing::debug;

use super::error::SignalError;
use super::outcome::ActionOk;

/// Which processes get the signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    PidFile(PathBuf),
    ProcessName(String),
    Pid(i32),
}

#[derive(Clone, Debug)]
pub struct SignalAction {
    pub signal: Signal,
    pub target: SignalTarget,
    /// `/proc`, or a fake tree in tests.
    pub proc_root: PathBuf,
}

/// `HUP`, `SIGHUP`, `hup` or a number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s:?} is not a signal number"));
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| format!("unknown signal {s:?} (try HUP, USR1, USR2, TERM)"))
}

impl SignalAction {
    pub(super) async fn run(&self) -> Result<ActionOk, SignalError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send_now())
            .await
            .map_err(SignalError::Task)?
    }

    fn send_now(&self) -> Result<ActionOk, SignalError> {
        let pids = resolve(&self.proc_root, &self.target)?;
        for pid in &pids {
            send(&self.proc_root, *pid, self.signal, &self.target)?;
        }
        Ok(ActionOk::Signalled {
            signal: self.signal,
            pids,
        })
    }
}

/// The PIDs to signal now.
pub fn resolve(proc_root: &Path, target: &SignalTarget) -> Result<Vec<i32>, SignalError> {
    let pids = match target {
        SignalTarget::Pid(p) => vec![*p],
        SignalTarget::PidFile(f) => {
            let text =
                std::fs::read_to_string(f).map_err(|source| SignalError::PidFileUnreadable {
                    path: f.clone(),
                    source,
                })?;
            let pid = text
                .trim()
                .parse::<i32>()
                .map_err(|_| SignalError::PidFileInvalid {
                    path: f.clone(),
                    content: truncate(&text),
                })?;
            vec![pid]
        }
        SignalTarget::ProcessName(name) => masters(proc_root, name)?,
    };
    if let Some(&pid) = pids.iter().find(|p| **p <= 1) {
        return Err(SignalError::Pid1 { pid });
    }
    Ok(pids)
}

/// What `--process-name NAME` is compared with: the kernel keeps the first 15 bytes of the
/// executable's file name in `/proc/PID/comm`, so a path is reduced to its file name and a longer
/// name to those 15 bytes. Empty is a usage error.
pub fn comm_name(name: &str) -> Result<String, String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.is_empty() {
        return Err("expected a process name such as nginx".into());
    }
    let mut end = base.len().min(TASK_COMM_MAX);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    Ok(base[..end].to_string())
}

/// The longest name `/proc/PID/comm` holds (TASK_COMM_LEN - 1).
const TASK_COMM_MAX: usize = 15;

/// Processes named `name` whose parent is not also named `name`.
fn masters(proc_root: &Path, name: &str) -> Result<Vec<i32>, SignalError> {
    let entries = std::fs::read_dir(proc_root).map_err(|source| SignalError::ProcUnreadable {
        proc_root: proc_root.to_path_buf(),
        source,
    })?;
    let mut named = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if comm(proc_root, pid).as_deref() == Some(name) {
            named.push(pid);
        }
    }
    let mut out: Vec<i32> = named
        .iter()
        .copied()
        .filter(|pid| {
            parent(proc_root, *pid).is_none_or(|pp| comm(proc_root, pp).as_deref() != Some(name))
        })
        .collect();
    out.sort_unstable();
    if out.is_empty() {
        return Err(SignalError::NoProcess {
            name: name.to_string(),
            proc_root: proc_root.to_path_buf(),
        });
    }
    Ok(out)
}

fn comm(proc_root: &Path, pid: i32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Field 4 of `/proc/PID/stat`, read after the last `)` (the name may contain spaces and parens).
fn parent(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn send(
    proc_root: &Path,
    pid: i32,
    signal: Signal,
    target: &SignalTarget,
) -> Result<(), SignalError> {
    let describe = |e: std::io::Error| SignalError::from_errno(pid, e);
    let fd = match pidfd(pid) {
        Ok(fd) => {
            debug!(pid, "signalling through a pidfd");
            Some(fd)
        }
        Err(e) if kill_instead(e.raw_os_error()) => {
            debug!(pid, error = %e, "pidfd_open is not available; signalling with kill(2)");
            None
        }
        Err(e) => return Err(describe(e)),
    };
    // The process behind the pidfd is fixed now; check it is still the one we resolved.
    if let SignalTarget::ProcessName(name) = target {
        if comm(proc_root, pid).as_deref() != Some(name.as_str()) {
            return Err(SignalError::Changed {
                pid,
                name: name.clone(),
            });
        }
    }
    match fd {
        Some(fd) => {
            let sig = rustix::process::Signal::from_named_raw(signal as i32)
                .ok_or(SignalError::NotViaPidfd { signal })?;
            rustix::process::pidfd_send_signal(&fd, sig).map_err(|e| describe(e.into()))
        }
        None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| describe(std::io::Error::from_raw_os_error(e as i32))),
    }
}

/// Whether a pidfd_open(2) that failed with `errno` leaves kill(2) to try: the call is not
/// there (ENOSYS: kernels before 5.3) or not allowed (EPERM: a seccomp profile that refuses it;
/// pidfd_open checks no permission over the target, so EPERM can only come from a filter, and
/// kill(2) then says whether we may signal it). Anything else is the answer (ESRCH: gone).
fn kill_instead(errno: Option<i32>) -> bool {
    matches!(errno, Some(nix::libc::ENOSYS | nix::libc::EPERM))
}

fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from_raw_os_error(nix::libc::ESRCH))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(Into::into)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc: (pid, comm, ppid).
    fn fake_proc(procs: &[(i32, &str, i32)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (pid, comm, ppid) in procs {
            let p = d.path().join(pid.to_string());
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560"),
            )
            .unwrap();
        }
        std::fs::create_dir(d.path().join("self")).unwrap();
        d
    }

    #[test]
    fn process_names_are_compared_as_comm_holds_them() {
        assert_eq!(comm_name("nginx").unwrap(), "nginx");
        assert_eq!(comm_name("/usr/sbin/nginx").unwrap(), "nginx");
        assert_eq!(
            comm_name("my-legacy-app-server").unwrap(),
            "my-legacy-app-s"
        );
        assert!(comm_name("").is_err());
        assert!(comm_name("/usr/sbin/").is_err());
        let d = fake_proc(&[(40, "my-legacy-app-s", 1)]);
        let name = comm_name("my-legacy-app-server").unwrap();
        assert_eq!(masters(d.path(), &name).unwrap(), vec![40]);
    }

    #[test]
    fn nginx_master_not_workers() {
        let p = fake_proc(&[
            (1, "pause", 0),
            (7, "nginx", 1),
            (30, "nginx", 7),
            (31, "nginx", 7),
            (40, "sh", 1),
        ]);
        assert_eq!(
            resolve(p.path(), &SignalTarget::ProcessName("nginx".into())).unwrap(),
            vec![7]
        );
    }

    #[test]
    fn two_independent_masters_both_get_it() {
        let p = fake_proc(&[(7, "nginx", 1), (8, "nginx", 1), (9, "nginx", 8)]);
        assert_eq!(
            resolve(p.path(), &SignalTarget::ProcessName("nginx".into())).unwrap(),
            vec![7, 8]
        );
    }

    #[test]
    fn name_with_parens_and_spaces_parses() {
        let p = tempfile::tempdir().unwrap();
        let d = p.path().join("12");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("comm"), "my (app) x\n").unwrap();
        std::fs::write(d.join("stat"), "12 (my (app) x) S 3 12 12 0").unwrap();
        assert_eq!(parent(p.path(), 12), Some(3));
        assert_eq!(
            resolve(p.path(), &SignalTarget::ProcessName("my (app) x".into())).unwrap(),
            vec![12]
        );
    }

    #[test]
    fn pid_one_is_never_a_target() {
        let p = fake_proc(&[(1, "nginx", 0)]);
        let err = resolve(p.path(), &SignalTarget::ProcessName("nginx".into())).unwrap_err();
        assert!(matches!(err, SignalError::Pid1 { pid: 1 }), "{err:?}");
        assert!(err.to_string().contains("PID 1"), "{err}");
        assert_eq!(err.reason(), "target_is_pid_1");
        for pid in [1, 0, -1] {
            let err = resolve(p.path(), &SignalTarget::Pid(pid)).unwrap_err();
            assert_eq!(err.reason(), "target_is_pid_1", "{err}");
        }
    }

    #[test]
    fn missing_process_and_bad_pid_file_say_what_to_do() {
        let p = fake_proc(&[(5, "sh", 1)]);
        let err = resolve(p.path(), &SignalTarget::ProcessName("nginx".into())).unwrap_err();
        assert!(err.to_string().contains("shareProcessNamespace"), "{err}");
        assert_eq!(err.reason(), "target_not_found");
        let f = p.path().join("nginx.pid");
        let err = resolve(p.path(), &SignalTarget::PidFile(f.clone())).unwrap_err();
        assert!(err.to_string().contains("pid file"), "{err}");
        assert_eq!(err.reason(), "target_not_found");
        std::fs::write(&f, "garbage\n").unwrap();
        let err = resolve(p.path(), &SignalTarget::PidFile(f.clone())).unwrap_err();
        assert!(err.to_string().contains("does not hold a PID"), "{err}");
        assert_eq!(err.reason(), "target_not_found");
        std::fs::write(&f, "4242\n").unwrap();
        assert_eq!(
            resolve(p.path(), &SignalTarget::PidFile(f)).unwrap(),
            vec![4242]
        );
    }

    #[test]
    fn vanished_pid_is_reported() {
        // PIDs above pid_max never exist.
        let err = send(
            Path::new("/proc"),
            4_194_304 + 7,
            Signal::SIGHUP,
            &SignalTarget::Pid(4_194_311),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
        assert_eq!(err.reason(), "target_not_found");
    }

    #[test]
    fn a_pid_that_is_no_longer_the_named_process_is_not_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The pidfd is opened on the real process; the (fake) comm says it is something else now.
        let p = fake_proc(&[(pid, "bash", 1)]);
        let err = send(
            p.path(),
            pid,
            Signal::SIGTERM,
            &SignalTarget::ProcessName("nginx".into()),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "target_changed", "{err}");
        assert_eq!(
            err.to_string(),
            format!("process {pid} is no longer \"nginx\"; will retry")
        );
        assert!(child.try_wait().unwrap().is_none(), "it was signalled");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn kill_is_the_fallback_when_pidfd_open_is_missing_or_filtered() {
        use nix::libc::{EMFILE, ENOSYS, EPERM, ESRCH};
        assert!(kill_instead(Some(ENOSYS)), "kernel before 5.3");
        assert!(kill_instead(Some(EPERM)), "seccomp refuses pidfd_open");
        assert!(!kill_instead(Some(ESRCH)), "the process is gone");
        assert!(!kill_instead(Some(EMFILE)));
        assert!(!kill_instead(None));
        // A kill(2) that is refused too is a permission problem, and says so.
        let err = SignalError::from_errno(7, std::io::Error::from_raw_os_error(EPERM));
        assert!(err.to_string().contains("CAP_KILL"), "{err}");
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("HUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("sigusr2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("1"), Ok(Signal::SIGHUP));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn signals_a_real_child_through_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        send(
            Path::new("/proc"),
            pid,
            Signal::SIGTERM,
            &SignalTarget::Pid(pid),
        )
        .unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }
}
