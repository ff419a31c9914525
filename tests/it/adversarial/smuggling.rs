//! Request smuggling and framing tricks over HTTP/1.1: raw bytes written on one TLS connection
//! (client certificate presented) to `server --protocol http --allow-all` in front of an
//! `HttpUpstream`.
//!
//! Every row of `CASES` sends its bytes in one write (one TLS record: what a front end would
//! receive in one packet) and says what it proves. Whatever the row, three things must hold:
//! the upstream never receives a forged identity header (every request it sees carries the
//! identity of the certificate, exactly once); it never receives a request that hid inside
//! another one's framing (it sees exactly the requests the row names, each as its own request);
//! and the sidecar serves a normal request afterwards. What the upstream saw is read from the
//! `HttpUpstream` request count and last request, and from the echo of every request it
//! answered, which the client receives (so the echoes account for every forwarded request).
//!
//! The sidecar runs with `--idle-timeout 2s`, so a connection it keeps alive after the
//! attack closes on its own: the client reads until the sidecar ends the connection.

use std::io::{Cursor, ErrorKind, Read, Write};
use std::time::Duration;

use crate::support::fixture::Env;
use crate::support::http1::read_response;
use crate::support::pki::TestPki;
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::{Response, TlsClient};
use crate::support::upstream::{Echoed, HttpUpstream};

/// RFC 2253 subject of `TestPki::client()`: the identity every forwarded request must carry.
const CLIENT_DN: &str = "CN=web-app,OU=Web Services,O=Example Org";

