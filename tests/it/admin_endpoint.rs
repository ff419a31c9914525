//! What an operator sees: `/readyz`, `/status`, `/metrics` and the reload log lines of a running
//! `watch`, and how `watch` reports bad flags.

use std::process::Command;
use std::time::Duration;

use time::OffsetDateTime;

use crate::support::bin;
use crate::support::fixture::{tls_files, Env};
use crate::support::pki::{LeafSpec, TestPki};
use crate::support::sidecar::Sidecar;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn readyz_turns_503_when_the_served_certificate_expires() {
    let mut env = Env::new();
    let now = OffsetDateTime::now_utc();
    let short = env.pki.issue(
        &LeafSpec::default()
            .cn("svc")
            .dns(&["svc"])
            .not_before(now - time::Duration::hours(1))
            .not_after(now + time::Duration::seconds(3)),
    );
    env.publish(&short);
    let sc = env.start("0", &[]);
    assert!(sc.wait_until(WAIT, || sc.ready()), "{}", sc.log());
    assert!(
        sc.wait_until(WAIT, || !sc.ready()),
        "still ready after expiry"
    );
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("expired"), "{body}");
    assert!(sc.healthy(), "/healthz stays 200: the process is fine");
}

#[test]
fn status_and_metrics_say_what_is_served_and_why_an_update_was_refused() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());

    // A broken update: cert of one issuance, key of another.
    let other = env.pki.server();
    let mut files = tls_files(&first, &env.pki.root.cert_pem);
    files[1].1 = other.key_pkcs8_pem.clone().into_bytes();
    assert_eq!(files[1].0, "tls.key");
    env.vol.write(&files);
    assert!(
        sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
            == Some("key_mismatch")),
        "{}",
        sc.log()
    );

    let set = sc.set();
    assert_eq!(set["name"], "default");
    assert_eq!(set["generation"], 1);
    assert_eq!(set["serial"], first.serial_hex.as_str());
    assert_eq!(set["sha256"], first.sha256_hex.as_str());
    assert_eq!(set["subject"], "CN=api.production.svc.cluster.local");
    assert!(set["sans"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "DNS:api.production.svc.cluster.local"));
    for field in ["not_before", "not_after", "loaded_at"] {
        let t = set[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing: {set:#}"));
        assert!(
            t.ends_with('Z') && t.len() == 20,
            "{field} is not RFC 3339 UTC: {t}"
        );
    }
    let err = &set["last_error"];
    assert!(
        err["message"].as_str().unwrap().contains("tls.key"),
        "{err}"
    );
    assert!(err["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(sc.status()["listeners"], serde_json::json!([]));
    assert!(sc.ready(), "the last good credentials are still served");

    assert_eq!(
        sc.counter(r#"mtls_sidecar_reload_failures_total{set="default",reason="key_mismatch"}"#),
        1.0
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_reloads_total{set="default",result="failure"}"#),
        1.0
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_reloads_total{set="default",result="success"}"#),
        1.0
    );
    let info = format!(
        r#"mtls_sidecar_certificate_info{{set="default",subject="CN=api.production.svc.cluster.local",serial="{}",sha256="{}"}}"#,
        first.serial_hex, first.sha256_hex
    );
    assert_eq!(sc.metric(&info), Some(1.0), "{}", sc.metrics());
    let not_after = OffsetDateTime::parse(
        set["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        sc.metric(
            r#"mtls_sidecar_certificate_expiration_timestamp_seconds{set="default",role="leaf"}"#
        ),
        Some(not_after.unix_timestamp() as f64)
    );
    assert!(sc
        .metric(r#"mtls_sidecar_certificate_expiration_timestamp_seconds{set="default",role="ca"}"#)
        .is_some());
    let loaded = sc
        .metric(r#"mtls_sidecar_last_reload_success_timestamp_seconds{set="default"}"#)
        .unwrap();
    assert!((loaded - OffsetDateTime::now_utc().unix_timestamp() as f64).abs() < 120.0);

    // The fix arrives: published, last_error cleared, the old info series gone.
    let fixed = env.pki.server();
    env.publish(&fixed);
    assert!(sc.wait_until(WAIT, || sc.generation() == 2));
    assert_eq!(sc.set()["last_error"], serde_json::Value::Null);
    assert_eq!(
        sc.metric(&info),
        None,
        "info of the old certificate must be removed"
    );
}

#[test]
fn one_log_line_per_reload_names_old_and_new_serial() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1));
    let second = env.pki.server();
    env.publish(&second);
    // The new generation is served (and shown in /status) a moment before its log line is written.
    let publish_line = || {
        sc.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["fields"]["message"] == "credentials published" && v["fields"]["generation"] == 2
            })
    };
    assert!(
        sc.wait_until(WAIT, || publish_line().is_some()),
        "no publish line for generation 2:\n{}",
        sc.log()
    );
    let line = publish_line().expect("the publish line just seen");
    let f = &line["fields"];
    assert_eq!(f["set"], "default");
    assert_eq!(f["old_serial"], first.serial_hex.as_str());
    assert_eq!(f["new_serial"], second.serial_hex.as_str());
    assert_eq!(f["result"], "success");
    assert!(f["not_after"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn private_key_never_reaches_logs_status_or_metrics() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &["--log-level", "debug"]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1));
    // A refused update whose key file also holds garbage and a second key.
    let other = env.pki.server();
    let mut files = tls_files(&first, &env.pki.root.cert_pem);
    files[1].1 = format!("{}{}", first.key_pkcs8_pem, other.key_pkcs8_pem).into_bytes();
    env.vol.write(&files);
    assert!(sc.wait_until(WAIT, || sc.last_error_reason().is_some()));
    let everything = format!("{}{}{}{}", sc.log(), sc.stdout(), sc.status(), sc.metrics());
    for key in [&first.key_pkcs8_pem, &other.key_pkcs8_pem] {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!everything.contains(line), "key material leaked");
        }
    }
}

