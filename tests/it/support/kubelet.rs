//! `KubeletVolume`: replays kubelet's atomic writer (`docs/kubelet-volumes.md`, steps 1-12 of
//! `pkg/volume/util/atomic_writer.go`) on a plain directory, one syscall-level step at a time,
//! so tests see exactly the inotify events a Secret volume produces in a pod.
//!
//! `write` is one full update. `write_until_rename` stops just before the commit point
//! (step 8) and returns a `PendingSwap` whose steps the test drives by hand, to hold the
//! volume in the states a racing reader can observe (fsGroup ATTRIBs done but no swap yet;
//! `..data` swapped but the new top-level symlink not yet created; old timestamped directory
//! not yet removed).
//! Writers that are *not* kubelet (plain files, loops, huge files) live in `writers.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The symlink kubelet swaps: user-visible files point through it.
pub const DATA: &str = "..data";
/// The symlink created next to `..data` and renamed onto it (step 7-8).
pub const DATA_TMP: &str = "..data_tmp";

/// What `write` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new generation was committed in timestamped directory `ts`.
    Swapped { ts: String },
    /// Content was unchanged: only missing top-level symlinks were re-created (step 3).
    Resynced,
}

/// A Secret/ConfigMap volume as kubelet maintains it. See the module docs.
#[derive(Debug)]
pub struct KubeletVolume {
    dir: PathBuf,
    /// `Some(gid)`: run the fsGroup ownership walk (step 6) before every swap.
    fs_group: Option<u32>,
    rng: Rng,
}

impl KubeletVolume {
    /// A volume rooted at `dir` (created if missing, like the kubelet's mount point).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        KubeletVolume {
            dir,
            fs_group: None,
            rng: Rng::seeded(),
        }
    }

    /// Run the pod `securityContext.fsGroup` walk (lchown + chmod, children first, over the
    /// whole volume) before each swap, as kubelet does: ATTRIB events precede the rename.
    pub fn with_fs_group(mut self, gid: u32) -> Self {
        self.fs_group = Some(gid);
        self
    }

    /// Turn the fsGroup walk on (`Some(gid)`) or off for later updates.
    pub fn set_fs_group(&mut self, gid: Option<u32>) {
        self.fs_group = gid;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The timestamped directory `..data` points at now (step 1), if any.
    pub fn current_ts(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA)).ok()?;
        Some(target.to_string_lossy().into_owned())
    }

    /// One full kubelet update with exactly `files` as the payload (keys not listed are
    /// removed). Returns `Resynced` when content is unchanged (the 60-90 s no-op resync).
    pub fn write<K: AsRef<str>, V: AsRef<[u8]>>(&mut self, files: &[(K, V)]) -> WriteOutcome {
        match self.write_until_rename(files) {
            None => WriteOutcome::Resynced,
            Some(mut swap) => {
                swap.finish();
                WriteOutcome::Swapped { ts: swap.ts }
            }
        }
    }

    /// The periodic no-op sync: same payload as now, so only steps 1-3 run (walk and compare
    /// the current directory, re-create missing top-level symlinks).
    pub fn resync(&mut self) {
        let files = self.current_files();
        assert_eq!(self.write(&files), WriteOutcome::Resynced);
    }

    /// An `optional: true` Secret was deleted: payload empty, so every user-visible symlink
    /// goes away and `..data` points at an empty timestamped directory.
    pub fn delete_all_keys(&mut self) {
        let none: &[(&str, &[u8])] = &[];
        self.write(none);
    }

    /// Keys and bytes of the current generation (empty if there is none).
    pub fn current_files(&self) -> Vec<(String, Vec<u8>)> {
        let Some(ts) = self.current_ts() else {
            return vec![];
        };
        read_keys(&self.dir.join(ts))
            .into_iter()
            .map(|key| {
                let bytes = fs::read(self.dir.join(DATA).join(&key)).expect("read current key");
                (key, bytes)
            })
            .collect()
    }

    /// Steps 1-7: everything before the commit point. `None` if content was unchanged
    /// (the no-op path already ran). Drive the rest with the returned `PendingSwap`.
    pub fn write_until_rename<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        files: &[(K, V)],
    ) -> Option<PendingSwap> {
        for (key, _) in files {
            let key = key.as_ref();
            assert!(!key.is_empty() && !key.contains('/') && !key.starts_with(".."));
        }
        // (1) readlink ..data; a name that is not a timestamped dir (a loop, /dev/zero) is
        // treated like the initial write, and never removed later.
        let old_ts = self.current_ts().filter(|ts| is_ts_name(ts));
        // (2) paths to remove = old keys - new keys.
        let old_keys = old_ts
            .as_ref()
            .map(|ts| read_keys(&self.dir.join(ts)))
            .unwrap_or_default();
        let new_keys: BTreeSet<String> = files.iter().map(|(k, _)| k.as_ref().into()).collect();
        let removed: Vec<String> = old_keys.difference(&new_keys).cloned().collect();
        // (3) compare bytes; unchanged and nothing to remove: re-create missing symlinks only.
        if let Some(ts) = &old_ts {
            let same = removed.is_empty()
                && old_keys == new_keys
                && files.iter().all(|(k, v)| {
                    fs::read(self.dir.join(ts).join(k.as_ref())).ok().as_deref() == Some(v.as_ref())
                });
            if same {
                self.link_missing(&new_keys);
                return None;
            }
        }
        // (4) mkdir(ts, 0700), chmod(ts, 0755).
        let ts = self.make_ts_dir();
        let ts_path = self.dir.join(&ts);
        // (5) each key in random order: open O_TRUNC, write, close, chmod 0644.
        let mut order: Vec<usize> = (0..files.len()).collect();
        self.rng.shuffle(&mut order);
        for i in order {
            let (key, bytes) = &files[i];
            let path = ts_path.join(key.as_ref());
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            f.write_all(bytes.as_ref()).expect("write key");
            drop(f);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod key");
        }
        // (6) fsGroup: ownership walk over the whole volume, children first.
        if let Some(gid) = self.fs_group {
            fs_group_walk(&self.dir, gid);
        }
        // (7) symlink(ts, ..data_tmp). Kubelet would fail on a stale ..data_tmp and retry
        // on its next sync after cleaning up; we clean it up at once.
        let tmp = self.dir.join(DATA_TMP);
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_file(&tmp).expect("remove stale ..data_tmp");
        }
        symlink(&ts, &tmp).expect("symlink ..data_tmp");
        Some(PendingSwap {
            dir: self.dir.clone(),
            ts,
            old_ts,
            new_keys,
            removed,
            committed: false,
            linked: false,
        })
    }

    /// Step 10 for the no-op path: symlink every key whose top-level link is missing.
    fn link_missing(&self, keys: &BTreeSet<String>) {
        for key in keys {
            let link = self.dir.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA).join(key), &link).expect("symlink key");
            }
        }
    }

    fn make_ts_dir(&mut self) -> String {
        loop {
            let ts = ts_name(OffsetDateTime::now_utc(), self.rng.next_u64() as u32);
            let path = self.dir.join(&ts);
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .expect("chmod ts dir");
                    return ts;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("mkdir {}: {e}", path.display()),
            }
        }
    }
}

