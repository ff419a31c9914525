//! `--stage-dir DIR`: write the validated triple into DIR with kubelet's atomic `..data` swap,
//! so an app that reads DIR (instead of the mounted Secret) only ever sees complete, validated
//! credentials. Files: `tls.crt`, `tls.key` (mode 0640), `ca.crt`, and `peer-ca.crt` when
//! `--peer-ca` is set. Runs before the other actions, and also for the first bundle at start-up.

use std::path::PathBuf;

use super::error::StageError;
use super::outcome::ActionOk;
use crate::creds::store::Published;

#[derive(Clone, Debug)]
pub struct StageAction {
    pub dir: PathBuf,
}

impl StageAction {
    pub(super) async fn run(&self, p: &Published) -> Result<ActionOk, StageError> {
        let raw = p.bundle.raw().clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut files: Vec<(&str, &[u8], u32)> = vec![
                ("tls.crt", raw.cert.bytes(), 0o644),
                ("tls.key", raw.key.bytes(), 0o640),
                ("ca.crt", raw.ca.bytes(), 0o644),
            ];
            if let Some(peer) = &raw.peer_ca {
                files.push(("peer-ca.crt", peer.bytes(), 0o644));
            }
            match crate::atomic_dir::write_generation_with_modes(&dir, &files) {
                Ok(()) => Ok(ActionOk::Staged { dir }),
                Err(source) => Err(StageError::Write { dir, source }),
            }
        })
        .await
        .map_err(StageError::Task)?
    }
}
