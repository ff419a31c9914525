//! Why an action failed: one enum per action, whose variants carry the facts (paths, PIDs,
//! programs, statuses, the redacted webhook URL, the `io::Error` underneath) and whose `Display`
//! is the sentence the log shows. [`ActionError::reason`] is the short, stable failure class that
//! labels `mtls_sidecar_actions_total{result="failure"}`; each action's `REASONS` lists all of
//! its classes so every series can be created at zero.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::task::JoinError;

/// A failed run of one action.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl ActionError {
    /// The failure class: one of the failing action's `REASONS`.
    pub fn reason(&self) -> &'static str {
        match self {
            ActionError::Stage(e) => e.reason(),
            ActionError::Signal(e) => e.reason(),
            ActionError::Exec(e) => e.reason(),
            ActionError::Webhook(e) => e.reason(),
            ActionError::Verify(e) => e.reason(),
        }
    }
}

/// `--stage-dir`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot stage into {dir}: {source}; is it writable by this container (an emptyDir shared with the app)?", dir = dir.display())]
    Write { dir: PathBuf, source: io::Error },
    #[error("stage task failed: {0}")]
    Task(#[source] JoinError),
}

impl StageError {
    pub const REASONS: &'static [&'static str] = &["write_failed"];

    pub fn reason(&self) -> &'static str {
        match self {
            StageError::Write { .. } | StageError::Task(_) => "write_failed",
        }
    }
}

/// `--signal` to `--pid-file`, `--process-name` or `--pid`.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot read the pid file {path}: {source}; is the app running, and is its pid file on a volume shared with this container?", path = path.display())]
    PidFileUnreadable { path: PathBuf, source: io::Error },
    #[error("the pid file {path} does not hold a PID (it holds {content:?})", path = path.display())]
    PidFileInvalid {
        path: PathBuf,
        /// The first 40 characters.
        content: String,
    },
    #[error("cannot list {proc_root}: {source}", proc_root = proc_root.display())]
    ProcUnreadable {
        proc_root: PathBuf,
        source: io::Error,
    },
    #[error("no process named {name:?} found in {proc_root}: is the app running, and does the pod set shareProcessNamespace: true?", proc_root = proc_root.display())]
    NoProcess { name: String, proc_root: PathBuf },
    #[error("refusing to signal PID {pid}: PID 1 is the pod's pause process (or init); point the target at the app")]
    Pid1 { pid: i32 },
    #[error("process {pid} is gone (it exited or was restarted); will retry")]
    Gone { pid: i32 },
    #[error("not permitted to signal process {pid}: run the sidecar with the app's UID (securityContext.runAsUser); an added CAP_KILL capability helps only a sidecar running as root (a non-root container does not get it in its effective set)")]
    NotPermitted { pid: i32 },
    #[error("process {pid} is no longer {name:?}; will retry")]
    Changed { pid: i32, name: String },
    #[error("cannot signal process {pid}: {source}")]
    Failed { pid: i32, source: io::Error },
    #[error("signal {signal} cannot be sent through a pidfd")]
    NotViaPidfd { signal: Signal },
    #[error("signal task failed: {0}")]
    Task(#[source] JoinError),
}

impl SignalError {
    pub const REASONS: &'static [&'static str] = &[
        "target_not_found",
        "target_is_pid_1",
        "permission_denied",
        "target_changed",
        "signal_failed",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            SignalError::PidFileUnreadable { .. }
            | SignalError::PidFileInvalid { .. }
            | SignalError::ProcUnreadable { .. }
            | SignalError::NoProcess { .. }
            | SignalError::Gone { .. } => "target_not_found",
            SignalError::Pid1 { .. } => "target_is_pid_1",
            SignalError::NotPermitted { .. } => "permission_denied",
            SignalError::Changed { .. } => "target_changed",
            SignalError::Failed { .. } | SignalError::NotViaPidfd { .. } | SignalError::Task(_) => {
                "signal_failed"
            }
        }
    }

    /// A failed pidfd_open(2), pidfd_send_signal(2) or kill(2) for `pid`.
    pub(super) fn from_errno(pid: i32, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(nix::libc::ESRCH) => SignalError::Gone { pid },
            Some(nix::libc::EPERM) => SignalError::NotPermitted { pid },
            _ => SignalError::Failed { pid, source: e },
        }
    }
}

