//! Who gets through the handshake: curl and `openssl s_client` with the users' guide PKI
//! (made by the openssl CLI), the rustls client with the rcgen PKI; and every client
//! certificate the sidecar must refuse, each counted as a handshake failure.

use tempfile::TempDir;

use super::*;
use crate::support::cli_clients::{curl, port_of, s_client, users_curl};
use crate::support::kubelet::KubeletVolume;
use crate::support::openssl::OpenSslPki;
use crate::support::pki::Eku;
use crate::support::require_tool;
use crate::support::tls_client::{TlsClient, SERVER_NAME};
use crate::support::upstream::{Echoed, HttpUpstream};

/// The users' guide setup: the server Secret (`server.crt`, `server.key`, `mtls-ca.crt`) as
/// `tls.crt`/`tls.key`/`ca.crt` in a cert dir, the client's `client.crt`, `client.key` and
/// `ca.crt` in another dir, and `server --protocol http --allow-all` in front of an upstream.
struct Guide {
    client_dir: TempDir,
    _cert_dir: TempDir,
    upstream: HttpUpstream,
    sc: Sidecar,
}

fn guide_setup() -> Guide {
    let pki = OpenSslPki::shared();
    let cert_dir = tempfile::tempdir().expect("tempdir");
    pki.copy_triple("server", cert_dir.path());
    let client_dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("client.crt", "client.crt"),
        ("client.key", "client.key"),
        ("mtls-ca.crt", "ca.crt"),
    ] {
        std::fs::copy(pki.path(from), client_dir.path().join(to)).expect("copy client file");
    }
    let upstream = HttpUpstream::start();
    let dir = cert_dir.path().display().to_string();
    let sc = Sidecar::server(server_args(
        &dir,
        "http",
        &upstream.addr(),
        &["--allow-all"],
    ));
    wait_ready(&sc);
    Guide {
        client_dir,
        _cert_dir: cert_dir,
        upstream,
        sc,
    }
}

#[test]
fn curl_as_in_the_users_guide_reaches_the_upstream_with_the_client_dn() {
    if !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let g = guide_setup();
    let port = port_of(g.sc.listen_addr());
    let res = users_curl(g.client_dir.path(), port, "/endpoint", &[]);
    assert_eq!(res.http_code, 200, "{res:?}\n{}", g.sc.log());
    let echoed = Echoed::parse(res.body.as_bytes());
    assert_eq!(echoed.path, "/endpoint");
    assert_eq!(echoed.one("X-Client-DN"), CLIENT_DN);
    assert_eq!(echoed.one("X-Client-Verify"), "SUCCESS");
    assert_eq!(g.upstream.requests_finished(), 1);
}

#[test]
fn curl_without_a_client_certificate_is_refused() {
    if !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let g = guide_setup();
    let port = port_of(g.sc.listen_addr());
    let url = format!("https://{SERVER_NAME}:{port}/endpoint");
    let resolve = format!("{SERVER_NAME}:{port}:127.0.0.1");
    let res = curl(
        g.client_dir.path(),
        &["--cacert", "ca.crt", "--resolve", &resolve, &url],
    );
    assert!(
        !res.ran.success(),
        "curl succeeded without a client cert: {res:?}"
    );
    assert_eq!(res.http_code, 0, "{res:?}");
    assert_eq!(g.upstream.requests_started(), 0);
}

#[test]
fn openssl_s_client_with_the_users_guide_certificates_gets_a_response() {
    if !require_tool("openssl") {
        return;
    }
    let g = guide_setup();
    let request =
        format!("GET /s_client HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n");
    let ran = s_client(
        g.client_dir.path(),
        g.sc.listen_addr(),
        &[
            "-cert",
            "client.crt",
            "-key",
            "client.key",
            "-CAfile",
            "ca.crt",
        ],
        request.as_bytes(),
    );
    assert!(
        ran.stdout.starts_with("HTTP/1.1 200"),
        "s_client got no 200: {ran:?}\n{}",
        g.sc.log()
    );
    assert!(ran.stdout.contains(CLIENT_DN), "{ran:?}");
    assert!(ran.stdout.contains("/s_client"), "{ran:?}");
}

#[test]
fn rustls_client_is_served_the_volume_leaf_and_reaches_the_upstream() {
    let (env, server) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let client = client_for(&env, &env.pki.client());
    let mut conn = client.connect(sc.listen_addr()).expect("mTLS handshake");
    assert_eq!(conn.peer.serial_hex, server.serial_hex);
    assert_eq!(conn.peer.sha256_hex, server.sha256_hex);
    let resp = conn.get("/hello").expect("GET /hello");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let echoed = Echoed::parse(&resp.body);
    assert_eq!(echoed.path, "/hello");
    assert_eq!(echoed.one("x-client-verify"), "SUCCESS");
}

