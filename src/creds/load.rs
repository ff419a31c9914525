//! Reading credential files: bounded (never more than [`MAX_FILE_SIZE`] + 1 bytes, so `/dev/zero`
//! or a huge file cannot exhaust memory), hashed, and typed by failure. Input comes from the paths
//! of a `CredentialPaths` (through `snapshot`, which adds kubelet's `..data` consistency); output
//! is a [`RawBundle`] that `validate` turns into a `Bundle`.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::paths::FileRole;
use crate::reason::Reason;

/// Files larger than this are refused with `too_large` (1 MiB).
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// The bytes of one credential file as read, with the SHA-256 of its content.
#[derive(Clone)]
pub struct RawFile {
    pub role: FileRole,
    pub path: PathBuf,
    /// The kubelet generation directory (`..data`'s target) it was read through; `None` for a
    /// plain file, which a writer may be changing in place.
    pub generation: Option<PathBuf>,
    bytes: Vec<u8>,
    sha256: [u8; 32],
}

impl RawFile {
    /// Wraps bytes already read (used by the loader and by tests that build inputs in memory).
    pub fn new(role: FileRole, path: impl Into<PathBuf>, bytes: Vec<u8>) -> Self {
        let sha256 = Sha256::digest(&bytes).into();
        RawFile {
            role,
            path: path.into(),
            generation: None,
            bytes,
            sha256,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Never shows the content: a key file's bytes are the private key.
impl fmt::Debug for RawFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFile")
            .field("role", &self.role)
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("len", &self.bytes.len())
            .field("sha256", &hex::encode(self.sha256))
            .finish()
    }
}

/// Every file of one credential set, read.
#[derive(Clone, Debug)]
pub struct RawBundle {
    pub cert: RawFile,
    pub key: RawFile,
    pub ca: RawFile,
    pub peer_ca: Option<RawFile>,
}

impl RawBundle {
    /// Every file of the set, in a fixed order.
    pub fn files(&self) -> impl Iterator<Item = &RawFile> {
        [
            Some(&self.cert),
            Some(&self.key),
            Some(&self.ca),
            self.peer_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// The generation directory each file was read through, by user-visible path.
    pub fn generations(&self) -> Vec<(PathBuf, Option<PathBuf>)> {
        self.files()
            .map(|f| (f.path.clone(), f.generation.clone()))
            .collect()
    }

    /// One hash over every file, so "nothing changed" is a single comparison.
    pub fn content_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for f in self.files() {
            h.update(f.sha256);
        }
        h.finalize().into()
    }
}

/// Why a credential file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{role} {path} does not exist: check that the Secret/ConfigMap is mounted there and has this key", path = path.display())]
    Missing { role: FileRole, path: PathBuf },
    #[error("{role} {path} cannot be read: {detail}", path = path.display())]
    Unreadable {
        role: FileRole,
        path: PathBuf,
        detail: String,
    },
    /// The system is short of a resource (file descriptors, memory): the file itself is fine,
    /// so the read is worth retrying.
    #[error("{role} {path} cannot be read for now ({detail}); retrying", path = path.display())]
    Exhausted {
        role: FileRole,
        path: PathBuf,
        detail: String,
    },
    #[error("{role} {path} is larger than {MAX_FILE_SIZE} bytes: this is not a PEM credential file; check what the path points at", path = path.display())]
    TooLarge { role: FileRole, path: PathBuf },
    #[error("{path} kept changing while being read ({attempts} attempts, the volume's ..data moved each time); will retry on the next change", path = path.display())]
    Inconsistent { path: PathBuf, attempts: u32 },
}

impl LoadError {
    /// True if reading again later may succeed although nothing changes on disk.
    pub fn is_exhaustion(&self) -> bool {
        matches!(self, LoadError::Exhausted { .. })
    }

    pub fn reason(&self) -> Reason {
        match self {
            LoadError::Missing { .. } => Reason::MissingFile,
            LoadError::Unreadable { .. } | LoadError::Exhausted { .. } => Reason::Unreadable,
            LoadError::TooLarge { .. } => Reason::TooLarge,
            LoadError::Inconsistent { .. } => Reason::InconsistentSnapshot,
        }
    }

    /// The same error, naming the user-visible path instead of the one actually opened.
    pub(crate) fn with_path(mut self, user_path: &Path) -> Self {
        match &mut self {
            LoadError::Missing { path, .. }
            | LoadError::Unreadable { path, .. }
            | LoadError::Exhausted { path, .. }
            | LoadError::TooLarge { path, .. }
            | LoadError::Inconsistent { path, .. } => *path = user_path.to_path_buf(),
        }
        self
    }

