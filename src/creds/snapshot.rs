//! One consistent read of a credential set, the way kubelet's atomic writer must be read:
//! resolve each volume's `..data` once, read every file through the resolved generation
//! directory, then check that no `..data` moved. A move or a vanished file (kubelet removes the
//! old generation right after the swap) means a retry from the top; a set that never holds still
//! is `inconsistent_snapshot`. Plain files (no `..data`) are read directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::{read_file, LoadError, RawBundle, RawFile};
use super::paths::{CredentialPaths, FileRole};

/// Reads attempted before giving up with `inconsistent_snapshot`.
const ATTEMPTS: u32 = 5;

/// Reads the whole set as one generation per volume.
pub fn read_snapshot(paths: &CredentialPaths) -> Result<RawBundle, LoadError> {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // Kubelet finishes a swap in microseconds to milliseconds; back off a little more each time.
            std::thread::sleep(Duration::from_millis(5 << attempt));
        }
        let volumes = resolve_volumes(paths);
        let read = |role: FileRole, path: &Path| -> Result<RawFile, LoadError> {
            let via = via_data(path, &volumes);
            let through = via.clone().unwrap_or_else(|| path.to_path_buf());
            let f = read_file(role, &through).map_err(|e| e.with_path(path))?;
            let mut f = RawFile::new(role, path, f.into_bytes());
            f.generation = via.and_then(|p| p.parent().map(Path::to_path_buf));
            Ok(f)
        };
        let result = (|| {
            Ok(RawBundle {
                cert: read(FileRole::Cert, &paths.cert)?,
                key: read(FileRole::Key, &paths.key)?,
                ca: read(FileRole::Ca, &paths.ca)?,
                peer_ca: paths
                    .peer_ca
                    .as_deref()
                    .map(|p| read(FileRole::PeerCa, p))
                    .transpose()?,
            })
        })();
        let moved = resolve_volumes(paths) != volumes;
        // Without a move, the outcome stands (a missing file really is missing). With one, a
        // file may have vanished with its generation, or the read mixed generations: again.
        if !moved {
            return result;
        }
    }
    Err(LoadError::Inconsistent {
        path: paths.cert.clone(),
        attempts: ATTEMPTS,
    })
}

/// `..data` target per directory holding a credential file (None: no `..data` there).
fn resolve_volumes(paths: &CredentialPaths) -> BTreeMap<PathBuf, Option<PathBuf>> {
    paths
        .files()
        .filter_map(|(_, p)| p.parent())
        .map(|dir| {
            (
                dir.to_path_buf(),
                std::fs::read_link(dir.join("..data")).ok(),
            )
        })
        .collect()
}

/// The path inside the resolved generation for a user-visible `DIR/name`, when `DIR` is a
/// kubelet volume and `DIR/name` is (or should be) the `..data/name` symlink.
fn via_data(path: &Path, volumes: &BTreeMap<PathBuf, Option<PathBuf>>) -> Option<PathBuf> {
    let dir = path.parent()?;
    let name = path.file_name()?;
    let target = volumes.get(dir)?.as_ref()?;
    let expected = Path::new("..data").join(name);
    match std::fs::read_link(path) {
        Ok(link) if link == expected => Some(dir.join(target).join(name)),
        Ok(_) => None,
        // Kubelet creates a new key's symlink only after the swap (step 10): read through
        // `..data` meanwhile. A regular file at the path is read as is.
        Err(_) if std::fs::symlink_metadata(path).is_err() => Some(dir.join(target).join(name)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn volume(dir: &Path, ts: &str, files: &[(&str, &str)]) {
        std::fs::create_dir(dir.join(ts)).unwrap();
        for (name, body) in files {
            std::fs::write(dir.join(ts).join(name), body).unwrap();
        }
        let _ = std::fs::remove_file(dir.join("..data_tmp"));
        symlink(ts, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        for (name, _) in files {
            let _ = symlink(Path::new("..data").join(name), dir.join(name));
        }
    }

    fn paths(dir: &Path) -> CredentialPaths {
        CredentialPaths::resolve(Some(dir), None, None, None, None).unwrap()
    }

    #[test]
    fn reads_through_data_and_reports_user_paths() {
        let d = tempfile::tempdir().unwrap();
        volume(
            d.path(),
            "..2026_01_01_00_00_00.1",
            &[("tls.crt", "c1"), ("tls.key", "k1"), ("ca.crt", "a1")],
        );
        let b = read_snapshot(&paths(d.path())).unwrap();
        assert_eq!(b.cert.bytes(), b"c1");
        assert_eq!(b.cert.path, d.path().join("tls.crt"));
    }

    #[test]
    fn missing_user_symlink_is_read_through_data() {
        let d = tempfile::tempdir().unwrap();
        volume(
            d.path(),
            "..2026_01_01_00_00_00.1",
            &[("tls.crt", "c1"), ("tls.key", "k1"), ("ca.crt", "a1")],
        );
        std::fs::remove_file(d.path().join("tls.key")).unwrap();
        assert_eq!(read_snapshot(&paths(d.path())).unwrap().key.bytes(), b"k1");
    }

    #[test]
    fn emptied_volume_is_missing() {
        let d = tempfile::tempdir().unwrap();
        volume(d.path(), "..2026_01_01_00_00_00.1", &[]);
        let err = read_snapshot(&paths(d.path())).unwrap_err();
        assert_eq!(err.reason(), crate::reason::Reason::MissingFile);
        assert_eq!(err.path(), d.path().join("tls.crt"));
    }

    #[test]
    fn symlink_loop_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        symlink("..data", d.path().join("..data")).unwrap();
        symlink("..data/tls.crt", d.path().join("tls.crt")).unwrap();
        let err = read_snapshot(&paths(d.path())).unwrap_err();
        assert_eq!(err.reason(), crate::reason::Reason::Unreadable);
    }

    #[test]
    fn plain_files_are_read_directly() {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in [("tls.crt", "c"), ("tls.key", "k"), ("ca.crt", "a")] {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        assert_eq!(read_snapshot(&paths(d.path())).unwrap().ca.bytes(), b"a");
    }
}
