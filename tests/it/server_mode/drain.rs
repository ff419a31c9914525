//! `/drain` for a pod's rollout: the app container's preStop hook calls it, `/readyz` turns 503
//! (the pod leaves the Service endpoints) while the listener keeps accepting and serving, and
//! the call is answered once `--drain-delay` has passed (the hook holds the app's SIGTERM until
//! then). SIGTERM afterwards drains and exits 0 as always. `mtls-sidecar drain` is that hook for
//! images that have our binary.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::support::bin_command;
use crate::support::cli_clients::run_bounded;
use crate::support::failures::Failures;
use crate::support::sidecar::wait_until;
use crate::support::tls_client::TlsConn;

const DRAINING: &str = "not ready: draining\n";

/// Requests of a background load: how many succeeded, and what the failures said.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicUsize,
    failures: Failures,
}

impl Load {
    /// One request per new connection (the listener must keep accepting), until `stop`.
    fn run(&self, client: &TlsClient, addr: &str) {
        while !self.stop.load(Ordering::SeqCst) {
            match client.get(addr, "/") {
                Ok(r) if r.status == 200 => {
                    self.ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => self
                    .failures
                    .push(format!("HTTP {}: {}", r.status, r.body_text())),
                Err(e) => self.failures.push(e),
            }
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
}

/// A client presenting `pki.client()` that does not wait after a handshake (the drain tests
/// open many connections).
fn one_shot_client(env: &Env) -> TlsClient {
    TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&env.pki.client())
        .settle(Duration::ZERO)
        .build()
}

/// Stops the load when dropped: a failed assertion must not leave the scope's threads running
/// (the scope would wait for them forever).
struct StopOnDrop<'a>(&'a Load);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn drain_turns_readiness_off_keeps_serving_and_answers_after_the_delay() {
    let (env, _upstream, mut sc) = proxy(&["--allow-all", "--drain-delay", "2s"]);
    let delay = Duration::from_secs(2);
    let addr = sc.listen_addr().to_string();
    let client = one_shot_client(&env);
    let load = Load::default();
    let drained = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&load);
        for _ in 0..2 {
            s.spawn(|| load.run(&client, &addr));
        }
        assert!(
            sc.wait_until(WAIT, || load.ok() >= 5),
            "the load never got going"
        );
        let requested = Instant::now();
        let (sc, drained) = (&sc, &drained);
        let drain = s.spawn(move || {
            let answer = sc.get("/drain");
            drained.store(true, Ordering::SeqCst);
            (answer, requested.elapsed())
        });
        // Readiness is off while /drain holds its answer, and the admin endpoint answers
        // other requests meanwhile.
        let off = sc.wait_until(WAIT, || {
            sc.get("/readyz") == (503, DRAINING.to_string()) && !drained.load(Ordering::SeqCst)
        });
        assert!(
            off,
            "/readyz not {DRAINING:?} while /drain was held: {:?}",
            sc.get("/readyz")
        );
        assert!(sc.healthy(), "/healthz stays 200 while draining");
        let served_at_off = load.ok();
        let ((code, body), took) = drain.join().expect("drain thread");
        let served_while_draining = load.ok() - served_at_off;
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("drained"), "{body}");
        assert!(
            took >= delay,
            "/drain answered after {took:?}, before {delay:?}"
        );
        assert!(
            served_while_draining > 0,
            "no request served while /drain was held"
        );
        // Still serving after the answer (the app stops next, then SIGTERM reaches us).
        let after = load.ok();
        assert!(
            sc.wait_until(WAIT, || load.ok() > after),
            "no request served after /drain answered"
        );
    });
    let failures = load.failures.list();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(sc.get("/readyz"), (503, DRAINING.to_string()));
    // A second call answers at once (the delay is over) and logs nothing new.
    let again = sc.get("/drain");
    assert_eq!(again.0, 200, "{}", again.1);
    let logged = sc.log().matches("draining: readiness off").count();
    assert_eq!(logged, 1, "{}", sc.log());
    let status = sc.terminate();
    assert_eq!(status.code(), Some(0), "{status}\n{}", sc.log());
}

