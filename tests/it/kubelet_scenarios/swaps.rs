//! Kubelet's own updates (KUBELET.md scenarios 1-5, 10, 11): the `..data` swap, the no-op
//! resync, fsGroup ATTRIBs before the swap, racing readers, a key that appears after the
//! commit point, and a burst of swaps.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::support::fixture::{tls_files, Env};
use crate::support::kubelet::{Rng, WriteOutcome};
use crate::support::pki::{KeyAlg, Leaf, TestPki};

/// A volume holding `pki.server()` and a sidecar that has loaded it (generation 1).
fn started(poll: &str) -> (Env, Leaf, Sidecar) {
    let (env, first) = Env::with_first(TestPki::server);
    let sc = env.start(poll, &[]);
    wait_for_generation(&sc, 1);
    assert_eq!(sc.serial().as_deref(), Some(first.serial_hex.as_str()));
    (env, first, sc)
}

#[test]
fn s01_kubelet_swap_reloads_once() {
    let (mut env, first, sc) = started("0");
    assert!(sc.ready(), "valid credentials but /readyz is not 200");
    let success = sc.counter(RELOAD_SUCCESS);
    // New cert, key and CA in one generation, exactly as kubelet writes them.
    let new_root = TestPki::new_root("mTLS Rotated Root CA", KeyAlg::EcdsaP256);
    let next = env.pki.issue_by(&new_root, &TestPki::server_spec());
    let outcome = env.vol.write(&tls_files(&next, &new_root.cert_pem));
    assert!(matches!(outcome, WriteOutcome::Swapped { .. }));

    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
    assert_eq!(env.exec.shas(), std::slice::from_ref(&next.sha256_hex));
    assert_eq!(env.exec.generations(), [2]);
    assert_eq!(sc.set()["sha256"], next.sha256_hex.as_str());
    assert_eq!(
        sc.counter(RELOAD_SUCCESS) - success,
        1.0,
        "{}",
        sc.metrics()
    );
    assert!(sc.ready());
    let info = "mtls_sidecar_certificate_info";
    assert_eq!(sc.metric_sum(info, &[("serial", &next.serial_hex)]), 1.0);
    assert_eq!(
        sc.metric_sum(info, &[("serial", &first.serial_hex)]),
        0.0,
        "the replaced certificate is still exported as info: {}",
        sc.metrics()
    );
    let set = sc.set();
    assert_eq!(set["name"], "default");
    assert!(set["last_error"].is_null(), "{set}");
    assert!(set["subject"]
        .as_str()
        .unwrap_or("")
        .contains("api.production.svc.cluster.local"));
    let sans = set["sans"].as_array().cloned().unwrap_or_default();
    assert!(
        sans.iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("api.production.svc"))),
        "{set}"
    );
    for field in ["not_before", "not_after", "loaded_at"] {
        let t = set[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing: {set}"));
        let rfc3339 = time::format_description::well_known::Rfc3339;
        time::OffsetDateTime::parse(t, &rfc3339).unwrap_or_else(|e| panic!("{field} {t}: {e}"));
    }
    assert!(sc.status()["listeners"].is_array());
    let expiry =
        r#"mtls_sidecar_certificate_expiration_timestamp_seconds{set="default",role="leaf"}"#;
    let ca_expiry =
        r#"mtls_sidecar_certificate_expiration_timestamp_seconds{set="default",role="ca"}"#;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        sc.metric(expiry).is_some_and(|t| t > now + 80.0 * 86400.0),
        "{}",
        sc.metrics()
    );
    assert!(
        sc.metric(ca_expiry).is_some_and(|t| t > now),
        "{}",
        sc.metrics()
    );
    let last_ok = r#"mtls_sidecar_last_reload_success_timestamp_seconds{set="default"}"#;
    assert!(
        sc.metric(last_ok).is_some_and(|t| t > now - 60.0),
        "{}",
        sc.metrics()
    );
    let action = r#"mtls_sidecar_actions_total{set="default",action="exec",result="success"}"#;
    assert_eq!(sc.counter(action), 1.0, "{}", sc.metrics());
}

#[test]
fn s02_noop_resync_never_reloads() {
    // A short poll too: re-hashing unchanged files must not publish either.
    let (mut env, first, sc) = started("1s");
    let success = sc.counter(RELOAD_SUCCESS);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        env.vol.resync();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_unchanged(&sc, &env.exec, 1, &first.serial_hex, 0);
    assert_eq!(sc.counter(RELOAD_SUCCESS), success);
    assert_eq!(all_failures(&sc), 0.0, "{}", sc.metrics());
}

