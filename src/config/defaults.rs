//! Every default of the configuration, defined once: the check applies them to what a file or
//! the flags leave out, and the flags show them in `--help`.

pub const ADMIN_LISTEN: &str = "[::]:9901";
pub const POLL_INTERVAL: &str = "30s";
pub const DEBOUNCE: &str = "100ms";
pub const SHUTDOWN_GRACE: &str = "25s";
pub const DRAIN_DELAY: &str = "5s";
pub const SERVER_LISTEN: &str = "[::]:8443";
pub const MIN_TLS: &str = "1.2";
pub const HANDSHAKE_TIMEOUT: &str = "10s";
pub const CONNECT_TIMEOUT: &str = "5s";
pub const IDLE_TIMEOUT: &str = "5m";
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_UPSTREAM_CONNECTIONS: usize = 1024;
pub const SIGNAL: &str = "HUP";
pub const VERIFY_TIMEOUT: &str = "10s";
pub const MIN_INTERVAL: &str = "1s";
/// The set of the flag-driven subcommands (no config file).
pub const SET: &str = "default";