/// The trailing `-- PROGRAM [ARGS..]`.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// Waiting for the started program failed (its exit status is unknown).
    #[error("{program}: {source}")]
    Wait { program: String, source: io::Error },
    #[error("{program} did not finish within {}s and was killed", after.as_secs())]
    Timeout { program: String, after: Duration },
    #[error("{program} {status}; stderr: {stderr}")]
    Exit {
        program: String,
        status: ExitStatus,
        /// The trimmed tail of its stderr.
        stderr: String,
    },
}

impl ExecError {
    pub const REASONS: &'static [&'static str] = &["spawn_failed", "exit_status", "timeout"];

    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::Spawn { .. } | ExecError::Wait { .. } => "spawn_failed",
            ExecError::Timeout { .. } => "timeout",
            ExecError::Exit { .. } => "exit_status",
        }
    }
}

/// `--webhook`. `url` is always the redacted `scheme://host:port/…`.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("POST {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("POST {url} failed: connecting to {host}:{port}: {source}")]
    Connect {
        url: String,
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("POST {url} failed: server name {host:?}: {source}")]
    ServerName {
        url: String,
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("POST {url} failed: TLS handshake: {source}")]
    Tls { url: String, source: io::Error },
    #[error("POST {url} failed: building the request: {source}")]
    Request {
        url: String,
        source: hyper::http::Error,
    },
    #[error("POST {url} failed: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("POST {url} answered {status}; only 2xx counts as success")]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
}

impl WebhookError {
    pub const REASONS: &'static [&'static str] = &[
        "connect_failed",
        "tls_failed",
        "request_failed",
        "http_status",
        "timeout",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            WebhookError::Timeout { .. } => "timeout",
            WebhookError::Connect { .. } => "connect_failed",
            WebhookError::ServerName { .. } | WebhookError::Tls { .. } => "tls_failed",
            WebhookError::Request { .. } | WebhookError::Http { .. } => "request_failed",
            WebhookError::Status { .. } => "http_status",
        }
    }
}

/// `--verify-addr`: the app did not serve the new leaf within `--verify-timeout`; the variant
/// says what the last probe saw.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{addr} does not serve the new certificate (sha256 {want}) after {after:?}: it still serves sha256 {served}; did the app's reload fail? check its log")]
    StillOld {
        addr: String,
        want: String,
        after: Duration,
        served: String,
    },
    #[error("{addr} does not serve the new certificate (sha256 {want}) after {after:?}: {source}; did the app's reload fail? check its log")]
    Unreachable {
        addr: String,
        want: String,
        after: Duration,
        source: ProbeError,
    },
}

impl VerifyError {
    pub const REASONS: &'static [&'static str] = &["still_old_certificate", "unreachable"];

    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::StillOld { .. } => "still_old_certificate",
            VerifyError::Unreachable { .. } => "unreachable",
        }
    }
}

