//! The shipped examples under `deploy/examples/`, run for real on this machine the way the
//! README's walkthrough uses them (steps 6 to 9, and the bidirectional service), so a broken
//! example config or manifest argument fails here and not in a cluster. There is no Kubernetes
//! here: a pod is emulated by running its containers' processes side by side on 127.0.0.1, each
//! with the command line its manifest gives (read from the YAML as `deploy_manifests` parses it)
//! and the config files its kustomization generates, moving only what has to move:
//!
//! - Volumes become temp dirs. A Secret holds a leaf that `TestPki`'s root issues for the
//!   `Certificate` of `deploy/` with that `secretName` (its CN, DNS names, URI SANs, O, OU and
//!   usages: the guide's identities), and the root as `ca.crt`; the CA bundle ConfigMap
//!   (trust-manager's `Bundle` target) holds the root; a generated ConfigMap holds the example's
//!   files; all three are written the way kubelet writes them (`KubeletVolume`). An emptyDir is a
//!   plain dir.
//! - Paths move through *the using container's own* volumeMounts: a config that reads a path its
//!   container does not mount fails here as it would in the pod. The only files taken from an
//!   image are our binary (`/mtls-sidecar`) and, for an nginx started without `-c`, the nginx
//!   image's main config (`IMAGE_NGINX_CONF`). `/dev/stdout` and `/dev/stderr` stay.
//! - Ports become free ports on 127.0.0.1, one mapping per pod, applied alike to our sidecars'
//!   flags, nginx's `listen` and `proxy_pass`, and the container port a Service targets; a
//!   Service name (`api.production.svc.cluster.local:443`) resolves to the pod behind it.
//! - Our admin endpoint moves to `127.0.0.1:0` (`Sidecar` sets `--admin-listen` and
//!   `--log-format json`); the test runs kubelet's probes against it, after checking that they
//!   name the port `--admin-listen` binds.
//! - A `run --config` file (from the kustomization's configMapGenerator, mounted where `--config`
//!   points) moves key by key as flags do: `admin-listen` to `127.0.0.1:0` (the probes must name
//!   the port the file gives), listener and watch addresses through the pod's ports and cluster
//!   DNS, set and watch paths through the sidecar's own mounts.
//! - nginx gets `-e stderr`: the image's compiled-in error log is a link to stderr, and this
//!   machine's should stay untouched.
//! - Users: when the test runs as root (as CI does), every process runs as its container's
//!   `securityContext` says (`runAsUser`, `runAsGroup`), without capabilities or new privileges
//!   (`setpriv`), on volumes with kubelet's modes (directories 0755, an emptyDir 0777). So `watch`
//!   signals nginx and nginx reads the staged `tls.key` (0640) only because the manifests give
//!   both one UID, and an nginx config that writes outside its volumes fails. Otherwise
//!   everything runs as the current user.
//!
//! Every test stops every process it started, also when it fails, and checks that none is
//! left. Nothing is timed: conditions are waited for, within `WAIT`.
//!
//! - `terminate_legacy_app`, `nginx_reload`, `outbound_client`, `bidirectional`: one file per
//!   example, its tests
//! - `rollout`: a rolling update of terminate-legacy-app and of bidirectional under traffic,
//!   kubelet running the app's preStop hook (`/drain`) before it stops the app and then the
//!   sidecar, the endpoints following the sidecar's readiness; and the same without the hook,
//!   as a control
//! - `ca_rotation`: docs/ca-rotation.md replayed on terminate-legacy-app called by
//!   outbound-client under traffic (trust the new root, re-issue the leaves, untrust the old
//!   root); and the old root removed first, as a control (refused, nothing breaks)
//! - `manifests`: the examples as written; `pod`: one pod here (volumes, Service, logs);
//!   `relocate`: paths, ports, nginx configs and `run --config` files moved here; `run`:
//!   containers run as kubelet would (command lines, init containers, probes, users)

mod bidirectional;
mod ca_rotation;
mod manifests;
mod nginx_reload;
mod outbound_client;
mod pod;
mod relocate;
mod rollout;
mod run;
mod terminate_legacy_app;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::cli_clients::{curl, CurlResult};
use crate::support::pki::{Eku, Leaf, LeafSpec};
use crate::support::procs::{descendants, uid, ProcId};
use crate::support::require_tool;
use crate::support::sidecar::wait_until;

