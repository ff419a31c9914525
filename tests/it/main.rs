//! Integration tests, compiled as one binary (as ripgrep does). Helpers live in `support/`.

mod admin_endpoint;
mod check_cli;
mod check_openssl;
mod kubelet_scenarios;
mod kubelet_volume;
mod support;
mod support_selftest;
mod validate_rules;
