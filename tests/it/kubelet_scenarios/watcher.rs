//! Watch mechanics (KUBELET.md scenarios 12-15, 20): inotify queue overflow, why a
//! file-level watch is wrong, the volume directory removed and re-created, paths missing
//! at start-up, `..data` present without its user-visible symlink. Plus the start-up action
//! rule and SIGTERM.

use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::*;
use crate::support::fixture::{reissue_same_key, tls_files, Env};
use crate::support::inotify::{can_limit_queue, start_with_tiny_queue};
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::TestPki;
use crate::support::sidecar::INOTIFY_GATE;
use crate::support::writers;

#[test]
fn s12_queue_overflow_rescans_and_loses_nothing() {
    let (mut env, first) = Env::with_first(TestPki::server);
    if !can_limit_queue() {
        // Without root we cannot shrink the kernel queue, and a real overflow needs ~16k
        // unread events. Fall back to what overflow means for us (changes the watcher
        // never saw) and require the poll to converge, as after a missed Rescan.
        eprintln!("s12: fs.inotify.max_queued_events is not writable; checking the poll path only");
        let sc = env.start("1s", &[]);
        wait_for_generation(&sc, 1);
        let next = reissue_same_key(&env.pki, &first);
        writers::write_in_place(&env.dir().join("..data/tls.crt"), next.pem.as_bytes());
        wait_for_serial(&sc, &next.serial_hex);
        return;
    }
    // Queue limit 0: the sidecar's inotify instance only ever receives IN_Q_OVERFLOW
    // (notify: `Other` + `Rescan`, no paths). Polling is off, so each update below is
    // loaded only if a Rescan triggers a full re-read.
    let sc = start_with_tiny_queue(0, env.args("0", &[])).expect("sysctl writable");
    wait_for_generation(&sc, 1);
    let leaves = env.leaves(2);
    for (i, leaf) in leaves.iter().enumerate() {
        env.publish(leaf);
        wait_for_serial(&sc, &leaf.serial_hex);
        wait_for_exec(&sc, &env.exec, i + 1);
    }
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 3, &leaves[1].serial_hex, 2);
}

