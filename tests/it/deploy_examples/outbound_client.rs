//! outbound-client (walkthrough step 8): a plaintext app calling the API through `client`.

use std::process::Command;
use std::time::Duration;

use super::manifests::{command_line, flag, Example};
use super::pod::Pod;
use super::terminate_legacy_app::{assert_legacy_answer, LegacyApp};
use super::{assert_all_gone, assert_runs_as, processes, tools, WEB_APP_DN};
use crate::support::cli_clients::run_bounded;
use crate::support::pki::TestPki;
use crate::support::sidecar::{Sidecar, INOTIFY_GATE};

/// Start the pod's `client` sidecar as kubelet would, and wait for its probes (the app starts
/// once the startup probe, `/readyz`, passed): the sidecar, and its arguments here.
pub(super) fn start_client_sidecar(pod: &Pod) -> (Sidecar, Vec<String>) {
    let sidecar = pod.ex.sidecar();
    let (sub, mut args) = pod.sidecar_command(sidecar);
    assert_eq!(sub, "client", "outbound-client runs `client`");
    // The manifest dials the Service by name, so that name is the one verified (and the SNI);
    // here the target is an address, so the name is said explicitly.
    let target = flag(&command_line(sidecar), "--target").expect("client --target");
    if flag(&args, "--server-name").is_none() {
        let host = target.rsplit_once(':').expect("host:port").0;
        args.push(format!("--server-name={host}"));
    }
    let client = {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        Sidecar::start_via(&pod.run_as(sidecar), "client", &args)
    };
    pod.wait_probes(sidecar, &client);
    (client, args)
}

#[test]
fn carries_the_app_call_to_the_legacy_app_as_web_app() {
    if !tools(&["nginx", "curl", "openssl"]) {
        return;
    }
    let pki = TestPki::new();
    let legacy = LegacyApp::start(&pki);
    let mut pod = Pod::new(Example::load("outbound-client"), &pki);
    pod.resolve_service_of(&legacy.pod);

    let sidecar = pod.ex.sidecar();
    let (client, _) = start_client_sidecar(&pod);
    let context = || {
        format!(
            "--- client sidecar ---\n{}\n{}",
            client.log(),
            legacy.context()
        )
    };

    // The app's loop, once: its `curl ... URL` (the shell around it is the loop).
    let app = pod.ex.app();
    let command = command_line(app);
    let script = command.last().expect("the app's command");
    let call = script
        .split(';')
        .map(|part| part.trim())
        .map(|part| part.strip_prefix("do ").unwrap_or(part))
        .find(|part| part.starts_with("curl "))
        .unwrap_or_else(|| panic!("no curl in the app's command {command:?}"));
    assert!(
        !call.contains(['"', '\'', '$']),
        "the app's curl needs a shell to read: {call}"
    );
    // Its `--max-time` bounds each call of the pod's endless loop; here `run_bounded` bounds the
    // one call, more generously, so a busy CI machine is not mistaken for a broken example.
    let mut words: Vec<String> = Vec::new();
    let mut it = call.split_whitespace();
    while let Some(word) = it.next() {
        match word {
            "--max-time" | "-m" => {
                it.next();
            }
            w if w.starts_with("--max-time=") => {}
            w => words.push(w.to_string()),
        }
    }
    let mut argv = pod.run_as(app);
    argv.extend(pod.relocate_args(app, &words));
    let ran = run_bounded(
        Command::new(&argv[0]).args(&argv[1..]),
        b"",
        Duration::from_secs(30),
    );
    assert!(
        ran.success(),
        "`{}`: {ran:?}\n{}",
        argv.join(" "),
        context()
    );
    let web_app = pod.leaf("client-tls").clone();
    assert_legacy_answer(&ran.stdout, WEB_APP_DN, &web_app, &context);

    let procs = processes(&[client.pid()]);
    assert_runs_as(&pod, sidecar, &procs, "mtls-sidecar");
    drop(client);
    assert_all_gone(&procs);
    legacy.stop();
}