/// A drain does not close kept-alive HTTP/1 connections under their clients (a client that
/// reuses one without checking, as Python's http.client does, would fail its next request): a
/// connection's next response carries `Connection: close` and it ends after it; one that sends
/// nothing is closed about 5 s after the drain started.
#[test]
fn drain_ends_kept_alive_connections_with_their_next_response() {
    let (env, _upstream, sc) = proxy(&["--allow-all", "--drain-delay", "0s"]);
    let client = client_for(&env, &env.pki.client());
    let mut conns: Vec<TlsConn> = (0..2)
        .map(|_| client.connect(sc.listen_addr()).expect("handshake"))
        .collect();
    for conn in &mut conns {
        assert_eq!(conn.get("/before").expect("before the drain").status, 200);
    }
    let (code, body) = sc.get("/drain");
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_secs(1));
    let (mut used, mut silent) = (conns.remove(0), conns.remove(0));
    let resp = used.get("/during").unwrap_or_else(|e| {
        panic!(
            "the request after the drain began failed: {e}\n{}",
            sc.log()
        )
    });
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "no `Connection: close`: {:?}", resp.headers);
    assert!(
        used.closed_within(WAIT),
        "still open after `Connection: close`"
    );
    assert!(
        silent.closed_within(WAIT),
        "a silent kept-alive connection outlived the drain by {WAIT:?}"
    );
}

/// The app is stopped once `/drain` answers, and an app that quits gracefully waits for the
/// connections it has (nginx's SIGQUIT waits up to 60 s for one that never sent a request, and
/// the pool opens such ones): by then the sidecar holds none open, the pooled ones closed at the
/// start of the drain and a request during it got a connection that closed after it.
#[test]
fn drain_leaves_no_connection_to_the_app_open_when_it_answers() {
    let (env, upstream, mut sc) = proxy(&["--allow-all", "--drain-delay", "3s"]);
    let addr = sc.listen_addr().to_string();
    let client = one_shot_client(&env);
    let ok = |client: &TlsClient| {
        let r = client.get(&addr, "/").expect("request through the sidecar");
        assert_eq!(r.status, 200, "{}", r.body_text());
    };
    for _ in 0..3 {
        ok(&client);
    }
    assert!(
        upstream.open_connections() >= 1,
        "the sidecar keeps its connections to the app open between requests (pooled)"
    );
    std::thread::scope(|s| {
        let drain = s.spawn(|| sc.get("/drain"));
        assert!(
            sc.wait_until(WAIT, || sc.get("/readyz").0 == 503),
            "/readyz never turned 503 after /drain"
        );
        ok(&client);
        let (code, body) = drain.join().expect("drain thread");
        assert_eq!(code, 200, "{body}");
    });
    let left = upstream.open_connections();
    let closed = wait_until(Duration::from_millis(500), || {
        upstream.open_connections() == 0
    });
    assert!(
        closed,
        "{left} connection(s) to the app still open when /drain answered (the app is stopped \
         next, and would wait for them)\n{}",
        sc.log()
    );
    assert!(
        sc.log()
            .contains("connections to the app close after their request"),
        "{}",
        sc.log()
    );
    let status = sc.terminate();
    assert_eq!(status.code(), Some(0), "{status}\n{}", sc.log());
}

#[test]
fn post_drain_works_too_and_other_methods_are_refused() {
    let (_env, _upstream, sc) = proxy(&["--allow-all", "--drain-delay", "0"]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into();
    let url = format!("http://{}/drain", sc.admin_addr());
    let put = agent.put(&url).send_empty().expect("PUT /drain");
    assert_eq!(put.status().as_u16(), 405);
    assert!(sc.ready(), "a refused method started the drain");
    let mut post = agent.post(&url).send_empty().expect("POST /drain");
    assert_eq!(post.status().as_u16(), 200);
    let body = post.body_mut().read_to_string().unwrap_or_default();
    assert!(body.starts_with("drained"), "{body}");
    assert_eq!(sc.get("/readyz"), (503, DRAINING.to_string()));
}

#[test]
fn drain_command_waits_for_the_delay_and_exits_0() {
    let (_env, _upstream, sc) = proxy(&["--allow-all", "--drain-delay", "1s"]);
    let mut cmd = bin_command();
    cmd.args(["drain", "--admin", sc.admin_addr(), "--timeout", "20s"]);
    let started = Instant::now();
    let ran = run_bounded(&mut cmd, b"", Duration::from_secs(30));
    assert!(ran.success(), "{ran:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "{ran:?}");
    assert!(ran.stdout.starts_with("drained"), "{ran:?}");
    assert_eq!(sc.get("/readyz"), (503, DRAINING.to_string()));
}

#[test]
fn drain_command_without_a_sidecar_exits_1_naming_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let admin = format!("127.0.0.1:{port}");
    let mut cmd = bin_command();
    cmd.args(["drain", "--admin", &admin, "--timeout", "5s"]);
    let ran = run_bounded(&mut cmd, b"", WAIT);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains(&admin) && ran.stderr.contains("--admin-listen"),
        "{ran:?}"
    );
}
