//! nginx as our users' guide configures it: TLS with the mounted Secret (`tls.crt`, `tls.key`),
//! client certificates required and verified against its `ca.crt`. `Nginx::spawn` starts it as
//! a child of the test; `Nginx::pid_namespace_wrapper` is a `Sidecar::start_via` wrapper that
//! starts it inside a fresh PID namespace together with the sidecar, so `--process-name nginx`
//! sees this test's nginx only; `pid_namespace_wrapper_for` does the same for any command line
//! (nginx as a manifest starts it), started when the test says so, as kubelet starts a pod's
//! app once its sidecar is up. `served_serial` reads the certificate it serves.
//! Callers check `require_tool("nginx")` (and `openssl` for `served_serial`) first.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cli_clients::run_bounded;
use super::procs::{comm, descendants, parent, Reaped};

/// In the background: wait until nginx's configuration loads (`nginx -t` reads the certificate
/// files: when nginx reads `--stage-dir`, they appear only once the sidecar staged the first
/// bundle), then become nginx. Meanwhile exec the rest of the command line (the sidecar), so
/// the sidecar is PID 1 of the namespace and the nginx master's parent.
const PID_NAMESPACE_SCRIPT: &str = r#"(
  until nginx -t -q -c "$NGINX_CONF" -p "$NGINX_PREFIX" 2>"$NGINX_PREFIX/config-test.log"; do
    sleep 0.05
  done
  exec nginx -c "$NGINX_CONF" -p "$NGINX_PREFIX" 2>>"$NGINX_PREFIX/stderr.log"
) &
exec "$0" "$@""#;

/// An nginx configuration in a work directory (conf, pid file, error log), on a free port.
#[derive(Debug)]
pub struct Nginx {
    work: PathBuf,
    port: u16,
}

impl Nginx {
    /// Write `work/nginx.conf` serving the credentials in `vol` on 127.0.0.1 and a free port.
    pub fn configure(work: &Path, vol: &Path) -> Nginx {
        fs::create_dir_all(work).unwrap_or_else(|e| panic!("mkdir {}: {e}", work.display()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let nginx = Nginx {
            work: work.to_path_buf(),
            port,
        };
        fs::write(nginx.conf(), nginx_conf(work, vol, port)).expect("write nginx.conf");
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn conf(&self) -> PathBuf {
        self.work.join("nginx.conf")
    }

    /// Written by the master; inside a PID namespace it holds the namespace's PID.
    pub fn pid_file(&self) -> PathBuf {
        self.work.join("nginx.pid")
    }

    /// `error.log` (level notice) so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.work.join("error.log")).unwrap_or_default()
    }

    /// The `signal 1 (SIGHUP) received from PID, reconfiguring` lines of `error.log`: nginx
    /// logs one in every process that gets a SIGHUP, prefixed with that process's `PID#TID:`.
    pub fn sighup_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains("signal 1 (SIGHUP) received"))
            .map(str::to_string)
            .collect()
    }

    /// What nginx wrote to stderr, and the last failed `nginx -t` (only when started through
    /// `pid_namespace_wrapper`).
    pub fn stderr(&self) -> String {
        let read = |name| fs::read_to_string(self.work.join(name)).unwrap_or_default();
        format!(
            "{}(last nginx -t: {})",
            read("stderr.log"),
            read("config-test.log")
        )
    }

    /// Start nginx (daemon off: a master and 2 workers) as a child of the test.
    pub fn spawn(&self) -> Reaped {
        Reaped(
            Command::new("nginx")
                .arg("-c")
                .arg(self.conf())
                .arg("-p")
                .arg(&self.work)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx"),
        )
    }

