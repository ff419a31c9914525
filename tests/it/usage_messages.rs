//! What a newcomer meets first: mistakes in flags and environment variables are refused at once
//! (exit 2) with a message that says what is wrong and where it came from, the usual spellings
//! of a boolean variable work, and `demo` cleans up its throwaway keys.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::bin_command;
use crate::support::cli_clients::{run_bounded, Ran};
use crate::support::fixture::Env;
use crate::support::pki::TestPki;
use crate::support::sidecar::{wait_until, Sidecar};

const WAIT: Duration = Duration::from_secs(10);

/// Runs the binary with `args` and `env` (and no other MTLS_SIDECAR_* variable), bounded.
fn run(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = bin_command();
    cmd.args(args).envs(env.iter().copied());
    run_bounded(&mut cmd, b"", WAIT)
}

fn code(ran: &Ran) -> Option<i32> {
    ran.status.and_then(|s| s.code())
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    let (env, _) = Env::with_first(TestPki::server);
    let dir = env.dir().display().to_string();
    for value in ["1", "yes", "on", "true", "TRUE"] {
        // `server` with no other access rule: a usage error unless the variable counts as true.
        let sc = Sidecar::start_via::<&str, _>(
            &["env", &format!("MTLS_SIDECAR_ALLOW_ALL={value}")],
            "server",
            [
                "--cert-dir",
                &dir,
                "--listen",
                "127.0.0.1:0",
                "--target",
                "127.0.0.1:9",
            ],
        );
        assert!(sc.wait_until(WAIT, || sc.ready()), "{value}: {}", sc.log());
    }
}

#[test]
fn a_bad_variable_is_named_in_the_error() {
    let ran = run(
        &[
            "server",
            "--cert-dir",
            "/nonexistent",
            "--target",
            "127.0.0.1:9",
        ],
        &[("MTLS_SIDECAR_ALLOW_ALL", "maybe")],
    );
    assert_eq!(code(&ran), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("--allow-all"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("MTLS_SIDECAR_ALLOW_ALL"),
        "the message does not name the variable: {}",
        ran.stderr
    );
    // Given on the command line, the flag is what is named (no note about a variable).
    let ran = run(
        &[
            "server",
            "--cert-dir",
            "/x",
            "--target",
            "127.0.0.1:9",
            "--listen",
            "nowhere",
        ],
        &[("MTLS_SIDECAR_LISTEN", "also-bad")],
    );
    assert_eq!(code(&ran), Some(2), "{ran:?}");
    assert!(
        !ran.stderr.contains("MTLS_SIDECAR_LISTEN"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_bare_port_as_listen_address_gets_a_hint() {
    let ran = run(
        &[
            "server",
            "--cert-dir",
            "/x",
            "--target",
            "127.0.0.1:9",
            "--allow-all",
            "--listen",
            "8443",
        ],
        &[],
    );
    assert_eq!(code(&ran), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("0.0.0.0:8443"), "{}", ran.stderr);
    assert!(ran.stderr.contains("[::]:8443"), "{}", ran.stderr);
}

#[test]
fn pid_0_and_1_are_refused_before_anything_runs() {
    for pid in ["0", "1"] {
        let ran = run(&["watch", "--cert-dir", "/x", "--pid", pid], &[]);
        assert_eq!(code(&ran), Some(2), "--pid {pid}: {ran:?}");
        assert!(ran.stderr.contains("never signalled"), "{}", ran.stderr);
    }
}

/// Runs `demo` (with `extra`), waits for its first line, stops it; returns the PKI directory
/// it printed.
fn demo_dir_after_exit(tmp: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let sc = Sidecar::start_via::<&str, _>(
        &["env", &format!("TMPDIR={}", tmp.display())],
        "demo",
        [
            &["--listen", "127.0.0.1:0", "--rotate-every", "0"][..],
            extra,
        ]
        .concat(),
    );
    assert!(
        sc.wait_until(WAIT, || sc.stdout().contains("demo PKI in ")),
        "{}",
        sc.stdout()
    );
    let out = sc.stdout();
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("demo PKI in "))
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .expect("the PKI directory");
    assert!(dir.join("server/tls.key").exists(), "{}", dir.display());
    let mut sc = sc;
    sc.signal(Signal::SIGTERM);
    let status = sc.wait_exit(WAIT).expect("demo exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", sc.log());
    dir
}

#[test]
fn demo_removes_its_throwaway_keys_at_exit_unless_given_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = demo_dir_after_exit(tmp.path(), &[]);
    assert!(dir.starts_with(tmp.path()), "{}", dir.display());
    assert!(
        wait_until(WAIT, || !dir.exists()),
        "{} was left behind",
        dir.display()
    );
    let chosen = tmp.path().join("mine");
    let kept = demo_dir_after_exit(tmp.path(), &["--dir", &chosen.display().to_string()]);
    assert_eq!(kept, chosen);
    assert!(
        chosen.join("server/tls.key").exists(),
        "a chosen --dir must stay"
    );
}
