//! The trailing `-- PROGRAM [ARGS..]` action: run a program (no shell) with the set, generation
//! and leaf SHA-256 in its environment; a non-zero exit, a failure to start or a hang past
//! [`EXEC_TIMEOUT`] is a failure, logged with the tail of its stderr.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

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
    pub(super) async fn run(&self, set: &str, p: &Published) -> Result<String, String> {
        let program = self.program.to_string_lossy().into_owned();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("MTLS_SIDECAR_SET", set)
            .env("MTLS_SIDECAR_GENERATION", p.generation.to_string())
            .env("MTLS_SIDECAR_SHA256", &p.bundle.leaf().sha256)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let out = match tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("{program}: {e}")),
            Err(_) => {
                return Err(format!(
                    "{program} did not finish within {}s and was killed",
                    EXEC_TIMEOUT.as_secs()
                ))
            }
        };
        let tail = stderr_tail(&out.stderr);
        if out.status.success() {
            Ok(format!("{program} exited 0"))
        } else {
            Err(format!("{program} {}; stderr: {tail}", out.status))
        }
    }
}

fn stderr_tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}
