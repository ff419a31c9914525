//! Running a container's processes as kubelet would: our sidecar's command line (and its
//! `run --config` file), init containers, probes, nginx, each as the container's user.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::manifests::{command_line, flag, port_of};
use super::pod::{mounts, Pod};
use super::WAIT;
use crate::deploy_manifests::{is_ours, strings};
use crate::support::cli_clients::{run_bounded, Ran};
use crate::support::procs::Reaped;
use crate::support::sidecar::{wait_until, Sidecar, INOTIFY_GATE};
use crate::support::{bin, hermetic};

/// Where `--admin-listen` and a config file's `admin-listen` default to (src/config/defaults.rs).
const ADMIN_LISTEN_DEFAULT: &str = "[::]:9901";

/// Runs `BIN run --log-format json ARGS` for `sh -c SHIM BIN SUBCOMMAND ... -- ARGS`: `Sidecar`
/// puts `--admin-listen 127.0.0.1:0 --log-format json` after the subcommand, and `run` takes no
/// `--admin-listen` (its file says where the endpoint listens). It execs, so the sidecar keeps
/// the wrapper's process (and `Sidecar` kills exactly it).
const RUN_SHIM: &str = concat!(
    r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do shift; done; shift; "#,
    r#"exec "$0" run --log-format json "$@""#
);

impl Pod {
    /// Our sidecar `c`'s command line here: (subcommand, arguments), relocated, without
    /// `--admin-listen` and `--log-format` (`Sidecar` sets them: 127.0.0.1:0, json).
    pub(super) fn sidecar_command(&self, c: &Value) -> (String, Vec<String>) {
        let argv = self.relocate_args(c, &command_line(c));
        let (sub, rest) = argv.split_first().expect("a subcommand");
        assert!(
            !sub.starts_with('-'),
            "{}: options before the subcommand are not emulated here",
            self.ex.name
        );
        let mut args = Vec::new();
        let mut it = rest.iter();
        while let Some(a) = it.next() {
            let name = a.split('=').next().unwrap_or(a);
            if matches!(name, "--admin-listen" | "--log-format") {
                if !a.contains('=') {
                    it.next();
                }
                continue;
            }
            args.push(a.clone());
        }
        (sub.clone(), args)
    }

