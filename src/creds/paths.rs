//! Which files make up one credential set: a directory with the kubernetes.io/tls names
//! (`tls.crt`, `tls.key`, `ca.crt`), overridden file by file, plus an optional peer CA bundle.

use std::fmt;
use std::path::{Path, PathBuf};

/// The role a file plays in a credential set; used in messages and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileRole {
    Cert,
    Key,
    Ca,
    PeerCa,
}

impl FileRole {
    /// The file name inside a kubernetes.io/tls Secret volume.
    pub const fn secret_key(self) -> &'static str {
        match self {
            FileRole::Cert => "tls.crt",
            FileRole::Key => "tls.key",
            FileRole::Ca | FileRole::PeerCa => "ca.crt",
        }
    }
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::Cert => "certificate",
            FileRole::Key => "private key",
            FileRole::Ca => "CA bundle",
            FileRole::PeerCa => "peer CA bundle",
        })
    }
}

/// The resolved paths of one credential set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Bundle that peers are verified against; `None` means `ca` serves both purposes.
    pub peer_ca: Option<PathBuf>,
}

/// No file is named for `role` (no directory, no file of its own).
#[derive(Debug, thiserror::Error)]
#[error("no {role} file is named, and no directory to find one in")]
pub struct MissingPathError {
    pub role: FileRole,
}

impl CredentialPaths {
    /// Resolves the directory and the per-file overrides; a file of its own wins over the directory.
    pub fn resolve(
        cert_dir: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        peer_ca: Option<&Path>,
    ) -> Result<Self, MissingPathError> {
        let pick = |given: Option<&Path>, role: FileRole| -> Result<PathBuf, MissingPathError> {
            match (given, cert_dir) {
                (Some(p), _) => Ok(p.to_path_buf()),
                (None, Some(dir)) => Ok(dir.join(role.secret_key())),
                (None, None) => Err(MissingPathError { role }),
            }
        };
        Ok(CredentialPaths {
            cert: pick(cert, FileRole::Cert)?,
            key: pick(key, FileRole::Key)?,
            ca: pick(ca, FileRole::Ca)?,
            peer_ca: peer_ca.map(Path::to_path_buf),
        })
    }

    /// Every file of the set with its role, in a fixed order.
    pub fn files(&self) -> impl Iterator<Item = (FileRole, &Path)> {
        [
            (FileRole::Cert, Some(self.cert.as_path())),
            (FileRole::Key, Some(self.key.as_path())),
            (FileRole::Ca, Some(self.ca.as_path())),
            (FileRole::PeerCa, self.peer_ca.as_deref()),
        ]
        .into_iter()
        .filter_map(|(role, p)| p.map(|p| (role, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_dir_gives_secret_names() {
        let p =
            CredentialPaths::resolve(Some(Path::new("/etc/tls")), None, None, None, None).unwrap();
        assert_eq!(p.cert, Path::new("/etc/tls/tls.crt"));
        assert_eq!(p.key, Path::new("/etc/tls/tls.key"));
        assert_eq!(p.ca, Path::new("/etc/tls/ca.crt"));
        assert_eq!(p.peer_ca, None);
    }

    #[test]
    fn single_file_flag_overrides_dir() {
        let p = CredentialPaths::resolve(
            Some(Path::new("/etc/tls")),
            None,
            None,
            Some(Path::new("/etc/ca/ca.crt")),
            None,
        )
        .unwrap();
        assert_eq!(p.ca, Path::new("/etc/ca/ca.crt"));
        assert_eq!(p.cert, Path::new("/etc/tls/tls.crt"));
    }

    #[test]
    fn without_dir_every_file_is_required() {
        let err =
            CredentialPaths::resolve(None, Some(Path::new("c")), None, None, None).unwrap_err();
        assert_eq!(err.role, FileRole::Key);
        assert!(err.to_string().contains("private key"), "{err}");
    }
}