#[test]
fn s02_swap_with_unchanged_credentials_is_deduplicated() {
    // A real swap (the Secret gained an unrelated key) whose tls.* bytes are identical:
    // the watcher fires, the content hash matches, nothing is published or executed.
    let (mut env, first, sc) = started("0");
    let unchanged = sc.counter(RELOAD_UNCHANGED);
    let mut files = tls_files(&first, &env.pki.root.cert_pem);
    files.push(("unrelated.txt", b"hello".to_vec()));
    assert!(matches!(
        env.vol.write(&files),
        WriteOutcome::Swapped { .. }
    ));
    let looked = sc.wait_until(WAIT, || sc.counter(RELOAD_UNCHANGED) > unchanged);
    assert!(
        looked,
        "no reload attempt counted as unchanged: {}",
        sc.metrics()
    );
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 1, &first.serial_hex, 0);
}

#[test]
fn s03_fsgroup_attribs_apply_nothing_before_the_swap() {
    let (mut env, first, sc) = started("0");
    let gid = if nix::unistd::geteuid().is_root() {
        2000
    } else {
        nix::unistd::getegid().as_raw()
    };
    env.vol.set_fs_group(Some(gid));
    let next = env.pki.server();
    // Steps 1-7: new dir written, ownership walk done (ATTRIBs on tls.crt, ..data, the
    // root), ..data_tmp created; the rename has not happened.
    let mut swap = env
        .vol
        .write_until_rename(&tls_files(&next, &env.pki.root.cert_pem))
        .expect("content changed");
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 1, &first.serial_hex, 0);
    swap.finish();
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
}

/// Swap through `leaves` for `period`, one swap every `pace` on average (jittered 0.5x-1.5x,
/// so swaps land at every point of the sidecar's reads), sampling `/status` meanwhile: every
/// served serial must be one we wrote (with its own key), and the sidecar must publish
/// *during* the storm (reads raced the swaps, and the stream did not postpone reloads
/// forever). Ends on the last leaf.
fn hammer(
    env: &mut Env,
    sc: &Sidecar,
    leaves: &[Leaf],
    files: impl Fn(&Leaf) -> Vec<(&'static str, Vec<u8>)>,
    pace: Duration,
) {
    let known: HashSet<&str> = leaves.iter().map(|l| l.serial_hex.as_str()).collect();
    let start_generation = sc.generation();
    let mut rng = Rng::seeded();
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut swaps = 0;
    let mut sampled_generation = start_generation;
    while Instant::now() < deadline {
        env.vol.write(&files(&leaves[swaps % leaves.len()]));
        swaps += 1;
        if swaps % 8 == 0 {
            let set = sc.set();
            let served = set["serial"].as_str().expect("a serial is served");
            assert!(known.contains(served), "served unknown serial {served}");
            sampled_generation = set["generation"].as_u64().expect("generation");
        }
        let jitter = 50 + rng.next_u64() % 100;
        std::thread::sleep(pace * jitter as u32 / 100);
    }
    eprintln!("hammer: {swaps} swaps, generation {start_generation} -> {sampled_generation}");
    assert!(
        sampled_generation >= start_generation + 2,
        "{swaps} swaps in 2.5 s yet generation {start_generation} -> {sampled_generation} \
         while they ran: reloads postponed or never consistent; metrics:\n{}",
        sc.metrics()
    );
    let last = &leaves[leaves.len() - 1];
    env.vol.write(&files(last));
    wait_for_serial(sc, &last.serial_hex);
    let shas: HashSet<&str> = leaves.iter().map(|l| l.sha256_hex.as_str()).collect();
    for sha in env.exec.shas() {
        assert!(shas.contains(sha.as_str()), "exec saw unknown sha256 {sha}");
    }
}

/// We cannot pause the sidecar between its reads of tls.crt and tls.key from outside, so
/// the interleaving is forced statistically: ~400 swaps in 2.5 s while it keeps reloading
/// (`hammer` checks it published mid-storm, i.e. its reads really raced the swaps).
#[test]
fn s04_torn_reads_are_retried_never_published() {
    let (mut env, first, sc) = started("100ms");
    let mut leaves = env.leaves(12);
    leaves.insert(0, first);
    let root = env.pki.root.cert_pem.clone();
    let files = |l: &Leaf| tls_files(l, &root);
    hammer(&mut env, &sc, &leaves, files, Duration::from_millis(5));
    // A cert from generation N with the key of N+1 is a moving ..data, not a bad Secret.
    assert_eq!(failures(&sc, "key_mismatch"), 0.0, "{}", sc.metrics());
    assert!(sc.ready());
}

#[test]
fn s05_old_dir_removed_mid_read_is_retried() {
    let (mut env, first, sc) = started("100ms");
    let mut leaves = env.leaves(12);
    leaves.insert(0, first);
    let root = env.pki.root.cert_pem.clone();
    // Big tls.crt files (comment padding, ~300 KiB) keep each read long, so step 12's
    // RemoveAll often lands between readlink(..data) and the last read.
    let padded = |l: &Leaf| {
        let mut files = tls_files(l, &root);
        files[0].1 = crate::support::writers::oversized_pem(&l.chain_pem, 300 << 10);
        files
    };
    hammer(&mut env, &sc, &leaves, padded, Duration::from_millis(40));
    assert_eq!(failures(&sc, "missing_file"), 0.0, "{}", sc.metrics());
    assert_eq!(failures(&sc, "key_mismatch"), 0.0, "{}", sc.metrics());
    assert!(sc.ready());
}

#[test]
fn s10_new_key_is_enoent_until_step_10_then_converges() {
    let mut env = Env::new();
    let first = env.pki.server();
    // The Secret has no ca.crt yet: the set is incomplete.
    env.vol
        .write(&tls_files(&first, &env.pki.root.cert_pem)[..2]);
    let sc = env.start("0", &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sc.generation(), 0);
    assert!(!sc.ready(), "ready without a ca.crt");
    let next = env.pki.server();
    let mut swap = env
        .vol
        .write_until_rename(&tls_files(&next, &env.pki.root.cert_pem))
        .expect("content changed");
    swap.commit(); // step 8: ..data has ca.crt, the top-level ca.crt symlink is ENOENT
    std::thread::sleep(QUIET);
    assert!(sc.healthy());
    if let Some(serial) = sc.serial() {
        assert_eq!(
            serial, next.serial_hex,
            "published a generation we did not commit"
        );
    }
    swap.finish(); // step 10: ca.crt -> ..data/ca.crt
    wait_for_serial(&sc, &next.serial_hex);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "not ready after step 10"
    );
    std::thread::sleep(QUIET);
    assert_eq!(sc.generation(), 1, "{}", sc.status());
}

