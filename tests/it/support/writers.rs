//! Writers that are *not* kubelet: what other tools (or crashes, or mistakes) do to a
//! credentials directory. Plain files rewritten in place, a key written before its cert,
//! `..data` looping onto itself or aimed at `/dev/zero`, a 2 MiB file, a stale `..data_tmp`.
//! Each one is a scenario of `docs/kubelet-volumes.md` that a watcher must survive.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::kubelet::{ts_name, Rng, DATA, DATA_TMP};

/// Rewrite `path` in place: `open(O_WRONLY|O_TRUNC)` then write (no temp file, no
/// rename), so a watcher gets only MODIFY / CLOSE_WRITE. Creates the file if missing.
pub fn write_in_place(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A careless writer: truncate `path` to 0 bytes, then half of `bytes`, then all of it,
/// pausing `pause` in each intermediate state so a watcher sees (and must reject) each.
pub fn truncate_then_write(path: &Path, bytes: &[u8], pause: Duration) {
    write_in_place(path, b"");
    std::thread::sleep(pause);
    write_in_place(path, &bytes[..bytes.len() / 2]);
    std::thread::sleep(pause);
    write_in_place(path, bytes);
}

/// A non-atomic writer of plain files: `key` first, `cert` `delay` later, so for `delay`
/// the directory holds a new key with the old cert.
pub fn key_then_cert(key_path: &Path, key: &[u8], cert_path: &Path, cert: &[u8], delay: Duration) {
    write_in_place(key_path, key);
    std::thread::sleep(delay);
    write_in_place(cert_path, cert);
}

/// Atomically replace (or create) the symlink `link` so it points at `target`:
/// `symlink(target, link.tmp)` then `rename` (one MOVED_TO event on `link`'s name).
pub fn replace_symlink(link: &Path, target: &Path) {
    let name = link.file_name().expect("link has a name").to_string_lossy();
    let tmp = link.with_file_name(format!(".{name}.writer-tmp"));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
    fs::rename(&tmp, link).unwrap_or_else(|e| panic!("rename onto {}: {e}", link.display()));
}

/// `..data -> ..data`: every path through it fails with ELOOP.
pub fn data_symlink_loop(dir: &Path) {
    replace_symlink(&dir.join(DATA), Path::new(DATA));
}

/// Point `..data` at any path (e.g. `/dev/zero`, which is not even a directory).
pub fn point_data_at(dir: &Path, target: &Path) {
    replace_symlink(&dir.join(DATA), target);
}

/// Point the user-visible `key` symlink (e.g. `tls.crt`) at `target` (e.g. `/dev/zero`).
pub fn point_key_at(dir: &Path, key: &str, target: &Path) {
    replace_symlink(&dir.join(key), target);
}

/// `pem` followed by comment lines (text outside PEM blocks is allowed) up to `size` bytes:
/// a file that is valid PEM but larger than the 1 MiB limit.
pub fn oversized_pem(pem: &str, size: usize) -> Vec<u8> {
    let mut out = pem.as_bytes().to_vec();
    let line = b"# padding padding padding padding padding padding padding padding\n";
    while out.len() < size {
        out.extend_from_slice(line);
    }
    out
}

/// What a kubelet crash between steps 7 and 8 leaves behind: a complete timestamped
/// directory holding `files` and a `..data_tmp` symlink to it, never renamed onto `..data`.
/// Returns the stale directory's path.
pub fn stale_data_tmp<K: AsRef<str>, V: AsRef<[u8]>>(dir: &Path, files: &[(K, V)]) -> PathBuf {
    let ts = ts_name(
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
        Rng::seeded().next_u64() as u32,
    );
    let ts_dir = dir.join(&ts);
    fs::create_dir(&ts_dir).expect("mkdir stale ts dir");
    for (key, bytes) in files {
        fs::write(ts_dir.join(key.as_ref()), bytes.as_ref()).expect("write stale key");
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&ts, &tmp).expect("symlink stale ..data_tmp");
    ts_dir
}