#[test]
fn s13_file_watch_would_miss_the_second_swap() {
    let (mut env, _first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    wait_for_generation(&sc, 1);
    // The naive design: watch tls.crt itself (inotify follows the symlink to the file in
    // the current timestamped dir).
    let (tx, rx) = mpsc::channel();
    let mut naive = {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        notify::recommended_watcher(tx).expect("notify watcher")
    };
    naive
        .watch(&env.dir().join("tls.crt"), RecursiveMode::NonRecursive)
        .expect("watch tls.crt");
    let [second, third] = [env.pki.server(), env.pki.server()];

    env.publish(&second);
    wait_for_serial(&sc, &second.serial_hex);
    std::thread::sleep(Duration::from_millis(300));
    let at_first_swap: Vec<_> = rx.try_iter().collect();
    assert!(
        !at_first_swap.is_empty(),
        "the file watch saw nothing at the first swap"
    );

    env.publish(&third);
    wait_for_serial(&sc, &third.serial_hex);
    std::thread::sleep(QUIET);
    let at_second_swap: Vec<_> = rx.try_iter().collect();
    assert!(
        at_second_swap.is_empty(),
        "a watch on tls.crt died with the first swap, yet it saw {at_second_swap:?}"
    );
    // The directory watch (poll is off) caught both.
    wait_for_exec(&sc, &env.exec, 2);
    assert_eq!(env.exec.shas(), [second.sha256_hex, third.sha256_hex]);
    assert_eq!(sc.generation(), 3);
}

#[test]
fn s14_volume_dir_recreated_is_rewatched() {
    let (env, first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    wait_for_generation(&sc, 1);
    // The sidecar may open a new inotify instance when it re-watches: keep s12's tiny
    // queue limit out of this window.
    let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
    let dir = env.dir();
    std::fs::remove_dir_all(&dir).expect("remove the volume dir");
    std::thread::sleep(QUIET);
    assert!(sc.healthy());
    assert_unchanged(&sc, &env.exec, 1, &first.serial_hex, 0);

    let mut vol = KubeletVolume::new(&dir);
    let [second, third] = [env.pki.server(), env.pki.server()];
    for (i, leaf) in [&second, &third].into_iter().enumerate() {
        // The second swap proves the new watch is live (polling is off).
        vol.write(&tls_files(leaf, &env.pki.root.cert_pem));
        wait_for_serial(&sc, &leaf.serial_hex);
        wait_for_exec(&sc, &env.exec, i + 1);
    }
    assert_eq!(env.exec.shas(), [second.sha256_hex, third.sha256_hex]);
}

#[test]
fn s15_missing_files_at_startup_not_ready_then_loaded() {
    let mut env = Env::new();
    let sc = env.start("0", &[]);
    std::thread::sleep(QUIET);
    assert!(sc.healthy());
    assert!(!sc.ready(), "ready without credentials");
    let set = sc.set();
    assert_eq!(set["generation"], 0, "{set}");
    assert!(set["serial"].is_null() && set["sha256"].is_null(), "{set}");
    let leaf = env.pki.server();
    env.publish(&leaf);
    wait_for_serial(&sc, &leaf.serial_hex);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "not ready after files appeared"
    );
    assert_eq!(sc.generation(), 1);
}

#[test]
fn s15_missing_dir_at_startup_loads_when_created() {
    let env = Env::new();
    let dir = env.dir();
    std::fs::remove_dir(&dir).expect("remove empty volume dir");
    let sc = env.start("0", &[]);
    std::thread::sleep(QUIET);
    assert!(sc.healthy());
    assert!(!sc.ready(), "ready without credentials");
    let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
    let leaf = env.pki.server();
    KubeletVolume::new(&dir).write(&tls_files(&leaf, &env.pki.root.cert_pem));
    wait_for_serial(&sc, &leaf.serial_hex);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "not ready after the dir appeared"
    );
}

#[test]
fn s20_data_without_user_symlink_waits_and_recovers() {
    let (mut env, first) = Env::with_first(TestPki::server);
    // Kubelet restarted between step 8 and step 10: ..data is complete, tls.crt is ENOENT.
    std::fs::remove_file(env.dir().join("tls.crt")).expect("remove tls.crt symlink");
    let sc = env.start("0", &[]);
    std::thread::sleep(QUIET);
    assert!(sc.healthy());
    if sc.generation() == 0 {
        assert!(!sc.ready(), "ready without tls.crt");
    }
    env.vol.resync(); // the next sync re-creates the missing symlink
    wait_for_serial(&sc, &first.serial_hex);
    assert!(sc.wait_until(WAIT, || sc.ready()));
    assert_eq!(sc.generation(), 1);
}

#[test]
fn first_bundle_is_not_acted_on_unless_act_on_start() {
    let (quiet_env, _) = Env::with_first(TestPki::server);
    let (loud_env, first) = Env::with_first(TestPki::server);
    let quiet = quiet_env.start("0", &[]);
    let loud = loud_env.start("0", &["--act-on-start"]);
    wait_for_generation(&quiet, 1);
    wait_for_exec(&loud, &loud_env.exec, 1);
    assert_eq!(
        loud_env.exec.shas(),
        std::slice::from_ref(&first.sha256_hex)
    );
    assert_eq!(loud_env.exec.generations(), [1]);
    std::thread::sleep(QUIET);
    assert_eq!(
        quiet_env.exec.count(),
        0,
        "acted on the start-up bundle: {:?}",
        quiet_env.exec.lines()
    );
    assert_eq!(loud_env.exec.count(), 1, "{:?}", loud_env.exec.lines());
}

#[test]
fn sigterm_exits_zero() {
    let (env, _first) = Env::with_first(TestPki::server);
    let mut sc = env.start("0", &[]);
    wait_for_generation(&sc, 1);
    let status = sc.terminate();
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        sc.log()
    );
}