#[test]
fn admin_listen_off_runs_without_an_endpoint() {
    let (env, _) = Env::with_first(TestPki::server);
    let mut child = Command::new(bin())
        .arg("watch")
        .args(env.args("0", &["--admin-listen", "off"]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited without an admin endpoint"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("admin endpoint listening"));
}

#[test]
fn watch_usage_errors_exit_2_and_a_busy_admin_port_exits_1() {
    let env = Env::new();
    let run = |args: Vec<String>| {
        Command::new(bin())
            .arg("watch")
            .args(args)
            .output()
            .unwrap()
    };
    let dir = env.dir().display().to_string();
    let no_action = run(vec!["--cert-dir".into(), dir.clone()]);
    assert_eq!(no_action.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_action.stderr).contains("-- PROGRAM"));
    let bad = run(env.args("soon", &[]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--poll-interval"));
    let bad_listen = run(env.args("0", &["--admin-listen", "localhost"]));
    assert_eq!(bad_listen.status.code(), Some(2));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(env.args("0", &["--admin-listen", &addr]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert_eq!(
        stderr.matches("os error").count(),
        1,
        "the OS error is said more than once: {stderr}"
    );
}

#[test]
fn sidecar_guard_reports_a_missing_volume_as_not_ready() {
    let env = Env::new();
    let sc = Sidecar::watch(env.args("0", &[]));
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 503);
    assert!(
        body.contains("missing_file") || body.contains("no valid credentials"),
        "{body}"
    );
    assert_eq!(sc.generation(), 0);
    assert_eq!(sc.set()["serial"], serde_json::Value::Null);
}

/// `/metrics` is OpenMetrics text (which Prometheus scrapes), and the README says so.
#[test]
fn metrics_are_openmetrics_text_as_the_readme_says() {
    let (env, _) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    let mut resp = ureq::get(&format!("http://{}/metrics", sc.admin_addr()))
        .call()
        .expect("GET /metrics");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let body = resp.body_mut().read_to_string().expect("body");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("- `GET /metrics`:"))
        .expect("README describes GET /metrics");
    assert!(
        line.contains("OpenMetrics text") && !line.contains("Prometheus text"),
        "README: {line}"
    );
}
