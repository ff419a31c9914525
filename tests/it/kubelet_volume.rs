//! Self-tests of the watcher test support (no sidecar needed): `KubeletVolume` lays out and
//! updates a volume exactly as KUBELET.md describes, including the `notify` events it
//! produces, and the Prometheus parser used by `Sidecar::metric`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::support::kubelet::{is_ts_name, ts_name, KubeletVolume, WriteOutcome, DATA, DATA_TMP};
use crate::support::prom::{parse_metrics, parse_series};
use crate::support::sidecar::INOTIFY_GATE;

fn payload(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn ts_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| is_ts_name(n))
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn first_write_lays_out_a_kubelet_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = KubeletVolume::new(tmp.path().join("v"));
    let out = vol.write(&payload(&[("tls.crt", "C1"), ("tls.key", "K1")]));
    let WriteOutcome::Swapped { ts } = out else {
        panic!("first write must swap");
    };
    assert!(is_ts_name(&ts), "{ts}");
    let dir = vol.dir();
    assert_eq!(fs::read_link(dir.join(DATA)).unwrap(), Path::new(&ts));
    assert_eq!(
        fs::read_link(dir.join("tls.crt")).unwrap(),
        Path::new("..data/tls.crt")
    );
    assert_eq!(fs::read_to_string(dir.join("tls.key")).unwrap(), "K1");
    assert_eq!(mode(&dir.join(&ts)), 0o755);
    assert_eq!(mode(&dir.join(&ts).join("tls.crt")), 0o644);
    assert!(fs::symlink_metadata(dir.join(DATA_TMP)).is_err());
}

#[test]
fn update_swaps_unlinks_removed_keys_and_removes_the_old_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = KubeletVolume::new(tmp.path());
    vol.write(&payload(&[("tls.crt", "C1"), ("old.txt", "x")]));
    let first = vol.current_ts().unwrap();
    vol.write(&payload(&[("tls.crt", "C2")]));
    let second = vol.current_ts().unwrap();
    assert_ne!(first, second);
    assert_eq!(ts_dirs(tmp.path()), [second]);
    assert!(fs::symlink_metadata(tmp.path().join("old.txt")).is_err());
    assert_eq!(
        fs::read_to_string(tmp.path().join("tls.crt")).unwrap(),
        "C2"
    );
}

#[test]
fn unchanged_payload_is_a_noop_resync_that_relinks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = KubeletVolume::new(tmp.path());
    let files = payload(&[("tls.crt", "C1"), ("tls.key", "K1")]);
    vol.write(&files);
    let ts = vol.current_ts();
    fs::remove_file(tmp.path().join("tls.crt")).unwrap();
    assert_eq!(vol.write(&files), WriteOutcome::Resynced);
    assert_eq!(vol.current_ts(), ts);
    assert_eq!(
        fs::read_to_string(tmp.path().join("tls.crt")).unwrap(),
        "C1"
    );
    vol.resync();
    assert_eq!(vol.current_ts(), ts);
}

#[test]
fn delete_all_keys_leaves_data_pointing_at_an_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = KubeletVolume::new(tmp.path());
    vol.write(&payload(&[("tls.crt", "C1"), ("tls.key", "K1")]));
    vol.delete_all_keys();
    let ts = vol.current_ts().unwrap();
    assert_eq!(fs::read_dir(tmp.path().join(&ts)).unwrap().count(), 0);
    assert!(fs::symlink_metadata(tmp.path().join("tls.crt")).is_err());
    assert!(fs::symlink_metadata(tmp.path().join("tls.key")).is_err());
    assert_eq!(ts_dirs(tmp.path()), [ts]);
}

#[test]
fn pending_swap_exposes_each_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut vol = KubeletVolume::new(dir);
    vol.write(&payload(&[("tls.crt", "C1")]));
    let old = vol.current_ts().unwrap();
    let mut swap = vol
        .write_until_rename(&payload(&[("tls.crt", "C2"), ("ca.crt", "A2")]))
        .expect("changed");
    assert_eq!(
        fs::read_link(dir.join(DATA_TMP)).unwrap(),
        Path::new(swap.ts())
    );
    assert_eq!(fs::read_to_string(dir.join("tls.crt")).unwrap(), "C1");
    swap.commit();
    assert_eq!(fs::read_to_string(dir.join("tls.crt")).unwrap(), "C2");
    assert!(fs::symlink_metadata(dir.join(DATA_TMP)).is_err());
    assert!(
        fs::symlink_metadata(dir.join("ca.crt")).is_err(),
        "new key before step 10"
    );
    swap.link_new_keys();
    assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), "A2");
    assert!(dir.join(&old).exists(), "old dir removed before step 12");
    swap.finish();
    assert!(!dir.join(&old).exists());
}

