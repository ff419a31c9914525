//! A plaintext app (the real `curl`) talks to the client's loopback listener and reaches the
//! app behind the server as `web-app`: through our own `server`, and through nginx set up as in
//! our users' guide (`ssl_verify_client on`, passing `$ssl_client_s_dn` to its backend).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;
use crate::support::cli_clients::curl;
use crate::support::pki::{Eku, KeyAlg, LeafSpec};
use crate::support::procs::Reaped;
use crate::support::require_tool;
use crate::support::sidecar::wait_until;

/// curl (no TLS options at all: the app knows nothing of certificates) through a client in
/// `protocol` mode; the app behind our server must see the client certificate's identity.
fn curl_reaches_the_app_as_web_app(protocol: &str) {
    if !require_tool("curl") {
        return;
    }
    let chain = chain(protocol, &[]);
    let url = format!("http://{}/orders?id=7", chain.client.addr());
    let res = curl(chain.pods.env.tmp(), &[&url]);
    assert_eq!(
        res.http_code,
        200,
        "{res:?}\n--- client ---\n{}",
        chain.client.log()
    );
    let echo = Echoed::parse(res.body.as_bytes());
    assert_eq!(echo.path, "/orders?id=7");
    assert_eq!(echo.one("x-client-dn"), CLIENT_DN);
    assert_eq!(echo.one("x-client-verify"), "SUCCESS");
    let xfcc = echo.one("x-forwarded-client-cert");
    let hash = format!("Hash={}", chain.pods.client_leaf.sha256_hex);
    assert!(
        xfcc.split(';').any(|p| p == hash),
        "the server saw another client certificate than the client volume's: {xfcc}"
    );
}

#[test]
fn curl_through_tcp_mode_reaches_the_app_as_web_app() {
    curl_reaches_the_app_as_web_app("tcp");
}

#[test]
fn curl_through_http_mode_reaches_the_app_as_web_app() {
    curl_reaches_the_app_as_web_app("http");
}

// === nginx as in our users' guide ===

/// The guide's server name (its `server_name`, and a DNS name of its server Certificate).
const GUIDE_NAME: &str = "api.example.com";

/// The guide's nginx.conf on 127.0.0.1:`port`: the Secret volume `server` (tls.crt, tls.key),
/// the CA ConfigMap volume `ca` (ca.crt), client certificates required, and the client's
/// identity passed to `backend`. `$ssl_client_escaped_cert` instead of the guide's
/// `$ssl_client_cert`: nginx folds that one over several lines, which HTTP parsers reject.
fn guide_nginx_conf(work: &Path, server: &Path, ca: &Path, port: u16, backend: &str) -> String {
    let (work, server, ca) = (work.display(), server.display(), ca.display());
    format!(
        r#"daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log notice;
events {{}}
http {{
  access_log off;
  client_body_temp_path {work};
  proxy_temp_path {work};
  fastcgi_temp_path {work};
  uwsgi_temp_path {work};
  scgi_temp_path {work};
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name {GUIDE_NAME};

    ssl_certificate {server}/tls.crt;
    ssl_certificate_key {server}/tls.key;

    ssl_client_certificate {ca}/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 2;

    if ($ssl_client_verify != SUCCESS) {{
      return 403;
    }}

    location / {{
      proxy_set_header X-Client-Cert $ssl_client_escaped_cert;
      proxy_set_header X-Client-DN $ssl_client_s_dn;
      proxy_pass http://{backend};
    }}
  }}
}}
"#
    )
}

