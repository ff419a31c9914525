//! `watch --webhook URL [--webhook-ca FILE]`: one POST per validated change with the new
//! credentials' facts, over http:// or https:// (server verified against --webhook-ca);
//! connection failures, untrusted servers and non-2xx answers are failures, counted.

use std::process::Command;
use std::time::Duration;

use crate::support::fixture::Env;
use crate::support::pki::{Eku, LeafSpec, TestPki};
use crate::support::sidecar::Sidecar;
use crate::support::upstream::HttpUpstream;

const WAIT: Duration = Duration::from_secs(10);
const OK: &str = r#"mtls_sidecar_actions_total{set="default",action="webhook",result="success"}"#;

/// The failure series of one reason.
fn failed(reason: &str) -> String {
    format!(
        r#"mtls_sidecar_actions_total{{set="default",action="webhook",result="failure",reason="{reason}"}}"#
    )
}

/// Failures of every reason.
fn failures(sc: &Sidecar) -> f64 {
    sc.metric_sum(
        "mtls_sidecar_actions_total",
        &[("action", "webhook"), ("result", "failure")],
    )
}

/// A `watch --webhook URL EXTRA..` sidecar on a fresh volume that has published its first
/// bundle (which is not acted on).
fn watch_with_hook(env: &Env, url: &str, extra: &[&str]) -> Sidecar {
    let dir = env.dir().display().to_string();
    let mut args = vec!["--cert-dir", &dir, "--poll-interval", "0", "--webhook", url];
    args.extend_from_slice(extra);
    let sc = Sidecar::watch(args);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    sc
}

/// A TLS webhook receiver for `localhost`, with a certificate issued by `ca` of `pki`.
fn https_hook(pki: &TestPki, ca: &crate::support::pki::Ca) -> HttpUpstream {
    let leaf = pki.issue_by(
        ca,
        &LeafSpec::new()
            .cn("localhost")
            .dns(&["localhost"])
            .eku(Eku::Server),
    );
    HttpUpstream::start_tls(&leaf.chain_pem, &leaf.key_pkcs8_pem)
}

fn port_of(hook: &HttpUpstream) -> String {
    hook.addr().rsplit(':').next().unwrap().to_string()
}

#[test]
fn http_webhook_is_posted_once_per_change_with_the_new_facts() {
    let (mut env, _) = Env::with_first(TestPki::server);
    let hook = HttpUpstream::start();
    let url = format!("http://{}/reload?x=1&token=s3cr3t", hook.addr());
    let sc = watch_with_hook(&env, &url, &[]);
    let second = env.pki.server();
    env.publish(&second);
    assert!(
        sc.wait_until(WAIT, || sc.counter(OK) == 1.0),
        "{}",
        sc.log()
    );
    assert_eq!(hook.requests_finished(), 1);
    let got = hook.last().expect("one POST");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/reload?x=1&token=s3cr3t");
    // Webhook paths often carry a token: logs show only scheme://host:port/….
    assert!(!sc.log().contains("s3cr3t"), "{}", sc.log());
    assert!(
        sc.log().contains(&format!("http://{}/…", hook.addr())),
        "{}",
        sc.log()
    );
    assert_eq!(got.one("content-type"), "application/json");
    assert_eq!(got.one("host"), hook.addr());
    let body: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["set"], "default");
    assert_eq!(body["generation"], 2);
    assert_eq!(body["serial"].as_str(), sc.serial().as_deref());
    assert_eq!(body["sha256"].as_str(), sc.sha256().as_deref());
    assert_eq!(body["subject"], "CN=api.production.svc.cluster.local");
    assert!(body["not_after"].as_str().unwrap().ends_with('Z'));
    // Every failure reason is exported from the start, at zero.
    for reason in [
        "connect_failed",
        "tls_failed",
        "request_failed",
        "http_status",
        "timeout",
    ] {
        assert_eq!(sc.metric(&failed(reason)), Some(0.0), "{}", sc.metrics());
    }
}

