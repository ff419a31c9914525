//! Shared helpers for the integration tests: locating the binary, optional
//! external tools and root privileges, and the test PKIs (`pki`: rcgen
//! in-process, `openssl`: the openssl CLI exactly as our users' guide drives it).

// Every test module uses a different subset of these helpers, and this module is
// private to the test binary, so `pub` items are neither all used nor reachable.
#![allow(dead_code, unreachable_pub)]

pub mod cli_clients;
pub mod failures;
pub mod fixture;
pub mod h2raw;
pub mod http1;
pub mod inotify;
pub mod kubelet;
pub mod nginx;
pub mod openssl;
pub mod pki;
pub mod procs;
pub mod prom;
pub mod sidecar;
pub mod tcp_upstream;
pub mod tls_client;
pub mod upstream;
pub mod writers;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `mtls-sidecar` binary built by cargo for these tests, or the one named by
/// `MTLS_SIDECAR_TEST_BIN` (to run the suite against another build, e.g. an older commit's, to
/// see a regression test fail there).
pub fn bin() -> PathBuf {
    std::env::var_os("MTLS_SIDECAR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mtls-sidecar")))
}

/// Removes this process's environment meant for the binary from `cmd`: every `MTLS_SIDECAR_*`
/// variable (each flag reads one) and `RUST_LOG`, so the binary sees only what the test gives it.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MTLS_SIDECAR_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG")
}

/// A [`hermetic`] command running [`bin`].
pub fn bin_command() -> Command {
    let mut cmd = Command::new(bin());
    hermetic(&mut cmd);
    cmd
}

/// The full path of `name` if it is an executable file on `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// True if `name` is on `PATH`. When it is missing: in CI (env `CI` set) this
/// panics, because CI must install it; locally it prints a skip note and
/// returns false. Use as `if !require_tool("openssl") { return; }`.
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "required tool `{name}` is not on PATH; CI must install it \
             (.ci/run installs it with apt-get)"
        );
    }
    eprintln!("skipping test: `{name}` is not on PATH (install it to run this test)");
    false
}

/// True if this process runs as root (some tests need it: PID namespaces, dropping to another
/// UID). When it does not: in CI (env `CI` set) this panics, because CI runs as root; locally it
/// prints a skip note naming `why` and returns false.
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test must run as root ({why}); CI runs the suite as root");
    }
    eprintln!("skipping test: not root ({why})");
    false
}