/// nginx as in the guide, serving RSA 2048 credentials as the guide's Certificates issue them,
/// in front of an echo backend; and a client in `protocol` mode pointed at it by its guide name.
fn curl_through_client_to_guide_nginx(protocol: &str) {
    if !require_tool("nginx") || !require_tool("curl") {
        return;
    }
    let mut pods = Pods::new();
    let pki = pods.pki();
    let root = pki.root.cert_pem.clone();
    let server_leaf = pki.issue(
        &TestPki::server_spec()
            .dns(&[
                "api.production.svc.cluster.local",
                "api.production.svc",
                "api.production",
                GUIDE_NAME,
            ])
            .alg(KeyAlg::Rsa2048),
    );
    let client_leaf = pki.issue(&TestPki::client_spec().alg(KeyAlg::Rsa2048));
    pods.publish_server(&server_leaf, &root);
    pods.publish_client(&client_leaf, &root);
    let mut ca_bundle = KubeletVolume::new(pods.env.tmp().join("ca-bundle"));
    ca_bundle.write(&[("ca.crt", root.as_bytes())]);

    let backend = HttpUpstream::start();
    let work = pods.env.tmp().join("nginx");
    fs::create_dir_all(&work).expect("nginx work dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let conf = work.join("nginx.conf");
    let text = guide_nginx_conf(
        &work,
        &pods.env.dir(),
        ca_bundle.dir(),
        port,
        &backend.addr(),
    );
    fs::write(&conf, text).expect("write nginx.conf");
    let _nginx = Reaped(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&work)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    let nginx_addr = format!("127.0.0.1:{port}");
    assert!(
        wait_until(WAIT, || std::net::TcpStream::connect(&nginx_addr).is_ok()),
        "nginx did not start: {}",
        fs::read_to_string(work.join("error.log")).unwrap_or_default()
    );

    // As the guide's client pod mounts them: its Secret, and the CA bundle ConfigMap.
    let ca = ca_bundle.dir().join("ca.crt").display().to_string();
    let client = Client::start_with(client_args(
        &pods.client_dir(),
        protocol,
        &nginx_addr,
        GUIDE_NAME,
        &["--ca", &ca],
    ));
    wait_ready(&client);
    let url = format!("http://{}/endpoint", client.addr());
    let res = curl(pods.env.tmp(), &[&url]);
    assert_eq!(
        res.http_code,
        200,
        "{res:?}\n--- nginx error.log ---\n{}\n--- client ---\n{}",
        fs::read_to_string(work.join("error.log")).unwrap_or_default(),
        client.log()
    );
    let echo = Echoed::parse(res.body.as_bytes());
    assert_eq!(echo.path, "/endpoint");
    assert_eq!(echo.one("x-client-dn"), CLIENT_DN);
    let escaped = echo.one("x-client-cert");
    let pem = urlencoding::decode(&escaped).expect("X-Client-Cert is URL-encoded UTF-8");
    let (label, der) = pkcs1::der::pem::decode_vec(pem.as_bytes())
        .unwrap_or_else(|e| panic!("X-Client-Cert is not a PEM certificate ({e}): {pem}"));
    assert_eq!(label, "CERTIFICATE");
    assert_eq!(
        der, client_leaf.cert_der,
        "nginx saw another certificate than the client volume's"
    );
}

#[test]
fn users_guide_nginx_sees_the_client_identity_through_tcp_mode() {
    curl_through_client_to_guide_nginx("tcp");
}

#[test]
fn users_guide_nginx_sees_the_client_identity_through_http_mode() {
    curl_through_client_to_guide_nginx("http");
}

/// http mode forwards the app's request as it is (method, path, headers, body) and addresses
/// it to the server by name: `Host` is the server name and the target port.
#[test]
fn http_mode_forwards_the_request_to_the_server_by_name() {
    let chain = chain("http", &[]);
    let mut conn = chain.client.connect();
    let body = b"{\"order\": 7}";
    let resp = conn
        .request(
            "POST",
            "/orders?dry_run=1",
            &[
                ("X-Request-Id", "abc-123"),
                ("Content-Type", "application/json"),
                // Meant for us as a proxy: never forwarded.
                ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
            ],
            body,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", chain.client.log()));
    assert!(
        !echoed(&resp).headers.contains_key("proxy-authorization"),
        "Proxy-Authorization reached the server"
    );
    let echo = echoed(&resp);
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/orders?dry_run=1");
    assert_eq!(echo.body.as_bytes(), body);
    assert_eq!(echo.one("x-request-id"), "abc-123");
    assert_eq!(echo.one("content-type"), "application/json");
    let port = chain
        .server
        .listen_addr()
        .rsplit_once(':')
        .expect("host:port")
        .1;
    assert_eq!(echo.one("host"), format!("{SERVER_NAME}:{port}"));
    // The app's connection stays open for its next request.
    assert!(!resp.closes());
    let again = conn
        .get("/again")
        .expect("second request, same app connection");
    assert_eq!(echoed(&again).path, "/again");
    // A tunnel is not ours to open: CONNECT is refused, not forwarded.
    let connect = conn
        .request("CONNECT", "example.com:443", &[], b"")
        .expect("an answer to CONNECT");
    assert_eq!(connect.status, 405, "{}", connect.body_text());
}

/// The guide's bidirectional Certificate (server auth + client auth) works as a client
/// certificate too.
#[test]
fn bidirectional_certificate_is_accepted_as_client_identity() {
    let mut pods = Pods::new();
    let root = pods.pki().root.cert_pem.clone();
    let both = pods.pki().issue(
        &LeafSpec::new()
            .cn("service.production.svc.cluster.local")
            .dns(&[
                "service.production.svc.cluster.local",
                "service.production.svc",
            ])
            .eku(Eku::Both),
    );
    pods.publish_client(&both, &root);
    let (_upstream, server) = our_server(&pods, &[]);
    let client = Client::start_ready(&pods.client_dir(), "http", server.listen_addr(), &[]);
    let resp = client
        .fetch("/")
        .unwrap_or_else(|e| panic!("{e}\n{}", client.log()));
    let echo = echoed(&resp);
    assert_eq!(
        echo.one("x-client-dn"),
        "CN=service.production.svc.cluster.local"
    );
    let xfcc = echo.one("x-forwarded-client-cert");
    assert!(
        xfcc.contains("DNS=\"service.production.svc.cluster.local\""),
        "{xfcc}"
    );
}

/// `--peer-ca`: the server's certificate comes from a partner CA (mounted as its own
/// ConfigMap volume); our own leaf is still checked against `ca.crt`.
#[test]
fn peer_ca_trusts_a_server_from_another_ca() {
    let mut pods = Pods::new();
    let pki = pods.pki();
    let partner = pki.issue_by(&pki.other_root, &TestPki::server_spec());
    // The partner server trusts our root for its clients.
    let server_bundle = format!("{}{}", pki.other_root.cert_pem, pki.root.cert_pem);
    let partner_root = pki.other_root.cert_pem.clone();
    pods.publish_server(&partner, &server_bundle);
    let mut peers = KubeletVolume::new(pods.env.tmp().join("partner-ca"));
    peers.write(&[("ca.crt", partner_root.as_bytes())]);
    let peer_ca = peers.dir().join("ca.crt").display().to_string();
    let (_upstream, server) = our_server(&pods, &[]);
    for protocol in ["http", "tcp"] {
        let client = Client::start_ready(
            &pods.client_dir(),
            protocol,
            server.listen_addr(),
            &["--peer-ca", &peer_ca],
        );
        let resp = client
            .fetch("/partner")
            .unwrap_or_else(|e| panic!("{protocol}: {e}\n{}", client.log()));
        assert_eq!(echoed(&resp).one("x-client-dn"), CLIENT_DN, "{protocol}");
    }
}
