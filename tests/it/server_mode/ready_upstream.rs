//! `--ready-upstream`: `/readyz` also requires that the target accepts connections, and names
//! the listener and the target when it does not; without the flag the target is not probed.

use std::net::TcpListener;

use super::*;
use crate::support::upstream::HttpUpstream;

#[test]
fn readyz_follows_the_target_with_ready_upstream() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let target = upstream.addr();
    let sc = start_ready(&env, "http", &target, &["--allow-all", "--ready-upstream"]);

    drop(upstream);
    let not_ready = sc.wait_until(WAIT, || sc.get("/readyz").0 == 503);
    assert!(not_ready, "still ready with the target gone\n{}", sc.log());
    let (_, body) = sc.get("/readyz");
    assert!(
        body.starts_with(&format!(
            "not ready: listener server: target {target} not reachable: "
        )),
        "{body}"
    );
    assert!(sc.healthy(), "/healthz stays 200: the sidecar is fine");

    // A target on the same port again (one that only accepts is enough).
    let _again = TcpListener::bind(&target).expect("rebind the target's port");
    let ready = sc.wait_until(WAIT, || sc.ready());
    assert!(ready, "not ready again: {:?}", sc.get("/readyz"));
}

#[test]
fn without_ready_upstream_a_missing_target_does_not_matter() {
    let (env, _) = env_with_server();
    let target = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    // Nothing listens on the target.
    let sc = start_ready(&env, "http", &target, &["--allow-all"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sc.get("/readyz"), (200, "ready\n".to_string()));
}

#[test]
fn ready_upstream_is_refused_for_a_client_listener_in_a_config_file() {
    let env = Env::new();
    let dir = env.dir().display().to_string();
    let yaml = format!(
        "admin-listen: 127.0.0.1:0\nsets:\n  s:\n    cert-dir: {dir}\nlisteners:\n  - name: out\n    kind: client\n    credentials: s\n    listen: 127.0.0.1:0\n    target: 127.0.0.1:9\n    ready-upstream: true\n"
    );
    let file = env.tmp().join("config.yaml");
    std::fs::write(&file, yaml).expect("write the config");
    let out = crate::support::bin_command()
        .args(["run", "--check", "--config"])
        .arg(&file)
        .output()
        .expect("run --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("listeners[0].ready-upstream") && stderr.contains("only for kind server"),
        "{stderr}"
    );
}
