//! `Sidecar`: a running `mtls-sidecar watch` (or `server`, whose proxy listener address
//! `listen_addr()` gives) with its admin endpoint on an ephemeral port, killed on Drop
//! (also when the test panics, after printing its log). Helpers read `/status`, `/readyz`
//! and `/metrics` (label-order-insensitive series lookup). `start_via` runs it through a
//! wrapper command (`setpriv ...` to drop privileges, `unshare --pid --fork ...` for a PID
//! namespace shared with an app); `pid()` is then the sidecar's own process, found among the
//! wrapper's descendants if the wrapper forks.
//! `run_config` starts `run --config FILE`; `listener(name)` and `set_named(name)` look up one
//! of its listeners and sets.
//! `ExecCounter` is the trailing `-- /bin/sh -c ...` action that appends one line per run.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::bin;
use super::prom::{parse_metrics, parse_series};

/// Held for reading while a process creates its inotify instance; held for writing while
/// `fs.inotify.max_queued_events` is lowered (see `inotify.rs`), so that only the process
/// meant to get a tiny queue is started in that window.
pub static INOTIFY_GATE: RwLock<()> = RwLock::new(());

/// How long to wait for the admin endpoint to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// No wrapper: `start_via(NO_WRAPPER, ..)` runs the binary itself.
const NO_WRAPPER: &[&str] = &[];

/// A running `mtls-sidecar watch` or `server`. See the module docs.
pub struct Sidecar {
    /// The process we spawned: the sidecar, or the wrapper that runs it.
    child: Child,
    /// The sidecar's own process: `child`'s PID, or a descendant of a forking wrapper.
    pid: u32,
    /// A pidfd for `pid` when it is not `child`, so Drop kills exactly that process.
    pidfd: Option<OwnedFd>,
    addr: String,
    agent: ureq::Agent,
    dir: TempDir,
    /// The proxy listener's `host:port` (`server` only).
    listen: Option<String>,
}

impl Sidecar {
    /// Start `mtls-sidecar watch --admin-listen 127.0.0.1:0 --log-format json ARGS...`
    /// and wait (bounded) until it logs its admin address.
    pub fn watch<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Sidecar {
        Self::watch_via(NO_WRAPPER, args)
    }

    /// `watch` run through `wrapper` (see `start_via`).
    pub fn watch_via<W: AsRef<OsStr>, S: AsRef<OsStr>>(
        wrapper: &[W],
        args: impl IntoIterator<Item = S>,
    ) -> Sidecar {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        let sidecar = Self::start_via(wrapper, "watch", args);
        // Keep the gate until its inotify instance exists (it normally does by now).
        let pid = sidecar.pid();
        wait_until(Duration::from_secs(2), || {
            super::inotify::inotify_fds(pid) > 0
        });
        sidecar
    }

    /// `watch` without taking `INOTIFY_GATE` (for callers that hold it for writing).
    pub fn watch_ungated<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Sidecar {
        Self::start("watch", args)
    }

    /// Start `mtls-sidecar server --admin-listen 127.0.0.1:0 --log-format json ARGS...` (give it
    /// `--listen 127.0.0.1:0`) and wait (bounded) until it logs its admin address and the
    /// `listener bound` line of listener `server`: `listen_addr()` is then known.
    pub fn server<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Sidecar {
        Self::server_via(NO_WRAPPER, args)
    }