    /// The `run --config` file of our sidecar `c` as written (parsed); None if `c` runs another
    /// subcommand. The file is a key of the generated ConfigMap whose volume `c` mounts where
    /// `--config` points; panics if there is none.
    pub(super) fn sidecar_config(&self, c: &Value) -> Option<Value> {
        let argv = command_line(c);
        if argv.first().map(String::as_str) != Some("run") {
            return None;
        }
        let path = flag(&argv, "--config")
            .unwrap_or_else(|| panic!("{}: `run` without --config", self.ex.name));
        let (at, volume) = mounts(c)
            .filter(|(at, _)| path.strip_prefix(at).is_some_and(|r| r.starts_with('/')))
            .max_by_key(|(at, _)| at.len())
            .unwrap_or_else(|| {
                panic!(
                    "{}: --config {path}: container {} mounts nothing there",
                    self.ex.name,
                    Self::name(c)
                )
            });
        let key = &path[at.len() + 1..];
        let config_map = self.ex.pod()["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{}: --config {path}: volume {volume} is no ConfigMap",
                    self.ex.name
                )
            });
        let text = self
            .ex
            .generated_config_map(config_map)
            .into_iter()
            .flatten()
            .find(|(k, _)| k == key)
            .map(|(_, text)| text)
            .unwrap_or_else(|| {
                panic!(
                    "{}: --config {path}: no configMapGenerator makes {config_map} with the \
                     file {key}",
                    self.ex.name
                )
            });
        Some(
            serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: --config {path} is not YAML: {e}", self.ex.name)),
        )
    }

    /// The admin endpoint's address as our sidecar `c`'s manifest gives it: `--admin-listen`,
    /// or the `admin-listen` of its `run --config` file; else the default.
    pub(super) fn admin_listen(&self, c: &Value) -> String {
        let given = match self.sidecar_config(c) {
            Some(config) => config["admin-listen"].as_str().map(str::to_string),
            None => flag(&command_line(c), "--admin-listen"),
        };
        given.unwrap_or_else(|| ADMIN_LISTEN_DEFAULT.to_string())
    }

    /// Start our `run --config` sidecar `c` as kubelet would (as its user), its file relocated
    /// (`relocate_sidecar_config`: the admin endpoint on `127.0.0.1:0`), and wait until it logs
    /// its admin address. The other subcommands start with `Sidecar` directly.
    pub(super) fn start_run(&self, c: &Value) -> Sidecar {
        let (sub, args) = self.sidecar_command(c);
        assert_eq!(
            sub, "run",
            "{}: the sidecar does not run `run`",
            self.ex.name
        );
        let mut wrapper = self.run_as(c);
        wrapper.extend(["/bin/sh", "-c", RUN_SHIM].map(String::from));
        let args = std::iter::once("--".to_string()).chain(args);
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        Sidecar::start_via(&wrapper, "run", args)
    }

    /// (UID, GID) container `c` runs as (its `securityContext`, else the pod's), when this test
    /// can switch users (runs as root); None otherwise.
    pub(super) fn user(&self, c: &Value) -> Option<(u32, u32)> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let pod = &self.ex.pod()["securityContext"];
        let get = |key: &str| {
            c["securityContext"][key]
                .as_u64()
                .or_else(|| pod[key].as_u64())
                .map(|id| u32::try_from(id).expect("an ID fits in u32"))
        };
        let uid = get("runAsUser").unwrap_or_else(|| {
            panic!(
                "{}: container {} sets no runAsUser (the image's USER would decide, which is \
                 not emulated here)",
                self.ex.name,
                Self::name(c)
            )
        });
        Some((uid, get("runAsGroup").unwrap_or(0)))
    }

    /// The `setpriv ... --` that runs a program as container `c`'s user, as kubelet would (its
    /// `securityContext` drops all capabilities and privilege escalation); empty when this
    /// test cannot switch users.
    pub(super) fn run_as(&self, c: &Value) -> Vec<String> {
        let Some((uid, gid)) = self.user(c) else {
            return Vec::new();
        };
        [
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            "--bounding-set=-all".to_string(),
            "--no-new-privs".to_string(),
            "--".to_string(),
        ]
        .to_vec()
    }

    /// Run init container `c` (ours) to completion, as kubelet does before the sidecars.
    pub(super) fn run_init(&self, c: &Value) -> Ran {
        assert!(
            is_ours(c),
            "{}: only our init containers are emulated",
            self.ex.name
        );
        let mut argv = self.run_as(c);
        argv.push(bin().display().to_string());
        argv.extend(self.relocate_args(c, &command_line(c)));
        run_ours(&argv)
    }

    /// The command of `c`'s exec probe `kind` (e.g. `startupProbe`) as it runs here (relocated,
    /// as `c`'s user), if it has one.
    pub(super) fn exec_probe(&self, c: &Value, kind: &str) -> Option<Vec<String>> {
        let command = strings(&c[kind]["exec"]["command"]);
        (!command.is_empty()).then(|| {
            let mut argv = self.run_as(c);
            argv.extend(self.relocate_args(c, &command));
            argv
        })
    }

    /// Wait (bounded, as kubelet retries) until probe `kind` of our sidecar `c` passes against
    /// `sc`: an httpGet probe must name the port `--admin-listen` binds and answer 200; an exec
    /// probe must exit 0. No such probe: nothing to wait for.
    pub(super) fn wait_probe(&self, c: &Value, kind: &str, sc: &Sidecar) {
        let probe = &c[kind];
        if probe.is_null() {
            return;
        }
        if let Some(get) = probe.get("httpGet") {
            let admin = port_of(&self.admin_listen(c));
            let port = self.container_port(&get["port"]);
            assert_eq!(
                port,
                admin,
                "{}: {} {kind} probes port {port}, but the admin endpoint binds {admin}",
                self.ex.name,
                Self::name(c)
            );
            let path = get["path"].as_str().expect("httpGet path");
            assert!(
                wait_until(WAIT, || sc.get(path).0 == 200),
                "{}: {kind} GET {path} never answered 200: {:?}",
                self.ex.name,
                sc.get(path)
            );
        } else if let Some(argv) = self.exec_probe(c, kind) {
            let mut last = None;
            let passed = wait_until(WAIT, || {
                let ran = run_ours(&argv);
                let ok = ran.success();
                if !ok {
                    std::thread::sleep(Duration::from_millis(100));
                }
                last = Some(ran);
                ok
            });
            assert!(
                passed,
                "{}: {kind} `{}` never passed; last: {last:?}",
                self.ex.name,
                argv.join(" ")
            );
        } else {
            panic!(
                "{}: {kind}: only httpGet and exec probes are emulated",
                self.ex.name
            );
        }
    }

    /// kubelet's probes of a running sidecar: startup, then readiness and liveness.
    pub(super) fn wait_probes(&self, c: &Value, sc: &Sidecar) {
        for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
            self.wait_probe(c, kind, sc);
        }
    }

    /// nginx's command line in container `c`, here (program first, as `c`'s user): relocated,
    /// with `-e stderr`, and without `-c` the image's main config.
    pub(super) fn nginx_command(&self, c: &Value) -> Vec<String> {
        let cmd = command_line(c);
        assert_eq!(
            cmd.first().map(String::as_str),
            Some("nginx"),
            "{}: container {} does not start nginx",
            self.ex.name,
            Self::name(c)
        );
        let mut argv = self.relocate_args(c, &cmd);
        if !argv.iter().any(|a| a == "-c") {
            argv.extend(["-c".to_string(), self.path(c, "/etc/nginx/nginx.conf")]);
        }
        argv.splice(1..1, ["-e".to_string(), "stderr".to_string()]);
        let mut command = self.run_as(c);
        command.extend(argv);
        command
    }

    /// Start nginx as container `c` runs it, a child of the test (stopped on drop).
    pub(super) fn spawn_nginx(&self, c: &Value) -> Reaped {
        let argv = self.nginx_command(c);
        Reaped(
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(self.create_log(c, "stdout"))
                .stderr(self.create_log(c, "stderr"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}")),
        )
    }
}

/// Run one of our command lines (program first), hermetic (no `MTLS_SIDECAR_*` of ours).
pub(super) fn run_ours(argv: &[String]) -> Ran {
    let mut cmd = Command::new(&argv[0]);
    hermetic(&mut cmd).args(&argv[1..]);
    run_bounded(&mut cmd, b"", Duration::from_secs(30))
}