/// The marker of every forged identity header in `CASES`.
const FORGED: &str = "forged";

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// What the sidecar must do with a row's bytes.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Nothing reaches the upstream; the client gets `400` or the connection closes.
    Refused,
    /// Exactly these requests reach the upstream, in order, each as a request of its own:
    /// `(path, body)`.
    Forwarded(&'static [(&'static str, &'static str)]),
    /// The head is valid but the body is not, so the head may already be on its way when the
    /// body turns out malformed: nothing, or only `path`, reaches the upstream (maybe with a cut
    /// body); the client gets `400` or the connection closes.
    AtMostHead(&'static str),
}

/// One attack: what it proves, the bytes, and the expected outcome.
struct Case {
    proves: &'static str,
    bytes: &'static str,
    expect: Expect,
}

/// A second request hidden after the first one's body, carrying a forged identity.
macro_rules! smuggled {
    () => {
        "GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Client-DN: CN=forged,O=Example Org\r\n\r\n"
    };
}

const CASES: &[Case] = &[
    // --- Content-Length and Transfer-Encoding ---
    Case {
        proves: "Content-Length then Transfer-Encoding: chunked wins (RFC 9112 6.3), the \
                 connection closes after the response, so the request after the chunked body \
                 never runs",
        bytes: concat!(
            "POST /cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 70\r\n",
            "Transfer-Encoding: chunked\r\nX-Client-DN: CN=forged\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Forwarded(&[("/cl-te", "")]),
    },
    Case {
        proves: "Transfer-Encoding then a short Content-Length: the chunked body is read whole \
                 (not cut at the length), and the request after it never runs",
        bytes: concat!(
            "POST /te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 3\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Forwarded(&[("/te-cl", "hello")]),
    },
    Case {
        proves: "two different Content-Length headers are refused, not resolved either way",
        bytes: concat!(
            "POST /cl-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 74\r\n",
            "X-Client-DN: CN=forged\r\n\r\n",
            "hello",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "a Content-Length list of different values is refused",
        bytes: concat!(
            "POST /cl-list HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 74\r\n\r\n",
            "hello",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "a signed Content-Length (+5) is refused",
        bytes: concat!(
            "POST /cl-plus HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "a negative Content-Length is refused",
        bytes: concat!(
            "POST /cl-negative HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    // --- Transfer-Encoding spellings ---
    Case {
        proves: "`Transfer-Encoding: chunked, identity` (chunked not last) is refused",
        bytes: concat!(
            "POST /te-chunked-identity HTTP/1.1\r\nHost: a\r\n",
            "Transfer-Encoding: chunked, identity\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "`Transfer-Encoding: xchunked` is not taken for chunked, and is refused",
        bytes: concat!(
            "POST /te-xchunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "`Transfer-Encoding: identity` alone is refused",
        bytes: concat!(
            "POST /te-identity HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n",
            "Content-Length: 5\r\n\r\nhello",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "two Transfer-Encoding lines whose last coding is not chunked are refused",
        bytes: concat!(
            "POST /te-te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "` \\tchunked\\t ` (odd whitespace around the value) is chunked: the body is \
                 decoded as such and the request after it runs as its own request, with our \
                 identity",
        bytes: concat!(
            "POST /te-whitespace HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \t chunked \t\r\n",
            "X-Client-DN: CN=forged\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Forwarded(&[("/te-whitespace", "hello"), ("/smuggled", "")]),
    },
    Case {
        proves: "`Transfer-Encoding: CHUNKED` is chunked (codings are case-insensitive)",
        bytes: concat!(
            "POST /te-upper HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        expect: Expect::Forwarded(&[("/te-upper", "hello")]),
    },
    Case {
        proves: "`Transfer-Encoding : chunked` (space before the colon) is refused, not read as \
                 another header name",
        bytes: concat!(
            "POST /te-space-colon HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n",
            "Content-Length: 5\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "Transfer-Encoding folded onto a continuation line (obs-fold) is refused",
        bytes: concat!(
            "POST /te-fold HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n",
            "Content-Length: 5\r\n\r\n",
            "0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
    // --- Header syntax ---
    Case {
        proves: "an obs-fold continuation line (which could smuggle `X-Client-DN` inside \
                 another header's value) is refused",
        bytes: concat!(
            "GET /obs-fold HTTP/1.1\r\nHost: a\r\nX-Request-Id: 1\r\n",
            " X-Client-DN: CN=forged\r\n\r\n"
        ),
        expect: Expect::Refused,
    },
    Case {
        proves: "obs-fold with a tab is refused too",
        bytes: "GET /obs-fold-tab HTTP/1.1\r\nHost: a\r\nX-Request-Id: 1\r\n\tCN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "bare LF line endings parse to the same single request (no second parse of the \
                 lines), and the forged identity among them is replaced",
        bytes: "GET /bare-lf HTTP/1.1\nHost: a\nX-Client-DN: CN=forged\n\n",
        expect: Expect::Forwarded(&[("/bare-lf", "")]),
    },
    Case {
        proves: "bare LF inside a CRLF head cannot start a hidden header",
        bytes: "GET /mixed-lf HTTP/1.1\r\nHost: a\r\nX-Request-Id: 1\nX-Client-DN: CN=forged\r\n\r\n",
        expect: Expect::Forwarded(&[("/mixed-lf", "")]),
    },
    Case {
        proves: "a NUL inside a header value is refused",
        bytes: "GET /nul HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\0X-Client-DN: CN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "a bare CR inside a header value (a line break to a CR-splitting parser) is \
                 refused",
        bytes: "GET /cr HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\rX-Client-DN: CN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "`Host : x` (space before the colon) is refused",
        bytes: "GET /host-space HTTP/1.1\r\nHost : a\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "`X-Client-DN : forged` (a name that is not `x-client-dn` to a lenient parser, so \
                 it would survive the strip) is refused",
        bytes: "GET /dn-space HTTP/1.1\r\nHost: a\r\nX-Client-DN : CN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "`X-Client-DN\\t: forged` is refused as well",
        bytes: "GET /dn-tab HTTP/1.1\r\nHost: a\r\nX-Client-DN\t: CN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    // --- Chunk sizes ---
    Case {
        proves: "chunk size `0x10` is not hex-with-prefix: the body is malformed (400), the \
                 request after it never runs",
        bytes: concat!(
            "POST /chunk-0x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::AtMostHead("/chunk-0x"),
    },
    Case {
        proves: "a negative chunk size is malformed",
        bytes: concat!(
            "POST /chunk-negative HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "-1\r\nx\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::AtMostHead("/chunk-negative"),
    },
    Case {
        proves: "a chunk size that overflows 64 bits (2^64 + 5) is malformed, not wrapped to 5",
        bytes: concat!(
            "POST /chunk-overflow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::AtMostHead("/chunk-overflow"),
    },
    // --- Pipelining: a second request in the same packet ---
    Case {
        proves: "a request after a chunked body in the same packet is its own request: it \
                 reaches the upstream with our identity, never the forged one",
        bytes: concat!(
            "POST /chunked-then-more HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Forwarded(&[("/chunked-then-more", "hello"), ("/smuggled", "")]),
    },
    Case {
        proves: "a request after a Content-Length body in the same packet is its own request, \
                 with our identity",
        bytes: concat!(
            "POST /length-then-more HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            "hello",
            smuggled!()
        ),
        expect: Expect::Forwarded(&[("/length-then-more", "hello"), ("/smuggled", "")]),
    },
    Case {
        proves: "identity headers sent as chunked trailers never become headers of the \
                 forwarded request",
        bytes: concat!(
            "POST /trailer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n",
            "Trailer: X-Client-DN\r\n\r\n",
            "5\r\nhello\r\n0\r\nX-Client-DN: CN=forged\r\n\r\n"
        ),
        expect: Expect::Forwarded(&[("/trailer", "hello")]),
    },
    // --- Request line ---
    Case {
        proves: "an absolute-form target is forwarded to our upstream as its origin-form path, \
                 never to the named host",
        bytes: "GET http://evil.example/admin?x=1 HTTP/1.1\r\nHost: a\r\nX-Client-DN: CN=forged\r\n\r\n",
        expect: Expect::Forwarded(&[("/admin?x=1", "")]),
    },
    Case {
        proves: "an HTTP/0.9 request line (no version) is refused",
        bytes: "GET /http09\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "an explicit `HTTP/0.9` version is refused",
        bytes: "GET /http09 HTTP/0.9\r\nHost: a\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "an unknown version (`HTTP/1.2`) is refused",
        bytes: "GET /http12 HTTP/1.2\r\nHost: a\r\nX-Client-DN: CN=forged\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "`HTTP/2.0` in an HTTP/1 request line (no preface) is refused",
        bytes: "GET /http20 HTTP/2.0\r\nHost: a\r\n\r\n",
        expect: Expect::Refused,
    },
    Case {
        proves: "Transfer-Encoding on an HTTP/1.0 request is refused",
        bytes: concat!(
            "POST /http10-te HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            smuggled!()
        ),
        expect: Expect::Refused,
    },
];

/// What one row did, as seen by the client and the upstream.
struct Seen {
    responses: Vec<Response>,
    /// True if the connection ended (EOF or reset) rather than timing out.
    closed: bool,
    /// Requests the upstream received during the row.
    upstream_requests: usize,
}

#[test]
fn request_smuggling_and_framing_tricks_never_forward_a_hidden_or_forged_request() {
    let (env, _leaf) = Env::with_first(TestPki::server);
    let upstream = HttpUpstream::start();
    let mut sc = start(&env, &upstream.addr());
    let client = TlsClient::with_leaf(&env.pki.root.cert_pem, &env.pki.client());

    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let seen = attack(&client, &sc, &upstream, case.bytes);
        if let Err(why) = judge(case, &seen, &upstream) {
            failures.push(format!(
                "row {i} ({}): {why}\n  bytes: {:?}\n  responses: {:?}\n  upstream requests: {}",
                case.proves,
                case.bytes,
                seen.responses
                    .iter()
                    .map(|r| format!("{} {}", r.status, r.body_text().trim()))
                    .collect::<Vec<_>>(),
                seen.upstream_requests,
            ));
        }
        // The sidecar still serves a normal request, with our identity.
        if let Err(why) = normal_request(&client, &sc, i) {
            failures.push(format!("after row {i} ({}): {why}", case.proves));
        }
        assert!(
            sc.running(),
            "the sidecar exited after row {i}: {}",
            case.proves
        );
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) over {} rows:\n{}\n--- sidecar log ---\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n"),
        sc.log()
    );
}

/// `server --protocol http --allow-all --idle-timeout 2s` on `env`'s volume, ready.
fn start(env: &Env, target: &str) -> Sidecar {
    let dir = env.dir().display().to_string();
    let sc = Sidecar::server([
        "--cert-dir",
        &dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
        "--protocol",
        "http",
        "--allow-all",
        "--idle-timeout",
        "2s",
    ]);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "/readyz never 200: {}",
        sc.log()
    );
    sc
}

/// Write `bytes` in one go on a fresh connection, then read until the sidecar ends it.
fn attack(client: &TlsClient, sc: &Sidecar, upstream: &HttpUpstream, bytes: &str) -> Seen {
    let before = upstream.requests_started();
    let mut conn = client
        .connect(sc.listen_addr())
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", sc.log()));
    conn.write_all(bytes.as_bytes()).expect("write the attack");
    conn.flush().expect("flush");
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    // Let an aborted forward (a head sent before its body failed) land before counting.
    std::thread::sleep(Duration::from_millis(300));
    let mut responses = Vec::new();
    let mut cursor = Cursor::new(data);
    while let Ok(resp) = read_response(&mut cursor) {
        responses.push(resp);
    }
    Seen {
        responses,
        closed,
        upstream_requests: upstream.requests_started() - before,
    }
}

/// The echo in `resp`, if the upstream answered it (our own answers are text/plain).
fn echo_of(resp: &Response) -> Option<Echoed> {
    let json = resp
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json"));
    (resp.status == 200 && json).then(|| Echoed::parse(&resp.body))
}

/// The identity headers of one request the upstream received are ours, exactly once, and
/// no header carries the forged marker.
fn check_identity(echo: &Echoed) -> Result<(), String> {
    if echo.all("x-client-dn") != [CLIENT_DN] {
        return Err(format!(
            "{} reached the upstream with X-Client-DN {:?}, expected exactly [{CLIENT_DN:?}]",
            echo.path,
            echo.all("x-client-dn")
        ));
    }
    if echo.all("x-client-verify") != ["SUCCESS"] {
        return Err(format!(
            "{} reached the upstream with X-Client-Verify {:?}",
            echo.path,
            echo.all("x-client-verify")
        ));
    }
    for (name, values) in &echo.headers {
        if values
            .iter()
            .any(|v| v.to_ascii_lowercase().contains(FORGED))
        {
            return Err(format!(
                "{} reached the upstream with a forged header {name}: {values:?}",
                echo.path
            ));
        }
    }
    Ok(())
}

fn judge(case: &Case, seen: &Seen, upstream: &HttpUpstream) -> Result<(), String> {
    if !seen.closed {
        return Err(format!(
            "the connection was still open {:?} after the attack (--idle-timeout 2s)",
            crate::support::tls_client::IO_TIMEOUT
        ));
    }
    let echoes: Vec<Echoed> = seen.responses.iter().filter_map(echo_of).collect();
    for echo in &echoes {
        check_identity(echo)?;
    }
    match case.expect {
        Expect::Refused => {
            if seen.upstream_requests != 0 {
                return Err(format!(
                    "expected a refusal, but {} request(s) reached the upstream",
                    seen.upstream_requests
                ));
            }
            match seen.responses.as_slice() {
                [] => Ok(()),
                [resp] if resp.status == 400 => Ok(()),
                other => Err(format!(
                    "expected 400 or a close, got {:?}",
                    other.iter().map(|r| r.status).collect::<Vec<_>>()
                )),
            }
        }
        Expect::Forwarded(expected) => {
            if seen.upstream_requests != expected.len() {
                return Err(format!(
                    "expected {} request(s) at the upstream, it received {}",
                    expected.len(),
                    seen.upstream_requests
                ));
            }
            // Each forwarded request came back as an echo, so every one was checked above.
            let got: Vec<(&str, &str)> = echoes
                .iter()
                .map(|e| (e.path.as_str(), e.body.as_str()))
                .collect();
            if got != expected {
                return Err(format!(
                    "expected the upstream to see (path, body) {expected:?}, it answered {got:?}"
                ));
            }
            Ok(())
        }
        Expect::AtMostHead(path) => {
            // The body is the client's fault: 400 (or a close), never the upstream's answer
            // nor a 502 that blames the upstream.
            if !matches!(
                seen.responses.as_slice(),
                [] | [Response { status: 400, .. }]
            ) {
                return Err(format!(
                    "expected 400 or a close for a malformed body, got {:?}",
                    seen.responses.iter().map(|r| r.status).collect::<Vec<_>>()
                ));
            }
            match seen.upstream_requests {
                0 => Ok(()),
                1 => {
                    let last = upstream
                        .last()
                        .ok_or("the upstream counted a request but recorded none")?;
                    check_identity(&last)?;
                    if last.path != path {
                        return Err(format!(
                            "the upstream received {} instead of {path}",
                            last.path
                        ));
                    }
                    Ok(())
                }
                n => Err(format!("{n} requests reached the upstream, at most 1 may")),
            }
        }
    }
}

/// A plain `GET` on a fresh connection gets the upstream's 200 with our identity.
fn normal_request(client: &TlsClient, sc: &Sidecar, row: usize) -> Result<(), String> {
    let path = format!("/after-row-{row}");
    let resp = client.get(sc.listen_addr(), &path)?;
    let echo = echo_of(&resp)
        .ok_or_else(|| format!("GET {path}: {} {}", resp.status, resp.body_text().trim()))?;
    check_identity(&echo)?;
    if echo.path != path {
        return Err(format!("GET {path} reached the upstream as {}", echo.path));
    }
    Ok(())
}
