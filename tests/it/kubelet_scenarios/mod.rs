//! The 20 scenarios of `docs/kubelet-volumes.md`, each replayed against a running
//! `mtls-sidecar watch` and asserted through its admin endpoint (`/status` generation and
//! serial, `/metrics`) and its exec action (one line per invocation, carrying the
//! generation and SHA-256, so every published leaf maps back to one we wrote).
//!
//! Rules: wait for conditions (bounded, generous timeouts), never assert on speed; fixed
//! sleeps only to let time pass before asserting that nothing happened. Tests that must
//! prove the *watcher* (not the poll) saw a change run with `--poll-interval 0`.
//!
//! - `swaps`: kubelet's own updates (s01-s05, s10, s11)
//! - `non_kubelet`: other writers and broken volumes (s06-s09, s16-s19)
//! - `watcher`: watch mechanics: overflow, file watch, re-watch, startup (s12-s15, s20)
//! - `refused_once`: a bad update is reported once, however many events and polls read it

mod non_kubelet;
mod refused_once;
mod swaps;
mod watcher;

use std::time::Duration;

use crate::support::sidecar::{ExecCounter, Sidecar};

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that must *not* happen.
const QUIET: Duration = Duration::from_millis(1500);

const RELOAD_SUCCESS: &str = r#"mtls_sidecar_reloads_total{set="default",result="success"}"#;
const RELOAD_FAILURE: &str = r#"mtls_sidecar_reloads_total{set="default",result="failure"}"#;
const RELOAD_UNCHANGED: &str = r#"mtls_sidecar_reloads_total{set="default",result="unchanged"}"#;

/// `mtls_sidecar_reload_failures_total{set="default",reason}`.
fn failures(sc: &Sidecar, reason: &str) -> f64 {
    sc.counter(&format!(
        r#"mtls_sidecar_reload_failures_total{{set="default",reason="{reason}"}}"#
    ))
}

/// Failures of every reason.
fn all_failures(sc: &Sidecar) -> f64 {
    sc.metric_sum("mtls_sidecar_reload_failures_total", &[("set", "default")])
}

/// Wait until `/status` serves `serial`; panic with the status otherwise.
fn wait_for_serial(sc: &Sidecar, serial: &str) {
    let served = sc.wait_until(WAIT, || sc.serial().as_deref() == Some(serial));
    assert!(
        served,
        "serial {serial} never served within {WAIT:?}; status: {}",
        sc.status()
    );
}

/// Wait until `/status` reports `generation`.
fn wait_for_generation(sc: &Sidecar, generation: u64) {
    let reached = sc.wait_until(WAIT, || sc.generation() == generation);
    assert!(
        reached,
        "generation {generation} never reached; status: {}",
        sc.status()
    );
}

/// Wait until the exec action ran `n` times.
fn wait_for_exec(sc: &Sidecar, exec: &ExecCounter, n: usize) {
    let ran = sc.wait_until(WAIT, || exec.count() >= n);
    assert!(
        ran,
        "exec ran {} times, expected {n}: {:?}",
        exec.count(),
        exec.lines()
    );
}

/// Assert the state did not move: same generation and serial, no new exec.
fn assert_unchanged(sc: &Sidecar, exec: &ExecCounter, generation: u64, serial: &str, execs: usize) {
    let set = sc.set();
    assert_eq!(set["generation"], generation, "generation moved: {set}");
    assert_eq!(set["serial"], serial, "serial moved: {set}");
    assert_eq!(exec.count(), execs, "unexpected exec: {:?}", exec.lines());
}
