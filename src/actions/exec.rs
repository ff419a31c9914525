//! The trailing `-- PROGRAM [ARGS..]` action: run a program (no shell) with the set, generation
//! and leaf SHA-256 in its environment; a non-zero exit, a failure to start or a hang past
//! [`EXEC_TIMEOUT`] is a failure, logged with the tail of its stderr.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::error::ExecError;
use super::outcome::ActionOk;
use crate::creds::store::Published;

/// A program that has not finished by then is killed and counted as failed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of the program's stderr the log line keeps.
const STDERR_TAIL: usize = 512;

#[derive(Clone, Debug)]
pub struct ExecAction {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl ExecAction {
    pub(super) async fn run(&self, set: &str, p: &Published) -> Result<ActionOk, ExecError> {
        let program = self.program.to_string_lossy().into_owned();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("MTLS_SIDECAR_SET", set)
            .env("MTLS_SIDECAR_GENERATION", p.generation.to_string())
            .env("MTLS_SIDECAR_SHA256", &p.bundle.leaf().sha256)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
        let stderr = child.stderr.take();
        let run = async {
            // Keep only the tail: a chatty program must not grow our memory.
            let tail = match stderr {
                Some(s) => read_tail(s).await,
                None => Vec::new(),
            };
            (child.wait().await, tail)
        };
        let (status, tail) = match tokio::time::timeout(EXEC_TIMEOUT, run).await {
            Ok((Ok(status), tail)) => (status, tail),
            Ok((Err(source), _)) => return Err(ExecError::Wait { program, source }),
            Err(_) => {
                return Err(ExecError::Timeout {
                    program,
                    after: EXEC_TIMEOUT,
                })
            }
        };
        if status.success() {
            Ok(ActionOk::Exited { program })
        } else {
            Err(ExecError::Exit {
                program,
                status,
                stderr: String::from_utf8_lossy(&tail).trim().to_string(),
            })
        }
    }
}

/// Reads a stream to its end, keeping the last [`STDERR_TAIL`] bytes.
async fn read_tail(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut tail = Vec::with_capacity(2 * STDERR_TAIL);
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    tail
}
