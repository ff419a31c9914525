//! `mtls-sidecar run --config FILE`: several credential sets, listeners and watch actions in one
//! process, from a YAML file.
//!
//! - `mistakes`: every mistake in a file is reported before anything starts (exit 2, FILE:LINE:
//!   key: message); `--check`, `--check-credentials`, `--print`
//! - `live_change`: the file changes under load (a ConfigMap `..data` swap, SIGHUP): listeners
//!   added and removed, unchanged ones keep their connections, a broken file is refused
//! - `bidirectional`: the users' guide's bidirectional service in one sidecar: one set used by a
//!   server and a client listener and a stage+signal action for a real nginx, rotating together
//! - `two_sets`: a server identity and a client identity from two Secrets rotate independently

mod bidirectional;
mod live_change;
mod mistakes;
mod two_sets;