use pod::{Pod, Service};

/// Upper bound for anything that should happen "soon" (start-up, a probe, a reload).
const WAIT: Duration = Duration::from_secs(20);

/// The guide's client identity (`web-app-client-cert`) as RFC 2253, as both our `server` and
/// nginx pass it on in `X-Client-DN`.
const WEB_APP_DN: &str = "CN=web-app,OU=Web Services,O=Example Org";

/// web-app's client certificate as a workload of another namespace could get it from a
/// ClusterIssuer: the guide's CN, O and OU, client auth, but that namespace's URI SAN. The
/// examples authorise by URI, so it must be refused.
fn impostor_spec() -> LeafSpec {
    LeafSpec::new()
        .cn("web-app")
        .subject_o("Example Org")
        .subject_ou("Web Services")
        .uris(&["spiffe://cluster.local/ns/batch/sa/web-app"])
        .eku(Eku::Client)
}

/// True if every tool is on PATH (each one checked with `require_tool`, which fails in CI), and
/// `setpriv` too when processes switch users (as root).
fn tools(names: &[&str]) -> bool {
    names.iter().all(|name| require_tool(name))
        && (!nix::unistd::geteuid().is_root() || require_tool("setpriv"))
}

// === Clients, as in the walkthrough ===

/// The guide's client files in `dir`: `client.crt`, `client.key` and `ca.crt`.
fn client_files(dir: &Path, leaf: &Leaf, ca_pem: &str) -> PathBuf {
    fs::write(dir.join("client.crt"), &leaf.chain_pem).expect("write client.crt");
    fs::write(dir.join("client.key"), &leaf.key_pkcs8_pem).expect("write client.key");
    fs::write(dir.join("ca.crt"), ca_pem).expect("write ca.crt");
    dir.to_path_buf()
}

/// The walkthrough's call: `curl --cert client.crt --key client.key --cacert ca.crt
/// https://SERVICE/` in `dir` (which holds those files; with `with_cert` false, only `ca.crt`),
/// `--resolve` sending the Service's name to the pod's port here (behind Service port 443, the
/// URL's); then `extra`.
fn walkthrough_curl(dir: &Path, svc: &Service, with_cert: bool, extra: &[&str]) -> CurlResult {
    walkthrough_curl_path(dir, svc, "/", with_cert, extra)
}

/// `walkthrough_curl` for `https://SERVICE{path}`.
fn walkthrough_curl_path(
    dir: &Path,
    svc: &Service,
    path: &str,
    with_cert: bool,
    extra: &[&str],
) -> CurlResult {
    let port = svc.port(443);
    let resolve = format!("{}:{port}:127.0.0.1", svc.host);
    let url = format!("https://{}:{port}{path}", svc.host);
    let mut args = vec!["--cacert", "ca.crt", "--resolve", &resolve];
    if with_cert {
        args.extend(["--cert", "client.crt", "--key", "client.key"]);
    }
    args.extend_from_slice(extra);
    args.push(&url);
    curl(dir, &args)
}

// === Processes ===

/// Every process among `roots` and their descendants, now.
fn processes(roots: &[u32]) -> Vec<ProcId> {
    roots
        .iter()
        .flat_map(|root| std::iter::once(*root).chain(descendants(*root)))
        .filter_map(ProcId::of)
        .collect()
}

/// Every process in `procs` named `comm` runs as container `c`'s user (when users switch here).
fn assert_runs_as(pod: &Pod, c: &Value, procs: &[ProcId], comm: &str) {
    let Some((want, _)) = pod.user(c) else {
        return;
    };
    let found: Vec<(u32, Option<u32>)> = procs
        .iter()
        .filter(|p| p.comm == comm)
        .map(|p| (p.pid, uid(p.pid)))
        .collect();
    assert!(
        !found.is_empty() && found.iter().all(|(_, got)| *got == Some(want)),
        "{}: {comm} should run as UID {want} (container {}): (pid, uid) {found:?}",
        pod.ex.name,
        Pod::name(c)
    );
}

/// Wait until none of `procs` exists any more.
fn assert_all_gone(procs: &[ProcId]) {
    assert!(
        wait_until(WAIT, || procs.iter().all(|p| !p.exists())),
        "left behind: {:?}",
        procs.iter().filter(|p| p.exists()).collect::<Vec<_>>()
    );
}