#[test]
fn timestamp_names_match_kubelets_pattern() {
    let t = time::macros::datetime!(2026-11-28 02:53:57 UTC);
    assert_eq!(ts_name(t, 30420254), "..2026_11_28_02_53_57.30420254");
    assert!(is_ts_name("..2026_11_28_02_53_57.1"));
    assert!(is_ts_name(&ts_name(t, u32::MAX)));
    for bad in [
        "..data",
        "..data_tmp",
        "..2026_11_28_02_53.1",
        "..2026_11_28_02_53_57.",
        "x",
    ] {
        assert!(!is_ts_name(bad), "{bad}");
    }
}

/// Short names of the events in `dir` (the dir itself is ".").
fn describe(ev: &notify::Event, dir: &Path) -> Vec<(EventKind, String)> {
    ev.paths
        .iter()
        .map(|p| {
            let name = match p.strip_prefix(dir) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
                Ok(rel) => rel.to_string_lossy().into_owned(),
                Err(_) => p.display().to_string(),
            };
            (ev.kind, name)
        })
        .collect()
}

#[test]
fn an_update_produces_the_notify_events_of_kubelet_md() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let mut vol = KubeletVolume::new(&dir);
    vol.write(&payload(&[("tls.crt", "C1"), ("tls.key", "K1")]));
    let old = vol.current_ts().unwrap();
    vol.set_fs_group(Some(nix::unistd::getegid().as_raw()));
    let (tx, rx) = mpsc::channel();
    let mut watcher = {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        notify::recommended_watcher(tx).unwrap()
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive).unwrap();
    let WriteOutcome::Swapped { ts } = vol.write(&payload(&[("tls.crt", "C2"), ("tls.key", "K2")]))
    else {
        panic!("must swap");
    };
    std::thread::sleep(Duration::from_millis(300));
    let events: Vec<(EventKind, String)> = rx
        .try_iter()
        .map(Result::unwrap)
        .filter(|e| !matches!(e.kind, EventKind::Access(_)))
        .flat_map(|e| describe(&e, &dir))
        .collect();
    let position = |kind: EventKind, name: &str| {
        events
            .iter()
            .position(|(k, n)| *k == kind && n == name)
            .unwrap_or_else(|| panic!("no {kind:?} for {name} in {events:#?}"))
    };
    let metadata = EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any));
    let rename = |mode| EventKind::Modify(ModifyKind::Name(mode));
    let steps = [
        position(EventKind::Create(CreateKind::Folder), &ts),
        position(metadata, &ts),
        position(metadata, "tls.crt"), // step 6: the fsGroup walk reaches the symlinks
        position(metadata, DATA),
        position(metadata, "."),
        position(EventKind::Create(CreateKind::File), DATA_TMP),
        position(rename(RenameMode::From), DATA_TMP),
        position(rename(RenameMode::To), DATA),
        position(EventKind::Remove(RemoveKind::Folder), &old),
    ];
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "{steps:?} in {events:#?}"
    );
    let creates_data = events
        .iter()
        .any(|(k, n)| matches!(k, EventKind::Create(_)) && n == DATA);
    assert!(!creates_data, "kubelet never creates ..data: {events:#?}");
}

#[test]
fn prometheus_lookup_ignores_label_order_and_unescapes() {
    let text = "# HELP x y\n# TYPE a counter\n\
        a_total{set=\"default\",result=\"success\"} 3\n\
        info{subject=\"CN=a,O=b \\\"q\\\"\",serial=\"01\"} 1\n\
        up 1\n# EOF\n";
    let samples = parse_metrics(text);
    assert_eq!(samples.len(), 3);
    let (name, labels) = parse_series(r#"a_total{result="success",set="default"}"#).unwrap();
    let found = samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .expect("label order must not matter");
    assert_eq!(found.value, 3.0);
    let info: BTreeMap<_, _> = samples[1].labels.iter().cloned().collect();
    assert_eq!(info["subject"], "CN=a,O=b \"q\"");
    assert_eq!(samples[2].name, "up");
}
