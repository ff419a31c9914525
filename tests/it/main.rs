//! Integration tests, compiled as one binary (as ripgrep does). Helpers live in `support/`.

mod admin_endpoint;
mod adversarial;
mod architecture;
mod check_cli;
mod check_openssl;
mod client_mode;
mod demo;
mod deploy_examples;
mod deploy_manifests;
mod fuzz;
mod kubelet_scenarios;
mod kubelet_volume;
mod readme_config;
mod readme_flags;
mod run_config;
mod server_mode;
mod support;
mod support_selftest;
mod usage_messages;
mod validate_rules;
mod watch_nginx;
mod watch_signal;
mod watch_webhook;