    /// A `Sidecar::start_via` wrapper: `env NGINX_CONF=.. NGINX_PREFIX=.. unshare --pid --fork
    /// --mount-proc --kill-child -- /bin/sh -c SCRIPT`. In the new PID namespace (with its own
    /// /proc), the shell starts nginx in the background, once its configuration loads, and execs
    /// the sidecar as PID 1. Killing the sidecar ends the namespace and nginx with it; killing
    /// unshare kills the sidecar (`--kill-child`).
    pub fn pid_namespace_wrapper(&self) -> Vec<OsString> {
        let var = |name: &str, value: &Path| {
            let mut s = OsString::from(format!("{name}="));
            s.push(value);
            s
        };
        vec![
            "env".into(),
            var("NGINX_CONF", &self.conf()),
            var("NGINX_PREFIX", &self.work),
            "unshare".into(),
            "--pid".into(),
            "--fork".into(),
            "--mount-proc".into(),
            "--kill-child".into(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            PID_NAMESPACE_SCRIPT.into(),
        ]
    }
}

/// A `Sidecar::start_via` wrapper for an app given by its whole command line (`app`, program
/// first): `unshare --pid --fork --mount-proc --kill-child -- /bin/sh -c SCRIPT`. In the new PID
/// namespace a background shell waits until `start_file` exists, then execs `app` with its
/// stdout and stderr appended to `stdout` and `stderr`; meanwhile the sidecar is exec'd as PID 1
/// (the app's parent). The test creates `start_file` when kubelet would start the app (after
/// the sidecar started and its startup probe passed): the test runs the probes itself, so no
/// second `mtls-sidecar` process ever runs under the wrapper (`Sidecar` looks for exactly one).
/// Killing the sidecar ends the namespace and the app with it.
pub fn pid_namespace_wrapper_for(
    app: &[String],
    start_file: &Path,
    stdout: &Path,
    stderr: &Path,
) -> Vec<OsString> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let path = |p: &Path| {
        quote(
            p.to_str()
                .unwrap_or_else(|| panic!("{} is not UTF-8", p.display())),
        )
    };
    let app: Vec<String> = app.iter().map(|a| quote(a)).collect();
    let script = format!(
        "(\n  until [ -e {start} ]; do sleep 0.05; done\n  exec {app} >>{stdout} 2>>{stderr}\n) &\n\
         exec \"$0\" \"$@\"",
        start = path(start_file),
        app = app.join(" "),
        stdout = path(stdout),
        stderr = path(stderr),
    );
    [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
    ]
    .into_iter()
    .map(OsString::from)
    .chain([OsString::from(script)])
    .collect()
}

/// nginx as in our users' guide: TLS with the Secret in `vol`, client certificates required.
fn nginx_conf(work: &Path, vol: &Path, port: u16) -> String {
    format!(
        r#"daemon off;
worker_processes 2;
pid {pid};
error_log {dir}/error.log notice;
events {{}}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {vol}/tls.crt;
    ssl_certificate_key {vol}/tls.key;
    ssl_client_certificate {vol}/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 2;
    location / {{ return 200 "ok\n"; }}
  }}
}}
"#,
        pid = work.join("nginx.pid").display(),
        dir = work.display(),
        vol = vol.display(),
    )
}

/// Configure and start nginx for `vol` in `work`: (the running nginx, its port).
pub fn start_nginx(work: &Path, vol: &Path) -> (Reaped, u16) {
    let nginx = Nginx::configure(work, vol);
    (nginx.spawn(), nginx.port())
}

/// The nginx masters among the descendants of `root` (nginx processes whose parent is not
/// nginx), as PIDs seen from the test.
pub fn masters_under(root: u32) -> Vec<u32> {
    let nginx = |pid: u32| comm(pid).as_deref() == Some("nginx");
    descendants(root)
        .into_iter()
        .filter(|pid| nginx(*pid) && !parent(*pid).is_some_and(nginx))
        .collect()
}

/// The serial of the certificate served on 127.0.0.1:`port`, read with `openssl s_client`
/// (None if nothing answered within 10 s or no certificate came back).
pub fn served_serial(port: u16) -> Option<String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    let out = run_bounded(&mut cmd, b"", Duration::from_secs(10)).stdout;
    let start = out.find("-----BEGIN CERTIFICATE-----")?;
    let end = out.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let (_, der) = x509_parser::pem::parse_x509_pem(&out.as_bytes()[start..end]).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der.contents).ok()?;
    Some(
        hex::encode(cert.raw_serial())
            .trim_start_matches("00")
            .to_string(),
    )
}