#[test]
fn s11_burst_of_50_swaps_applies_the_last() {
    let (mut env, first, sc) = started("0");
    let leaves = env.leaves(50);
    let start = Instant::now();
    for (i, leaf) in leaves.iter().enumerate() {
        env.publish(leaf);
        let next_slot = start + Duration::from_millis(20 * (i as u64 + 1));
        std::thread::sleep(next_slot.saturating_duration_since(Instant::now()));
    }
    let last = leaves.last().expect("50 leaves");
    wait_for_serial(&sc, &last.serial_hex);
    // The action for the final generation runs (--min-interval may delay it).
    let done = sc.wait_until(WAIT, || env.exec.shas().last() == Some(&last.sha256_hex));
    assert!(
        done,
        "last exec is not the final generation: {:?}",
        env.exec.lines()
    );
    std::thread::sleep(QUIET);
    // Content-hash dedupe: at most one publish per distinct generation written. Actions:
    // at most one per publish after start-up (fewer once --min-interval coalesces them).
    let generation = sc.generation();
    assert!((2..=51).contains(&generation), "generation {generation}");
    let lines = env.exec.lines();
    let publishes = generation as usize - 1;
    assert!(
        (1..=publishes).contains(&lines.len()),
        "{} actions for {publishes} publishes: {lines:?}",
        lines.len()
    );
    if publishes > 10 {
        eprintln!("s11: {publishes} publishes for 50 swaps in 1 s (KUBELET.md: \"a few at most\")");
    }
    let gens = env.exec.generations();
    assert!(
        gens.windows(2).all(|w| w[0] < w[1]),
        "actions out of order: {lines:?}"
    );
    assert_eq!(gens.last(), Some(&generation));
    let known: HashSet<&str> = leaves.iter().map(|l| l.sha256_hex.as_str()).collect();
    for sha in env.exec.shas() {
        assert!(
            known.contains(sha.as_str()) && sha != first.sha256_hex,
            "bad sha {sha}"
        );
    }
}