/// Why one `--verify-addr` probe read no certificate.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe's TLS configuration could not be built.
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("the handshake ended before the app sent a certificate")]
    NoCertificate,
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// One error of every variant, with the reason it must give.
    fn one_of_each() -> Vec<(ActionError, &'static [&'static str])> {
        let io = || io::Error::from(io::ErrorKind::NotFound);
        let url = || "http://hook:80/…".to_string();
        let stage = |e: StageError| (ActionError::from(e), StageError::REASONS);
        let signal = |e: SignalError| (ActionError::from(e), SignalError::REASONS);
        let exec = |e: ExecError| (ActionError::from(e), ExecError::REASONS);
        let hook = |e: WebhookError| (ActionError::from(e), WebhookError::REASONS);
        let verify = |e: VerifyError| (ActionError::from(e), VerifyError::REASONS);
        let program = || "reload.sh".to_string();
        vec![
            stage(StageError::Write {
                dir: "/s".into(),
                source: io(),
            }),
            signal(SignalError::PidFileUnreadable {
                path: "/p".into(),
                source: io(),
            }),
            signal(SignalError::PidFileInvalid {
                path: "/p".into(),
                content: "x".into(),
            }),
            signal(SignalError::ProcUnreadable {
                proc_root: "/proc".into(),
                source: io(),
            }),
            signal(SignalError::NoProcess {
                name: "nginx".into(),
                proc_root: "/proc".into(),
            }),
            signal(SignalError::Pid1 { pid: 1 }),
            signal(SignalError::Gone { pid: 7 }),
            signal(SignalError::NotPermitted { pid: 7 }),
            signal(SignalError::Changed {
                pid: 7,
                name: "nginx".into(),
            }),
            signal(SignalError::Failed {
                pid: 7,
                source: io(),
            }),
            signal(SignalError::NotViaPidfd {
                signal: Signal::SIGHUP,
            }),
            exec(ExecError::Spawn {
                program: program(),
                source: io(),
            }),
            exec(ExecError::Wait {
                program: program(),
                source: io(),
            }),
            exec(ExecError::Timeout {
                program: program(),
                after: Duration::from_secs(60),
            }),
            exec(ExecError::Exit {
                program: program(),
                status: ExitStatus::from_raw(256),
                stderr: "boom".into(),
            }),
            hook(WebhookError::Timeout {
                url: url(),
                after: Duration::from_secs(10),
            }),
            hook(WebhookError::Connect {
                url: url(),
                host: "hook".into(),
                port: 80,
                source: io(),
            }),
            hook(WebhookError::Tls {
                url: url(),
                source: io(),
            }),
            hook(WebhookError::Status {
                url: url(),
                status: hyper::StatusCode::SERVICE_UNAVAILABLE,
            }),
            verify(VerifyError::StillOld {
                addr: "127.0.0.1:8443".into(),
                want: "aa".into(),
                after: Duration::from_secs(10),
                served: "bb".into(),
            }),
            verify(VerifyError::Unreachable {
                addr: "127.0.0.1:8443".into(),
                want: "aa".into(),
                after: Duration::from_secs(10),
                source: ProbeError::Timeout,
            }),
        ]
    }

    #[test]
    fn every_reason_is_listed_for_its_action_and_labels_are_well_formed() {
        for (err, reasons) in one_of_each() {
            assert!(
                reasons.contains(&err.reason()),
                "{} not in {reasons:?} ({err})",
                err.reason()
            );
        }
        for reasons in [
            StageError::REASONS,
            SignalError::REASONS,
            ExecError::REASONS,
            WebhookError::REASONS,
            VerifyError::REASONS,
        ] {
            for r in reasons {
                assert!(
                    !r.is_empty()
                        && r.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{r}"
                );
            }
        }
    }

    #[test]
    fn messages_are_the_sentences_users_see() {
        let text = |e: ActionError| e.to_string();
        assert_eq!(
            text(SignalError::from_errno(7, io::Error::from_raw_os_error(nix::libc::EPERM)).into()),
            "not permitted to signal process 7: run the sidecar with the app's UID (securityContext.runAsUser); an added CAP_KILL capability helps only a sidecar running as root (a non-root container does not get it in its effective set)"
        );
        assert_eq!(
            text(SignalError::from_errno(7, io::Error::from_raw_os_error(nix::libc::ESRCH)).into()),
            "process 7 is gone (it exited or was restarted); will retry"
        );
        assert_eq!(
            text(
                ExecError::Exit {
                    program: "reload.sh".into(),
                    status: ExitStatus::from_raw(256),
                    stderr: "boom".into(),
                }
                .into()
            ),
            "reload.sh exit status: 1; stderr: boom"
        );
        assert_eq!(
            text(
                ExecError::Timeout {
                    program: "reload.sh".into(),
                    after: Duration::from_secs(60),
                }
                .into()
            ),
            "reload.sh did not finish within 60s and was killed"
        );
        assert_eq!(
            text(
                WebhookError::Status {
                    url: "http://hook:80/…".into(),
                    status: hyper::StatusCode::SERVICE_UNAVAILABLE,
                }
                .into()
            ),
            "POST http://hook:80/… answered 503 Service Unavailable; only 2xx counts as success"
        );
        assert_eq!(
            text(
                VerifyError::Unreachable {
                    addr: "127.0.0.1:8443".into(),
                    want: "aa".into(),
                    after: Duration::from_secs(1),
                    source: ProbeError::NoCertificate,
                }
                .into()
            ),
            "127.0.0.1:8443 does not serve the new certificate (sha256 aa) after 1s: the handshake ended before the app sent a certificate; did the app's reload fail? check its log"
        );
    }
}
