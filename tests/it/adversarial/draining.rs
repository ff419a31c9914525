//! After SIGTERM the listener is closed and open connections drain: the pod must not be
//! ready meanwhile (`/readyz` 503, so no new traffic is routed to it), while it is still
//! alive (`/healthz` 200) and the requests in flight complete.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;

#[test]
fn readyz_is_503_while_draining_and_the_request_in_flight_completes() {
    let (env, upstream, mut sc) = http_proxy(&["--shutdown-grace", "20s"]);
    // Long enough for every check below to run while the request is still in flight.
    upstream.set_delay(Duration::from_secs(6));
    let client = client_for(&env, &env.pki.client());
    let addr = sc.listen_addr().to_string();
    let in_flight = std::thread::spawn(move || client.get(&addr, "/slow"));
    assert!(
        sc.wait_until(WAIT, || upstream.requests_started() == 1),
        "the request never reached the upstream"
    );
    sc.signal(Signal::SIGTERM);
    assert!(
        sc.wait_until(Duration::from_secs(2), || sc.get("/readyz").0 == 503),
        "/readyz still {:?} while draining\n{}",
        sc.get("/readyz"),
        sc.log()
    );
    assert!(
        sc.get("/readyz").1.contains("shutting down"),
        "{:?}",
        sc.get("/readyz")
    );
    assert_eq!(sc.get("/healthz").0, 200, "alive while draining");
    let resp = in_flight
        .join()
        .expect("client thread")
        .expect("the request in flight completes");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let status = sc.wait_exit(WAIT).expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", sc.log());
}