    /// `server` run through `wrapper` (see `start_via`), waiting as `server` does.
    pub fn server_via<W: AsRef<OsStr>, S: AsRef<OsStr>>(
        wrapper: &[W],
        args: impl IntoIterator<Item = S>,
    ) -> Sidecar {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        let mut sidecar = Self::start_via(wrapper, "server", args);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(addr) = listener_address(&sidecar.log(), "server") {
                sidecar.listen = Some(addr);
                return sidecar;
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!(
                    "mtls-sidecar exited during startup ({status}):\n{}",
                    sidecar.all_output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no `listener bound` log line for listener `server` within \
                     {STARTUP_TIMEOUT:?}:\n{}",
                    sidecar.all_output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start `mtls-sidecar SUBCOMMAND --admin-listen 127.0.0.1:0 --log-format json ARGS...`
    /// and wait (bounded) until it logs its admin address.
    pub fn start<S: AsRef<OsStr>>(subcommand: &str, args: impl IntoIterator<Item = S>) -> Sidecar {
        Self::start_via(NO_WRAPPER, subcommand, args)
    }

    /// `start` through a wrapper: runs `WRAPPER... BIN SUBCOMMAND --admin-listen 127.0.0.1:0
    /// --log-format json ARGS...`, where WRAPPER is a program and its arguments that end up
    /// running the rest of the command line (`setpriv ... --`, `unshare ... -- sh -c '... exec
    /// "$0" "$@"'`). The wrapper must exec the sidecar or die with it: Drop kills the sidecar
    /// (through a pidfd when the wrapper forked) and then the wrapper.
    pub fn start_via<W: AsRef<OsStr>, S: AsRef<OsStr>>(
        wrapper: &[W],
        subcommand: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Sidecar {
        let head = [
            subcommand,
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        Self::launch(wrapper, &head, args)
    }

    /// Start `mtls-sidecar run --log-format json --config FILE` (the file should say
    /// `admin-listen: 127.0.0.1:0`) and wait (bounded) until it logs its admin address and
    /// every listener of the file is bound (see `listener`).
    pub fn run_config(config: &Path) -> Sidecar {
        let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
        let head = ["run", "--log-format", "json", "--config"];
        let sidecar = Self::launch(NO_WRAPPER, &head, [config]);
        // Keep the gate until its inotify instance exists (it normally does by now).
        let pid = sidecar.pid();
        wait_until(Duration::from_secs(2), || {
            super::inotify::inotify_fds(pid) > 0
        });
        sidecar
    }

    fn launch<W: AsRef<OsStr>, S: AsRef<OsStr>>(
        wrapper: &[W],
        head: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir for sidecar logs");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let stdout = fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin());
                cmd
            }
        };
        // Hermetic: every flag also reads MTLS_SIDECAR_<FLAG>, so drop any from our env.
        super::hermetic(&mut cmd)
            .args(head)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut sidecar = Sidecar {
            pid: child.id(),
            pidfd: None,
            child,
            addr: String::new(),
            agent,
            dir,
            listen: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(addr) = admin_address(&sidecar.log()) {
                sidecar.addr = addr;
                if !wrapper.is_empty() {
                    sidecar.find_own_process();
                }
                return sidecar;
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!(
                    "mtls-sidecar exited during startup ({status}):\n{}",
                    sidecar.all_output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no `admin endpoint listening` log line within {STARTUP_TIMEOUT:?}:\n{}",
                    sidecar.all_output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Once the sidecar runs through a wrapper (it logged its admin address), find its process:
    /// `child` itself if the wrapper exec'd it, else the one descendant that runs `bin()`.
    fn find_own_process(&mut self) {
        let child = self.child.id();
        let bin = bin();
        if super::procs::runs(child, &bin) {
            return;
        }
        let mine = || {
            super::procs::descendants(child)
                .into_iter()
                .filter(|pid| super::procs::runs(*pid, &bin))
                .collect::<Vec<_>>()
        };
        let found = mine();
        let [pid] = found[..] else {
            panic!(
                "expected one {} process under wrapper pid {child}, found {found:?}:\n{}",
                bin.display(),
                self.all_output()
            );
        };
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("a PID is positive");
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
        // Opened after the lookup: check the pidfd is not for a recycled PID.
        assert_eq!(mine(), [pid], "the sidecar under pid {child} changed");
        self.pid = pid;
        self.pidfd = Some(pidfd);
    }

    /// The sidecar's own process (not the wrapper's, if it was started through one).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `host:port` of the admin endpoint.
    pub fn admin_addr(&self) -> &str {
        &self.addr
    }

    /// `host:port` of the proxy listener (from its `listener bound` log line). Panics for a
    /// sidecar not started with `Sidecar::server`.
    pub fn listen_addr(&self) -> &str {
        self.listen
            .as_deref()
            .expect("listen_addr() needs a sidecar started with Sidecar::server")
    }

    /// The address listener `name` is bound on now: its latest `listener bound` log line
    /// (a listener a config change moved binds again), None before it is bound.
    pub fn listener(&self, name: &str) -> Option<String> {
        self.log()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"] == "listener bound" && v["fields"]["listener"] == name)
            .and_then(|v| v["fields"]["address"].as_str().map(str::to_string))
    }

    /// `listener(name)`, waiting (bounded) until it is bound; panics with the log if it is not.
    pub fn wait_listener(&self, name: &str) -> String {
        let mut addr = None;
        wait_until(STARTUP_TIMEOUT, || {
            addr = self.listener(name);
            addr.is_some()
        });
        addr.unwrap_or_else(|| {
            panic!(
                "no `listener bound` log line for listener `{name}` within {STARTUP_TIMEOUT:?}:\n{}",
                self.all_output()
            )
        })
    }

    /// The entry of set `name` in `/status` (`Value::Null` if there is none).
    pub fn set_named(&self, name: &str) -> Value {
        let status = self.status();
        status["sets"]
            .as_array()
            .and_then(|sets| sets.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Stderr so far: the JSON log lines.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Stdout so far (the exec action's children inherit it).
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    fn all_output(&self) -> String {
        format!(
            "--- stderr ---\n{}--- stdout ---\n{}",
            self.log(),
            self.stdout()
        )
    }

    /// `GET path` on the admin endpoint: (status code, body). Panics if the request fails.
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.addr);
        match self.agent.get(&url).call() {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                (code, body)
            }
            Err(e) => panic!("GET {url} failed: {e}\n{}", self.all_output()),
        }
    }

    /// `GET /status` parsed.
    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "/status answered {code}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// `sets[0]` of `/status`.
    pub fn set(&self) -> Value {
        self.status()["sets"][0].clone()
    }

    /// `sets[0].generation`.
    pub fn generation(&self) -> u64 {
        let set = self.set();
        set["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric generation in {set}"))
    }

    /// `sets[0].serial` (None before the first valid bundle).
    pub fn serial(&self) -> Option<String> {
        self.set()["serial"].as_str().map(str::to_string)
    }

    /// `sets[0].sha256` (None before the first valid bundle).
    pub fn sha256(&self) -> Option<String> {
        self.set()["sha256"].as_str().map(str::to_string)
    }

    /// `sets[0].last_error.reason`, if there is a last error.
    pub fn last_error_reason(&self) -> Option<String> {
        self.set()["last_error"]["reason"]
            .as_str()
            .map(str::to_string)
    }

    /// `/readyz` answered 200.
    pub fn ready(&self) -> bool {
        self.get("/readyz").0 == 200
    }

    /// `/healthz` answered 200.
    pub fn healthy(&self) -> bool {
        self.get("/healthz").0 == 200
    }

    /// `GET /metrics` body.
    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        body
    }

    /// The value of one exact series, e.g. `mtls_sidecar_reloads_total{set="default",result="success"}`
    /// (label order does not matter; the label set must be exactly equal).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (name, labels) = parse_series(series).unwrap_or_else(|| panic!("bad series {series}"));
        parse_metrics(&self.metrics())
            .into_iter()
            .find(|s| s.name == name && s.labels == labels)
            .map(|s| s.value)
    }

    /// `metric(series)`, 0 when the series is absent (a counter never incremented).
    pub fn counter(&self, series: &str) -> f64 {
        self.metric(series).unwrap_or(0.0)
    }

    /// Sum of every series of `name` whose labels include all of `labels`.
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        parse_metrics(&self.metrics())
            .into_iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Poll `cond` every 20 ms until it holds (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, cond: impl FnMut() -> bool) -> bool {
        wait_until(timeout, cond)
    }

    /// CPU time (user + system) the process used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read stat");
        // Fields after the `(comm)`; utime and stime are fields 14 and 15 (1-based).
        let after = &stat[stat.rfind(')').expect("stat has comm") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on every Linux ABI we run on.
        Duration::from_millis(ticks * 10)
    }

    /// Peak resident set size (`VmHWM`) in KiB, from `/proc/PID/status`.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send `signal` to the process (e.g. `Signal::SIGTERM`) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("send signal");
    }

    /// Wait up to `timeout` for the process to exit: its status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sidecar") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM and wait (up to 10 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.pid() as i32);
        kill(pid, Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sidecar") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "mtls-sidecar did not exit within 10 s of SIGTERM:\n{}",
                    self.all_output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== mtls-sidecar output (pid {}) ===\n{}",
                self.pid(),
                self.all_output()
            );
        }
        if let Some(pidfd) = &self.pidfd {
            // The wrapper forked: kill the sidecar first, give the wrapper a moment to notice
            // and exit (unshare --fork does), then kill the wrapper if it is still there.
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            wait_until(Duration::from_secs(3), || {
                !matches!(self.child.try_wait(), Ok(None))
            });
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Poll `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fields.address` of the `admin endpoint listening` JSON log line.
fn admin_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "admin endpoint listening")
        .and_then(|v| v["fields"]["address"].as_str().map(str::to_string))
}

/// `fields.address` of the `listener bound` JSON log line of listener `name`.
fn listener_address(log: &str, name: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "listener bound" && v["fields"]["listener"] == name)
        .and_then(|v| v["fields"]["address"].as_str().map(str::to_string))
}

/// The exec action: `-- /bin/sh -c 'echo "$GENERATION $SHA256 $SET" >> FILE'`, so each
/// invocation appends one line the test can count and map back to a leaf.
pub struct ExecCounter {
    _dir: TempDir,
    path: PathBuf,
}

impl Default for ExecCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecCounter {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir for exec counter");
        let path = dir.path().join("exec.log");
        ExecCounter { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trailing `--` and program to append to the `watch` arguments.
    pub fn args(&self) -> Vec<String> {
        let script = format!(
            "echo \"$MTLS_SIDECAR_GENERATION $MTLS_SIDECAR_SHA256 $MTLS_SIDECAR_SET\" >> '{}'",
            self.path.display()
        );
        vec!["--".into(), "/bin/sh".into(), "-c".into(), script]
    }

    /// One line per invocation: `GENERATION SHA256 SET`.
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.lines().len()
    }

    /// The SHA-256 column of every invocation, in order.
    pub fn shas(&self) -> Vec<String> {
        self.column(1)
    }

    /// The generation column of every invocation, in order.
    pub fn generations(&self) -> Vec<u64> {
        self.column(0)
            .iter()
            .map(|g| g.parse().unwrap_or(u64::MAX))
            .collect()
    }

    fn column(&self, i: usize) -> Vec<String> {
        self.lines()
            .iter()
            .map(|l| l.split_whitespace().nth(i).unwrap_or("").to_string())
            .collect()
    }
}