/// An update stopped before its commit point (steps 1-7 done). Call the steps in order,
/// or `finish()` for whatever is left. Dropping it leaves the volume as it is.
#[derive(Debug)]
pub struct PendingSwap {
    dir: PathBuf,
    ts: String,
    old_ts: Option<String>,
    new_keys: BTreeSet<String>,
    removed: Vec<String>,
    committed: bool,
    linked: bool,
}

impl PendingSwap {
    /// The new timestamped directory's name.
    pub fn ts(&self) -> &str {
        &self.ts
    }

    /// Step 8: `rename(..data_tmp, ..data)`, the atomic commit point.
    pub fn commit(&mut self) {
        if !self.committed {
            fs::rename(self.dir.join(DATA_TMP), self.dir.join(DATA)).expect("rename ..data");
            self.committed = true;
        }
    }

    /// Step 10: a top-level symlink for each new key (until now a new key is ENOENT).
    pub fn link_new_keys(&mut self) {
        self.commit();
        if !self.linked {
            for key in &self.new_keys {
                let link = self.dir.join(key);
                if fs::symlink_metadata(&link).is_err() {
                    symlink(Path::new(DATA).join(key), &link).expect("symlink key");
                }
            }
            self.linked = true;
        }
    }

    /// Steps 11-12 (and any earlier ones not done yet): unlink removed keys, then
    /// `RemoveAll` the old timestamped directory.
    pub fn finish(&mut self) {
        self.link_new_keys();
        for key in self.removed.drain(..) {
            let _ = fs::remove_file(self.dir.join(key));
        }
        if let Some(old) = self.old_ts.take() {
            if old != self.ts {
                fs::remove_dir_all(self.dir.join(&old)).expect("remove old ts dir");
            }
        }
    }
}

/// Keys (regular files) of a timestamped directory; empty if it cannot be read.
fn read_keys(ts_dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(ts_dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Kubelet's fsGroup ownership walk: lchown to `gid` and add group read (and setgid +
/// search on dirs) to every entry, children before their directory, the root last.
fn fs_group_walk(path: &Path, gid: u32) {
    let meta = fs::symlink_metadata(path).expect("lstat during fsGroup walk");
    if meta.is_dir() {
        for entry in fs::read_dir(path).expect("readdir during fsGroup walk") {
            fs_group_walk(&entry.expect("dir entry").path(), gid);
        }
    }
    std::os::unix::fs::lchown(path, None, Some(gid)).expect("lchown");
    if meta.file_type().is_symlink() {
        return;
    }
    let mut mode = meta.permissions().mode() & 0o7777 | 0o440;
    if meta.is_dir() {
        mode |= 0o2110;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod during walk");
}

/// `..YYYY_MM_DD_HH_MM_SS.N` in UTC, N a random uint32 (1-10 digits).
pub fn ts_name(now: OffsetDateTime, n: u32) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{n}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Matches `^\.\.\d{4}(_\d\d){5}\.\d{1,10}$`.
pub fn is_ts_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("..") else {
        return false;
    };
    let Some((stamp, n)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = stamp.split('_').collect();
    parts.len() == 6
        && parts[0].len() == 4
        && parts.iter().all(|p| digits(p))
        && parts[1..].iter().all(|p| p.len() == 2)
        && digits(n)
        && n.len() <= 10
}

/// xorshift64*: enough randomness for key order and directory suffixes, seeded from the
/// clock, the pid and a counter (no `rand` dev-dependency needed).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let seed =
            nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
