//! A closed stdout or stderr (`mtls-sidecar demo 2>&1 | head -3`, a log collector that went
//! away) must never kill the process or turn into a panic: log lines that cannot be written are
//! dropped, `check` still exits with its verdict.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;
use crate::support::bin;
use crate::support::pki::write_triple;
use crate::support::procs::Reaped;
use crate::support::sidecar::wait_until;

/// A pipe: (read end, write end), close-on-exec, so that no child (this one's, or another
/// test's started meanwhile) inherits a copy of the read end that would keep the pipe open.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// Reads log lines from `reader` until it has the admin endpoint's and the listener's
/// addresses (the sidecar logs them at start-up): (listener, admin).
fn addresses_from_log(reader: &mut impl BufRead) -> (String, String) {
    let (mut listen, mut admin) = (None, None);
    let mut line = String::new();
    while listen.is_none() || admin.is_none() {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the sidecar's log");
        assert!(n > 0, "the sidecar's log ended before it listened");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let address = v["fields"]["address"].as_str().map(str::to_string);
        match v["fields"]["message"].as_str() {
            Some("listener bound") => listen = address,
            Some("admin endpoint listening") => admin = address,
            _ => {}
        }
    }
    (listen.expect("listener"), admin.expect("admin"))
}

fn exit_code(child: &mut Reaped) -> Option<i32> {
    let mut code = None;
    wait_until(WAIT, || match child.0.try_wait() {
        Ok(Some(s)) => {
            code = Some(s.code().unwrap_or(-1));
            true
        }
        _ => false,
    });
    code
}

#[test]
fn server_keeps_serving_when_its_stderr_is_a_closed_pipe() {
    let (env, _) = Env::with_first(TestPki::server);
    let upstream = HttpUpstream::start();
    let (read, write) = pipe();
    let mut child = Reaped(
        Command::new(bin())
            .args(["server", "--cert-dir"])
            .arg(env.dir())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--target",
                &upstream.addr(),
                "--protocol",
                "http",
                "--allow-all",
            ])
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(write)
            .spawn()
            .expect("spawn mtls-sidecar"),
    );
    // Read the start-up lines for the addresses, then close the pipe: a log collector gone.
    let mut log = BufReader::new(std::fs::File::from(read));
    let (addr, _admin) = addresses_from_log(&mut log);
    drop(log);
    let client = client_for(&env, &env.pki.client());
    assert!(
        wait_until(WAIT, || client
            .get(&addr, "/")
            .is_ok_and(|r| r.status == 200)),
        "never served with a closed stderr (exit: {:?})",
        child.0.try_wait()
    );
    // Each of these logs a line (refused handshakes, requests); none may stop the process.
    for _ in 0..5 {
        let _ = TlsClient::anonymous(&env.pki.root.cert_pem).connect(&addr);
        assert_eq!(client.get(&addr, "/").expect("GET").status, 200);
    }
    assert!(matches!(child.0.try_wait(), Ok(None)), "the process ended");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(exit_code(&mut child), Some(0));
}

#[test]
fn demo_piped_into_head_keeps_running_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, write) = pipe();
    let write2 = write.try_clone().expect("dup");
    let mut child = Reaped(
        Command::new(bin())
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--rotate-every", "300ms", "--dir"])
            .arg(dir.path().join("pki"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(write)
            .stderr(write2)
            .spawn()
            .expect("spawn demo"),
    );
    // `| head -3`: read three lines, then close the pipe.
    let mut lines = BufReader::new(std::fs::File::from(read)).lines();
    for _ in 0..3 {
        lines.next().expect("a line").expect("read a line");
    }
    drop(lines);
    // Rotations log a line every 300 ms: each write now fails.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the demo died of its closed output: {:?}",
        child.0.try_wait()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(exit_code(&mut child), Some(0));
}

/// `check` with stdout a pipe nobody reads; its exit code and stderr.
fn check_into_closed_pipe(dir: &std::path::Path, output: &str) -> (Option<i32>, String) {
    let (read, write) = pipe();
    drop(read);
    let out = Command::new(bin())
        .args(["check", "--output", output, "--cert-dir"])
        .arg(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_into_a_closed_pipe_exits_quietly_with_its_verdict() {
    let pki = TestPki::new();
    let (good, other) = (pki.server(), pki.server());
    let valid = tempfile::tempdir().expect("tempdir");
    write_triple(
        valid.path(),
        &good.chain_pem,
        &good.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    let invalid = tempfile::tempdir().expect("tempdir");
    write_triple(
        invalid.path(),
        &good.chain_pem,
        &other.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    for output in ["text", "json"] {
        assert_eq!(
            check_into_closed_pipe(valid.path(), output),
            (Some(0), String::new()),
            "valid, --output {output}"
        );
        assert_eq!(
            check_into_closed_pipe(invalid.path(), output),
            (Some(1), String::new()),
            "invalid, --output {output}"
        );
    }
}
