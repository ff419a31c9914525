//! A credential read that fails for want of a system resource (EMFILE: the process's file
//! descriptors are all taken) says nothing about the files: the reload is retried with backoff
//! until it succeeds, without waiting for another file event or a poll (which may be off).

use std::process::Command;
use std::time::Duration;

use super::*;
use crate::support::require_tool;

/// The lowest descriptor number the process does not use: the next `open` would get it.
fn lowest_free_fd(pid: u32) -> usize {
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).expect("a free number")
}

/// Sets the soft RLIMIT_NOFILE of a running process (the hard limit stays).
fn set_soft_nofile(pid: u32, soft: usize) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_that_ran_out_of_file_descriptors_is_retried_until_it_succeeds() {
    if !require_tool("prlimit") {
        return;
    }
    let (mut env, _) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    let pid = sc.pid();
    let next = env.pki.server();
    // RLIMIT_NOFILE bounds descriptor numbers: with the limit at the lowest free number,
    // every new descriptor is refused (EMFILE) while those open keep working.
    set_soft_nofile(pid, lowest_free_fd(pid));
    env.publish(&next);
    assert!(
        sc.wait_until(WAIT, || sc.log().contains("cannot be read for now")),
        "the read never failed with EMFILE: the test proves nothing\n{}",
        sc.log()
    );
    // Let every event-driven attempt (kubelet's clean-up after the swap, debounced) fail too:
    // from here on only a scheduled retry can load the new files.
    std::thread::sleep(Duration::from_millis(1500));
    // (The admin endpoint cannot accept meanwhile either: read the log.)
    assert!(
        !sc.log().contains(&next.serial_hex),
        "loaded while out of descriptors?\n{}",
        sc.log()
    );
    set_soft_nofile(pid, 1024);
    assert!(
        sc.wait_until(Duration::from_secs(20), || sc.serial().as_deref()
            == Some(&*next.serial_hex)),
        "the new certificate was never loaded after the descriptors were back: {}\n{}",
        sc.status(),
        sc.log()
    );
    assert!(
        sc.counter(r#"mtls_sidecar_reload_failures_total{set="default",reason="unreadable"}"#)
            >= 1.0
    );
    assert!(
        sc.status()["sets"][0]["last_error"].is_null(),
        "{}",
        sc.status()
    );
}