    pub fn path(&self) -> &Path {
        match self {
            LoadError::Missing { path, .. }
            | LoadError::Unreadable { path, .. }
            | LoadError::Exhausted { path, .. }
            | LoadError::TooLarge { path, .. }
            | LoadError::Inconsistent { path, .. } => path,
        }
    }
}

/// Reads one file, refusing anything but regular files and character devices (read without
/// blocking, so a tty or a FIFO swapped in cannot stall a reload) and anything over the limit.
pub fn read_file(role: FileRole, path: &Path) -> Result<RawFile, LoadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |e: io::Error| classify_io(role, path, e);
    let unreadable = |detail: &str| LoadError::Unreadable {
        role,
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    // Judge what was opened, not what the path named a moment earlier.
    let ft = file.metadata().map_err(io_err)?.file_type();
    if ft.is_dir() {
        return Err(unreadable("it is a directory, not a file; name the file inside it (a directory holds the files of a Secret, not one of them)"));
    }
    if !ft.is_file() && !is_char_device(&ft) {
        return Err(unreadable("it is not a regular file (FIFO or socket)"));
    }
    let mut bytes = Vec::new();
    match file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(unreadable(
                "it is a device with nothing to read (not a credential file)",
            ));
        }
        Err(e) => return Err(io_err(e)),
    }
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(LoadError::TooLarge {
            role,
            path: path.to_path_buf(),
        });
    }
    Ok(RawFile::new(role, path, bytes))
}

fn is_char_device(ft: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_char_device()
}

fn classify_io(role: FileRole, path: &Path, e: io::Error) -> LoadError {
    let path = path.to_path_buf();
    // ENOTDIR: a path component (e.g. a dangling `..data`) is not a directory: as good as missing.
    match e.raw_os_error() {
        Some(libc_enoent)
            if libc_enoent == nix::libc::ENOENT || libc_enoent == nix::libc::ENOTDIR =>
        {
            return LoadError::Missing { role, path };
        }
        Some(code) if code == nix::libc::ELOOP => {
            return LoadError::Unreadable {
                role,
                path,
                detail:
                    "symlink loop (too many levels of symbolic links); fix the links in the volume"
                        .into(),
            };
        }
        Some(code)
            if [
                nix::libc::EMFILE,
                nix::libc::ENFILE,
                nix::libc::ENOMEM,
                nix::libc::ENOBUFS,
                nix::libc::EAGAIN,
                nix::libc::EINTR,
            ]
            .contains(&code) =>
        {
            return LoadError::Exhausted {
                role,
                path,
                detail: e.to_string(),
            };
        }
        Some(code) if code == nix::libc::EACCES => {
            return LoadError::Unreadable {
                role,
                path,
                detail: format!(
                    "permission denied for UID {}; make it readable (Secret volume defaultMode, or the pod's fsGroup)",
                    nix::unistd::getuid()
                ),
            };
        }
        _ => {}
    }
    LoadError::Unreadable {
        role,
        path,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_file(FileRole::Cert, &dir.path().join("tls.crt")).unwrap_err();
        assert_eq!(err.reason(), Reason::MissingFile);
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }

    #[test]
    fn dangling_parent_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("..data")).unwrap();
        let err = read_file(FileRole::Key, &dir.path().join("..data/tls.key")).unwrap_err();
        assert_eq!(err.reason(), Reason::MissingFile);
    }

    #[test]
    fn symlink_loop_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..data", dir.path().join("..data")).unwrap();
        let err = read_file(FileRole::Cert, &dir.path().join("..data/tls.crt")).unwrap_err();
        assert_eq!(err.reason(), Reason::Unreadable);
        assert!(err.to_string().contains("symlink loop"), "{err}");
    }

    #[test]
    fn dev_zero_is_too_large_without_reading_it_all() {
        let err = read_file(FileRole::Cert, Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.reason(), Reason::TooLarge);
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.crt");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_file(FileRole::Cert, &p).unwrap_err();
        assert_eq!(err.reason(), Reason::Unreadable);
    }

    #[test]
    fn directory_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_file(FileRole::Ca, dir.path()).unwrap_err();
        assert_eq!(err.reason(), Reason::Unreadable);
    }

    #[test]
    fn file_at_limit_is_read_and_one_more_byte_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'a'; MAX_FILE_SIZE as usize]).unwrap();
        assert!(read_file(FileRole::Cert, &p).is_ok());
        std::fs::write(&p, vec![b'a'; MAX_FILE_SIZE as usize + 1]).unwrap();
        assert_eq!(
            read_file(FileRole::Cert, &p).unwrap_err().reason(),
            Reason::TooLarge
        );
    }

    #[test]
    fn debug_never_shows_content() {
        let f = RawFile::new(FileRole::Key, "/k", b"SECRET-KEY-BYTES".to_vec());
        assert!(!format!("{f:?}").contains("SECRET"));
    }
}
