//! Upstream connections are capped per listener in http mode: HTTP/2 clients multiplex many
//! requests on one connection, and each could otherwise open its own upstream connection until
//! the process runs out of file descriptors (and with them probes and credential reloads).
//! Requests beyond the cap wait up to `--connect-timeout` for a connection, then get 503. At
//! start-up the open-file limit is raised to its hard limit and the connection limits are
//! checked against it.

use std::process::Command;
use std::time::Duration;

use super::*;
use crate::support::cli_clients::{curl_dir, port_of, run_bounded, users_curl_paths};
use crate::support::{bin, require_tool};

/// `n` GETs multiplexed by curl on one HTTP/2 connection; their status codes.
fn multiplexed(env: &Env, sc: &Sidecar, n: usize) -> Vec<u16> {
    let dir = curl_dir(&env.pki.root.cert_pem, &env.pki.client());
    let paths: Vec<String> = (0..n).map(|i| format!("/r{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let res = users_curl_paths(
        dir.path(),
        port_of(sc.listen_addr()),
        &paths,
        &["--http2", "--parallel", "--parallel-max", "50"],
    );
    assert!(
        res.transfers.iter().all(|t| t.http_version == "2"),
        "{res:?}"
    );
    let mut codes: Vec<u16> = res.transfers.iter().map(|t| t.http_code).collect();
    codes.sort();
    codes
}

#[test]
fn http2_streams_share_the_capped_upstream_connections() {
    if !require_tool("curl") {
        return;
    }
    let (env, upstream, sc) = http_proxy(&["--max-upstream-connections", "2"]);
    upstream.set_delay(Duration::from_millis(300));
    let codes = multiplexed(&env, &sc, 12);
    assert_eq!(codes, vec![200; 12], "{}", sc.log());
    assert!(
        upstream.connections() <= 2,
        "{} upstream connections for one client connection",
        upstream.connections()
    );
    let open = sc.counter(r#"mtls_sidecar_upstream_connections_active{listener="server"}"#);
    assert!(
        (1.0..=2.0).contains(&open),
        "upstream_connections_active {open}"
    );
}

#[test]
fn requests_beyond_the_cap_get_503_after_the_wait_and_are_not_upstream_failures() {
    if !require_tool("curl") {
        return;
    }
    let (env, upstream, sc) = http_proxy(&[
        "--max-upstream-connections",
        "1",
        "--connect-timeout",
        "500ms",
    ]);
    upstream.set_delay(Duration::from_secs(3));
    let codes = multiplexed(&env, &sc, 3);
    assert_eq!(codes, vec![200, 503, 503], "{}", sc.log());
    assert_eq!(upstream.connections(), 1);
    assert_eq!(
        sc.counter(r#"mtls_sidecar_upstream_failures_total{listener="server"}"#),
        0.0
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_http_requests_total{listener="server",code="503"}"#),
        2.0
    );
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    if !require_tool("prlimit") {
        return;
    }
    let (env, _) = Env::with_first(TestPki::server);
    let sc = Sidecar::server_via(
        &["prlimit", "--nofile=1024:8192", "--"],
        server_args(&env, "tcp", "127.0.0.1:9", &["--allow-all"]),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sc.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let values: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&values[3..5], ["8192", "8192"], "{line}");
}

#[test]
fn default_limits_are_lowered_to_fit_a_small_open_file_limit() {
    if !require_tool("prlimit") {
        return;
    }
    let (env, _) = Env::with_first(TestPki::server);
    let upstream = HttpUpstream::start();
    let sc = Sidecar::server_via(
        &["prlimit", "--nofile=1024:1024", "--"],
        server_args(&env, "http", &upstream.addr(), &["--allow-all"]),
    );
    wait_ready(&sc);
    let log = sc.log();
    let warning = log
        .lines()
        .find(|l| l.contains("too low for the default"))
        .unwrap_or_else(|| panic!("no warning about the lowered limits:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(warning).expect("json log line");
    let (conns, ups) = (
        v["fields"]["max_connections"]
            .as_u64()
            .expect("max_connections"),
        v["fields"]["max_upstream_connections"]
            .as_u64()
            .expect("max_upstream_connections"),
    );
    assert!(conns + ups + 128 + 64 <= 1024, "{warning}");
    assert!(conns >= 400, "{warning}");
    let resp = client_for(&env, &env.pki.client())
        .get(sc.listen_addr(), "/")
        .expect("GET");
    assert_eq!(resp.status, 200);
}

#[test]
fn chosen_limits_that_cannot_fit_the_open_file_limit_are_a_usage_error() {
    if !require_tool("prlimit") {
        return;
    }
    let (env, _) = Env::with_first(TestPki::server);
    // Bounded: a binary that does not check its limits would simply start serving.
    let out = run_bounded(
        Command::new("prlimit")
            .args(["--nofile=1024:1024", "--"])
            .arg(bin())
            .arg("server")
            .args(server_args(
                &env,
                "tcp",
                "127.0.0.1:9",
                &[
                    "--allow-all",
                    "--max-connections",
                    "5000",
                    "--admin-listen",
                    "127.0.0.1:0",
                ],
            ))
            .env_remove("RUST_LOG"),
        b"",
        Duration::from_secs(10),
    );
    let stderr = &out.stderr;
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-connections") && stderr.contains("file descriptors"),
        "{stderr}"
    );
}
