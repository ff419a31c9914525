//! `mtls-sidecar demo`, the README's first command: it must print a curl command that works as
//! pasted, serve the plaintext app through mTLS, and rotate the server certificate without a
//! failed request.

use std::time::Duration;

use crate::support::cli_clients::curl;
use crate::support::require_tool;
use crate::support::sidecar::Sidecar;

#[test]
fn demo_serves_the_printed_curl_command_and_rotates() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let sc = Sidecar::start(
        "demo",
        [
            "--dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--rotate-every",
            "1s",
        ],
    );
    assert!(
        sc.wait_until(Duration::from_secs(10), || sc
            .stdout()
            .contains("curl --cert")),
        "{}",
        sc.stdout()
    );
    let out = sc.stdout();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("curl --cert"))
        .unwrap();
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert!(
        sc.wait_until(Duration::from_secs(10), || sc.ready()),
        "{}",
        sc.log()
    );

    let first_serial = sc.serial().expect("serving");
    let mut serials = vec![first_serial.clone()];
    for _ in 0..15 {
        let r = curl(dir.path(), &args);
        assert_eq!(r.http_code, 200, "{r:?}\n{}", sc.log());
        assert!(
            r.body.contains("CN=web-app,OU=Web Services,O=Example Org"),
            "{}",
            r.body
        );
        if let Some(s) = sc.serial() {
            if serials.last() != Some(&s) {
                serials.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        serials.len() >= 2,
        "the server certificate was never rotated: {serials:?}"
    );

    // Without a client certificate, refused.
    let no_cert: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.contains("client/tls."))
        .filter(|a| *a != "--cert" && *a != "--key")
        .collect();
    assert_ne!(curl(dir.path(), &no_cert).http_code, 200);
}
