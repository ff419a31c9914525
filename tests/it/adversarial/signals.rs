//! Signals a hostile or careless operator sends: SIGHUP (what nginx and ghostunnel users send to
//! reload) re-reads the credentials with the usual validate-then-swap and never exits; the other
//! signals whose default action would kill the process are logged and ignored, in `server`,
//! `client` and `watch`; SIGTERM during start-up drains and exits 0 like a later one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;
use crate::support::bin;
use crate::support::pki::write_triple;
use crate::support::sidecar::wait_until;

const IGNORED: [Signal; 7] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
];

/// A `--cert-dir` whose files are symlinks into another directory: replacing the files there
/// makes no event in the watched directory, so only a poll or SIGHUP notices.
struct Redirected {
    tmp: tempfile::TempDir,
}

impl Redirected {
    fn new(leaf: &Leaf, ca_pem: &str) -> Redirected {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("real")).expect("mkdir real");
        std::fs::create_dir(tmp.path().join("mount")).expect("mkdir mount");
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(
                tmp.path().join("real").join(f),
                tmp.path().join("mount").join(f),
            )
            .expect("symlink");
        }
        let r = Redirected { tmp };
        r.replace(&leaf.chain_pem, &leaf.key_pkcs8_pem, ca_pem);
        r
    }

    fn dir(&self) -> String {
        self.tmp.path().join("mount").display().to_string()
    }

    /// Writes the triple into a fresh directory and swaps it in for `real/` at once.
    fn replace(&self, cert: &str, key: &str, ca: &str) {
        let next = self.tmp.path().join("next");
        let _ = std::fs::remove_dir_all(&next);
        std::fs::create_dir(&next).expect("mkdir next");
        write_triple(&next, cert, key, ca);
        let real = self.tmp.path().join("real");
        let old = self.tmp.path().join("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&real, &old).expect("move real aside");
        std::fs::rename(&next, &real).expect("swap in next");
    }
}

#[test]
fn sighup_rereads_credentials_that_changed_without_a_file_event() {
    let pki = TestPki::new();
    let (first, second) = (pki.server(), pki.server());
    let vol = Redirected::new(&first, &pki.root.cert_pem);
    let upstream = HttpUpstream::start();
    let sc = Sidecar::server([
        "--cert-dir",
        &vol.dir(),
        "--listen",
        "127.0.0.1:0",
        "--target",
        &upstream.addr(),
        "--protocol",
        "http",
        "--allow-all",
        "--poll-interval",
        "0",
    ]);
    assert!(sc.wait_until(WAIT, || sc.serial().as_deref() == Some(&*first.serial_hex)));
    vol.replace(&second.chain_pem, &second.key_pkcs8_pem, &pki.root.cert_pem);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sc.generation(),
        1,
        "noticed without a signal: the test proves nothing"
    );
    sc.signal(Signal::SIGHUP);
    assert!(
        sc.wait_until(WAIT, || sc.serial().as_deref() == Some(&*second.serial_hex)),
        "SIGHUP did not load the new certificate: {}\n{}",
        sc.status(),
        sc.log()
    );
    let served = TlsClient::with_leaf(&pki.root.cert_pem, &pki.client())
        .connect(sc.listen_addr())
        .expect("handshake")
        .peer
        .serial_hex;
    assert_eq!(served, second.serial_hex);
    assert!(
        sc.log().contains("re-reading the credentials"),
        "{}",
        sc.log()
    );
}

#[test]
fn sighup_with_broken_credentials_keeps_the_last_good_ones_and_runs_on() {
    let pki = TestPki::new();
    let (first, other) = (pki.server(), pki.server());
    let vol = Redirected::new(&first, &pki.root.cert_pem);
    let mut sc = Sidecar::server([
        "--cert-dir",
        &vol.dir(),
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:9",
        "--allow-all",
        "--poll-interval",
        "0",
    ]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1));
    // The new certificate with another certificate's key.
    vol.replace(&other.chain_pem, &first.key_pkcs8_pem, &pki.root.cert_pem);
    sc.signal(Signal::SIGHUP);
    assert!(
        sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
            == Some("key_mismatch")),
        "{}",
        sc.status()
    );
    assert_eq!(sc.serial().as_deref(), Some(&*first.serial_hex));
    assert!(sc.running(), "SIGHUP stopped the process");
    assert!(sc.ready());
}

