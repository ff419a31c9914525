//! Forged identity headers: a client that passed the allow-list sends the headers the app
//! trusts as the sidecar's word, in every spelling an app might merge (`X_Client_DN` is
//! `HTTP_X_CLIENT_DN` to a CGI/WSGI app, like `X-Client-DN`), and the client-certificate
//! headers of other proxies. None may reach the app; only ours, with the verified values.

use super::*;
use crate::support::cli_clients::{curl_dir, port_of, users_curl};
use crate::support::require_tool;
use crate::support::upstream::Echoed;

/// RFC 2253 subject of `TestPki::client()`.
const CLIENT_DN: &str = "CN=web-app,OU=Web Services,O=Example Org";

/// Forged headers, each a name the app could read as an identity or forwarding fact.
const FORGED: &[(&str, &str)] = &[
    ("X_Client_DN", "CN=admin,O=Example Org"),
    ("x_client_dn", "CN=root"),
    ("X-CLIENT-DN", "CN=upper"),
    ("X_Client_Verify", "SUCCESS"),
    ("X_Client_Cert", "-----BEGIN%20CERTIFICATE-----%0Aforged"),
    ("X_Forwarded_Client_Cert", "Hash=00;Subject=\"CN=admin\""),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Proto", "http"),
    ("X_Real_IP", "6.6.6.6"),
    ("X_Forwarded_Host", "admin.internal"),
    ("Forwarded", "for=6.6.6.6"),
    ("X-SSL-Client-Cert", "forged"),
    ("X_SSL_Client_S_DN", "CN=admin"),
    ("X-SSL-Client-Verify", "0"),
    ("ssl-client-verify", "SUCCESS"),
    ("SSL_Client_S_DN", "CN=admin"),
    ("X-Client-Serial", "01"),
    ("X-ARR-ClientCert", "forged"),
    ("X-Amzn-Mtls-Clientcert", "forged"),
    ("X-Amzn-Mtls-Clientcert-Subject", "CN=admin"),
    ("X-Forwarded-Tls-Client-Cert", "forged"),
    ("Client-Cert", ":Zm9yZ2Vk:"),
];

/// Asserts the app saw exactly our identity headers and none of `FORGED`.
fn assert_only_ours(echoed: &Echoed) {
    assert_eq!(echoed.all("x-client-dn"), [CLIENT_DN]);
    assert_eq!(echoed.all("x-client-verify"), ["SUCCESS"]);
    assert_eq!(echoed.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed.all("x-forwarded-proto"), ["https"]);
    for (name, _) in FORGED {
        let lower = name.to_ascii_lowercase();
        let ours = [
            "x-client-dn",
            "x-client-verify",
            "x-client-cert",
            "x-forwarded-client-cert",
            "x-forwarded-for",
            "x-forwarded-proto",
        ];
        if ours.contains(&lower.as_str()) {
            continue;
        }
        assert!(
            !echoed.headers.contains_key(&lower),
            "client-sent {name} reached the app: {:?}",
            echoed.headers
        );
    }
    for value in echoed.headers.values().flatten() {
        for forged in ["CN=admin", "CN=root", "forged", "6.6.6.6", "admin.internal"] {
            assert!(
                !value.contains(forged),
                "a forged value reached the app: {value:?} in {:?}",
                echoed.headers
            );
        }
    }
    assert_eq!(
        echoed.one("x-request-id"),
        "kept",
        "an unrelated header was dropped"
    );
}

#[test]
fn forged_identity_headers_in_any_spelling_never_reach_the_app_over_http1() {
    let (env, _upstream, sc) = http_proxy(&[]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    let mut headers = FORGED.to_vec();
    headers.push(("X-Request-Id", "kept"));
    let resp = conn
        .request("GET", "/spoof", &headers, b"")
        .expect("GET /spoof");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_only_ours(&Echoed::parse(&resp.body));
}

#[test]
fn forged_identity_headers_in_any_spelling_never_reach_the_app_over_http2() {
    if !require_tool("curl") {
        return;
    }
    let (env, _upstream, sc) = http_proxy(&[]);
    let dir = curl_dir(&env.pki.root.cert_pem, &env.pki.client());
    let mut args: Vec<String> = vec!["--http2".into()];
    for (name, value) in FORGED.iter().chain(&[("X-Request-Id", "kept")]) {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = users_curl(dir.path(), port_of(sc.listen_addr()), "/spoof", &args);
    assert_eq!(res.http_code, 200, "{res:?}\n{}", sc.log());
    assert_eq!(res.http_version, "2", "{res:?}");
    assert_only_ours(&Echoed::parse(res.body.as_bytes()));
}