/// Start `server --protocol http --allow-all`, check that a client presenting `leaf` (None:
/// no certificate) is refused, that the refusal is counted as a handshake failure and that
/// nothing reached the upstream. Returns the client's error.
fn assert_refused(env: &Env, leaf: Option<&Leaf>) -> String {
    let upstream = HttpUpstream::start();
    let sc = start_ready(env, "http", &upstream.addr(), &["--allow-all"]);
    let before = handshake_failures(&sc);
    let client = match leaf {
        Some(leaf) => client_for(env, leaf),
        None => TlsClient::anonymous(&env.pki.root.cert_pem),
    };
    let err = refused(&client, sc.listen_addr());
    let counted = sc.wait_until(WAIT, || handshake_failures(&sc) > before);
    assert!(
        counted,
        "refused ({err}) but mtls_sidecar_handshake_failures_total{{listener=\"server\"}} did not grow:\n{}",
        sc.metrics()
    );
    assert_eq!(
        upstream.requests_started(),
        0,
        "a refused client reached the upstream"
    );
    // The sidecar is fine afterwards: a good client still gets through.
    let good = client_for(env, &env.pki.client());
    let resp = good
        .get(sc.listen_addr(), "/")
        .expect("good client after a refusal");
    assert_eq!(resp.status, 200);
    err
}

#[test]
fn client_without_a_certificate_is_refused() {
    let (env, _) = env_with_server();
    assert_refused(&env, None);
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let (env, _) = env_with_server();
    let stranger = env
        .pki
        .issue_by(&env.pki.other_root, &TestPki::client_spec());
    assert_refused(&env, Some(&stranger));
}

#[test]
fn expired_client_certificate_is_refused() {
    let (env, _) = env_with_server();
    let expired = env.pki.issue(&TestPki::client_spec().expired());
    assert_refused(&env, Some(&expired));
}

#[test]
fn server_auth_only_certificate_is_refused_as_a_client() {
    let (env, _) = env_with_server();
    let server_only = env.pki.issue(&TestPki::client_spec().eku(Eku::Server));
    assert_refused(&env, Some(&server_only));
}

#[test]
fn client_certificate_via_an_intermediate_is_accepted() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let leaf = env
        .pki
        .issue_by(&env.pki.intermediate, &TestPki::client_spec());
    let resp = client_for(&env, &leaf)
        .get(sc.listen_addr(), "/")
        .expect("client chain leaf + intermediate");
    assert_eq!(resp.status, 200);
}

#[test]
fn tls_1_2_client_is_accepted_by_default() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let client = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&env.pki.client())
        .tls12_only()
        .build();
    let mut conn = client.connect(sc.listen_addr()).expect("TLS 1.2 handshake");
    assert_eq!(conn.version, "Some(TLSv1_2)");
    assert_eq!(conn.get("/").expect("GET over TLS 1.2").status, 200);
}

#[test]
fn min_tls_1_3_refuses_a_tls_1_2_client() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--min-tls", "1.3"],
    );
    let old = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&env.pki.client())
        .tls12_only()
        .build();
    refused(&old, sc.listen_addr());
    let modern = client_for(&env, &env.pki.client());
    let conn = modern.connect(sc.listen_addr()).expect("TLS 1.3 handshake");
    assert_eq!(conn.version, "Some(TLSv1_3)");
}

#[test]
fn server_certificate_matches_what_status_reports() {
    let (env, server) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    assert_eq!(sc.sha256().as_deref(), Some(conn.peer.sha256_hex.as_str()));
    assert_eq!(sc.serial().as_deref(), Some(server.serial_hex.as_str()));
}

/// `--peer-ca`: clients are verified against that bundle, and no longer against `--ca`
/// (which only vouches for our own leaf).
#[test]
fn peer_ca_replaces_the_ca_bundle_for_verifying_clients() {
    let (env, _) = env_with_server();
    let mut peers = KubeletVolume::new(env.tmp().join("peers"));
    peers.write(&[("ca.crt", env.pki.other_root.cert_pem.as_bytes())]);
    let peer_ca = peers.dir().join("ca.crt").display().to_string();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--peer-ca", &peer_ca],
    );
    let partner = env
        .pki
        .issue_by(&env.pki.other_root, &TestPki::client_spec());
    let resp = client_for(&env, &partner)
        .get(sc.listen_addr(), "/")
        .expect("client of the --peer-ca CA");
    assert_eq!(resp.status, 200);
    refused(&client_for(&env, &env.pki.client()), sc.listen_addr());
}