/// Sends every ignored signal, then checks the process runs, answers, logged each, and still
/// stops cleanly on SIGTERM.
fn ignores_terminating_signals(mut sc: Sidecar) {
    for s in IGNORED {
        sc.signal(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(sc.running(), "a signal stopped the process:\n{}", sc.log());
    assert!(sc.healthy());
    for s in IGNORED {
        let name = s.as_str();
        assert!(
            sc.wait_until(WAIT, || sc
                .log()
                .lines()
                .any(|l| l.contains("signal ignored") && l.contains(name))),
            "no log line for {name}:\n{}",
            sc.log()
        );
    }
    assert_eq!(sc.terminate().code(), Some(0), "{}", sc.log());
}

#[test]
fn server_logs_and_ignores_other_terminating_signals() {
    let (_env, _upstream, sc) = http_proxy(&[]);
    ignores_terminating_signals(sc);
}

#[test]
fn client_logs_and_ignores_other_terminating_signals() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = pki.client();
    write_triple(
        dir.path(),
        &leaf.chain_pem,
        &leaf.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    let sc = Sidecar::start(
        "client",
        [
            "--cert-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--target",
            "api.production.svc.cluster.local:8443",
        ],
    );
    assert!(sc.wait_until(WAIT, || sc.ready()), "{}", sc.log());
    ignores_terminating_signals(sc);
}

#[test]
fn watch_logs_and_ignores_other_terminating_signals() {
    let (env, _) = Env::with_first(TestPki::server);
    let sc = env.start("1s", &[]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    ignores_terminating_signals(sc);
}

/// A signal-mask line (`SigBlk`, `SigCgt`) of a process's main thread, from `/proc`.
fn mask(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    u64::from_str_radix(line[name.len() + 1..].trim(), 16).ok()
}

/// Runs `server` on `dir` and sends `signal` as soon as its `main` has started, before it could
/// have bound anything: the moment its main thread holds the signal blocked (until the handler
/// exists), or, if that short moment is missed, the moment the handler exists. A signal that
/// arrives before `main` runs at all (while the kernel and loader start the program) takes the
/// default action, as for any process. Also says whether the signal was sent while held.
fn signalled_at_start(dir: &Path, signal: Signal) -> (crate::support::procs::Reaped, bool) {
    let child = Command::new(bin())
        .args(["server", "--cert-dir"])
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--target",
            "127.0.0.1:9",
            "--allow-all",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mtls-sidecar");
    let child = crate::support::procs::Reaped(child);
    let bit = 1u64 << (signal as i32 - 1);
    let deadline = std::time::Instant::now() + WAIT;
    // Busy: the blocked moment lasts a few milliseconds.
    let held = loop {
        if mask(child.pid(), "SigBlk").is_some_and(|m| m & bit != 0) {
            break true;
        }
        if mask(child.pid(), "SigCgt").is_some_and(|m| m & bit != 0) {
            break false;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{signal} is neither held nor handled within {WAIT:?} of the start"
        );
    };
    let pid = nix::unistd::Pid::from_raw(child.pid() as i32);
    nix::sys::signal::kill(pid, signal).expect("signal");
    (child, held)
}

#[test]
fn sigterm_during_start_up_drains_and_exits_0() {
    let (env, _) = Env::with_first(TestPki::server);
    let mut held = 0;
    for _ in 0..5 {
        let (mut child, was_held) = signalled_at_start(&env.dir(), Signal::SIGTERM);
        held += usize::from(was_held);
        let mut status = None;
        assert!(
            wait_until(WAIT, || {
                status = child.0.try_wait().expect("wait");
                status.is_some()
            }),
            "no exit within {WAIT:?} of a SIGTERM during start-up"
        );
        let status = status.expect("exited");
        assert_eq!(status.code(), Some(0), "SIGTERM during start-up: {status}");
    }
    // The start-up window lasts milliseconds and the poll above is busy: most runs land in it.
    assert!(
        held > 0,
        "no run sent SIGTERM while it was held: the test proved nothing"
    );
}

#[test]
fn sighup_during_start_up_does_not_kill_the_process() {
    let (env, _) = Env::with_first(TestPki::server);
    for _ in 0..3 {
        let (mut child, _) = signalled_at_start(&env.dir(), Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            matches!(child.0.try_wait(), Ok(None)),
            "SIGHUP during start-up ended the process: {:?}",
            child.0.try_wait()
        );
    }
}

#[test]
fn the_exec_action_starts_with_no_blocked_or_ignored_signals() {
    let (env, _) = Env::with_first(TestPki::server);
    let out = env.tmp().join("mask");
    let script = format!(
        "grep -E '^Sig(Blk|Ign):' /proc/self/status > '{}'",
        out.display()
    );
    let sc = Sidecar::watch([
        "--cert-dir",
        &env.dir().display().to_string(),
        "--act-on-start",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.lines().count() == 2)),
        "the exec action never ran:\n{}",
        sc.log()
    );
    // Nothing blocked; and none of the signals the sidecar handles ignored (others may be
    // ignored by whoever started the test run, and are inherited as they should be).
    let handled = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
        .into_iter()
        .chain(IGNORED)
        .fold(0u64, |m, s| m | 1 << (s as i32 - 1));
    let masks = std::fs::read_to_string(&out).expect("mask file");
    for line in masks.lines() {
        let (name, value) = line.split_once(':').expect("Name: value");
        let mask = u64::from_str_radix(value.trim(), 16).expect("hex mask");
        let bad = if name == "SigBlk" {
            mask
        } else {
            mask & handled
        };
        assert_eq!(bad, 0, "the program the exec action ran has {name} {value}");
    }
}