#[test]
fn https_webhook_verified_against_webhook_ca() {
    let (mut env, _) = Env::with_first(TestPki::server);
    let hook = https_hook(&env.pki, &env.pki.root);
    let ca = env.tmp().join("hook-ca.pem");
    std::fs::write(&ca, &env.pki.root.cert_pem).unwrap();
    let url = format!("https://localhost:{}/reload", port_of(&hook));
    let sc = watch_with_hook(&env, &url, &["--webhook-ca", ca.to_str().unwrap()]);
    env.publish(&env.pki.server());
    assert!(
        sc.wait_until(WAIT, || sc.counter(OK) == 1.0),
        "{}",
        sc.log()
    );
    let got = hook.last().expect("one POST");
    assert_eq!(got.path, "/reload");
    let body: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["generation"], 2);
    assert_eq!(failures(&sc), 0.0);
}

#[test]
fn https_webhook_from_another_ca_is_a_failure_and_gets_no_post() {
    let (mut env, _) = Env::with_first(TestPki::server);
    let hook = https_hook(&env.pki, &env.pki.other_root);
    let ca = env.tmp().join("hook-ca.pem");
    std::fs::write(&ca, &env.pki.root.cert_pem).unwrap();
    let url = format!("https://localhost:{}/reload", port_of(&hook));
    let sc = watch_with_hook(&env, &url, &["--webhook-ca", ca.to_str().unwrap()]);
    env.publish(&env.pki.server());
    assert!(
        sc.wait_until(WAIT, || sc.counter(&failed("tls_failed")) >= 1.0),
        "{}",
        sc.log()
    );
    assert!(sc.log().contains("TLS handshake"), "{}", sc.log());
    assert_eq!(hook.requests_started(), 0);
    assert_eq!(sc.counter(OK), 0.0);
}

#[test]
fn webhook_non_2xx_or_nothing_listening_is_a_failure() {
    let (mut env, _) = Env::with_first(TestPki::server);
    let hook = HttpUpstream::start();
    let url = format!("http://{}/reload?status=503", hook.addr());
    let sc = watch_with_hook(&env, &url, &[]);
    env.publish(&env.pki.server());
    assert!(
        sc.wait_until(WAIT, || sc.counter(&failed("http_status")) >= 1.0),
        "{}",
        sc.log()
    );
    assert!(sc.log().contains("503"), "{}", sc.log());
    assert_eq!(sc.counter(OK), 0.0);

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut env2, _) = Env::with_first(TestPki::server);
    let sc2 = watch_with_hook(&env2, &format!("http://{closed}/reload"), &[]);
    env2.publish(&env2.pki.server());
    assert!(
        sc2.wait_until(WAIT, || sc2.counter(&failed("connect_failed")) >= 1.0),
        "{}",
        sc2.log()
    );
}

#[test]
fn webhook_usage_errors_exit_2_naming_the_flag() {
    let (env, _) = Env::with_first(TestPki::server);
    let dir = env.dir().display().to_string();
    let empty = env.tmp().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let missing = env.tmp().join("missing.pem");
    let stage = env.tmp().join("stage");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--webhook", "ftp://example.invalid/x"], "--webhook"),
        (vec!["--webhook", "/reload"], "--webhook"),
        (
            vec!["--webhook", "https://user:pw@localhost:9/x"],
            "user:password@",
        ),
        (
            vec![
                "--webhook",
                "http://127.0.0.1:9/x",
                "--webhook-ca",
                empty.to_str().unwrap(),
            ],
            "--webhook-ca",
        ),
        (
            vec![
                "--webhook",
                "https://localhost:9/x",
                "--webhook-ca",
                missing.to_str().unwrap(),
            ],
            "--webhook-ca",
        ),
        (
            vec![
                "--webhook",
                "https://localhost:9/x",
                "--webhook-ca",
                empty.to_str().unwrap(),
            ],
            "no usable CA certificate",
        ),
        (
            vec![
                "--stage-dir",
                stage.to_str().unwrap(),
                "--webhook-ca",
                empty.to_str().unwrap(),
            ],
            "--webhook-ca",
        ),
    ];
    for (extra, expect) in cases {
        let out = Command::new(crate::support::bin())
            .args(["watch", "--admin-listen", "off", "--cert-dir", &dir])
            .args(&extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expect), "{extra:?}: {stderr}");
    }
}
