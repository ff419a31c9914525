//! The CLIs our users run, bounded in time: `curl` (as in the users' guide:
//! `--cert client.crt --key client.key --cacert ca.crt`, with `--resolve` so the guide's
//! server name points at the test listener) and `openssl s_client`. Callers check
//! `require_tool("curl")` / `require_tool("openssl")` first.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::tls_client::SERVER_NAME;

/// What a bounded external command did.
#[derive(Debug)]
pub struct Ran {
    /// None: killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Run `cmd` with `stdin` as its input; kill it after `timeout`.
pub fn run_bounded(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin piped");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
        // Dropping `input` closes it.
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for command") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Ran {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

/// One transfer (URL) of a `curl` run, from its `-w` output.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// 0 when there was no response.
    pub http_code: u16,
    /// `1.1`, `2`, or `0` when there was no response.
    pub http_version: String,
    /// New connections curl made for this transfer (0: it reused one).
    pub num_connects: u32,
    pub body: String,
}

/// What `curl` did: its exit, and per URL the status, HTTP version, connections and body.
/// `http_code`, `http_version` and `body` are those of the first URL.
#[derive(Debug)]
pub struct CurlResult {
    pub ran: Ran,
    pub http_code: u16,
    pub http_version: String,
    pub body: String,
    pub transfers: Vec<Transfer>,
}

const CURL_MARK: &str = "\n__curl_write_out__ ";
const CURL_END: &str = " __curl_end__\n";

/// `curl -sS --max-time 10 ARGS` in `cwd` (so relative `client.crt` etc. resolve as in the
/// users' guide); `-w` appends each transfer's status, HTTP version and connection count
/// after its body.
pub fn curl(cwd: &Path, args: &[&str]) -> CurlResult {
    let mut cmd = Command::new("curl");
    cmd.current_dir(cwd)
        .args(["-sS", "--max-time", "10"])
        .arg("-w")
        .arg(format!(
            "{CURL_MARK}%{{http_code}} %{{http_version}} %{{num_connects}}{CURL_END}"
        ))
        .args(args);
    let ran = run_bounded(&mut cmd, b"", Duration::from_secs(15));
    let mut transfers = Vec::new();
    let mut rest = ran.stdout.as_str();
    while let Some((body, after)) = rest.split_once(CURL_MARK) {
        let (stats, next) = after.split_once(CURL_END).unwrap_or((after, ""));
        let mut stats = stats.split_whitespace();
        transfers.push(Transfer {
            http_code: stats.next().and_then(|c| c.parse().ok()).unwrap_or(0),
            http_version: stats.next().unwrap_or("0").to_string(),
            num_connects: stats.next().and_then(|c| c.parse().ok()).unwrap_or(0),
            body: body.to_string(),
        });
        rest = next;
    }
    let first = transfers.first().cloned().unwrap_or(Transfer {
        http_code: 0,
        http_version: "0".into(),
        num_connects: 0,
        body: ran.stdout.clone(),
    });
    CurlResult {
        ran,
        http_code: first.http_code,
        http_version: first.http_version,
        body: first.body,
        transfers,
    }
}

/// The users' guide call, literally: `curl --cert client.crt --key client.key --cacert ca.crt
/// https://api.production.svc.cluster.local:PORT{path}` run in `dir` (which holds those three
/// files), with `--resolve` pointing that name at `127.0.0.1`, plus `extra` arguments.
pub fn users_curl(dir: &Path, port: u16, path: &str, extra: &[&str]) -> CurlResult {
    users_curl_paths(dir, port, &[path], extra)
}

/// `users_curl` with several URLs in one run (curl reuses its connection between them).
pub fn users_curl_paths(dir: &Path, port: u16, paths: &[&str], extra: &[&str]) -> CurlResult {
    let resolve = format!("{SERVER_NAME}:{port}:127.0.0.1");
    let urls: Vec<String> = paths
        .iter()
        .map(|path| format!("https://{SERVER_NAME}:{port}{path}"))
        .collect();
    let mut args = vec![
        "--cert",
        "client.crt",
        "--key",
        "client.key",
        "--cacert",
        "ca.crt",
        "--resolve",
        &resolve,
    ];
    args.extend_from_slice(extra);
    args.extend(urls.iter().map(String::as_str));
    curl(dir, &args)
}

/// `openssl s_client -connect ADDR -servername api.production.svc.cluster.local
/// -verify_return_error -quiet ARGS` in `cwd`, with `stdin` sent once connected; `-quiet`
/// keeps reading after stdin ends, so send a request with `Connection: close`.
pub fn s_client(cwd: &Path, addr: &str, args: &[&str], stdin: &[u8]) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(cwd)
        .args(["s_client", "-connect", addr, "-servername", SERVER_NAME])
        .args(["-verify_return_error", "-quiet"])
        .args(args);
    run_bounded(&mut cmd, stdin, Duration::from_secs(15))
}

/// A temp dir holding `client.crt` (`leaf`'s chain), `client.key` and `ca.crt` (`ca_pem`): the
/// files `users_curl` passes, named as in our users' guide.
pub fn curl_dir(ca_pem: &str, leaf: &super::pki::Leaf) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in [
        ("client.crt", leaf.chain_pem.as_str()),
        ("client.key", leaf.key_pkcs8_pem.as_str()),
        ("ca.crt", ca_pem),
    ] {
        std::fs::write(dir.path().join(name), body).expect("write client file");
    }
    dir
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// curl's `--pinnedpubkey` value for the key of a DER certificate: `sha256//BASE64` of its
/// SubjectPublicKeyInfo. A transfer with it fails unless the server presents that key.
pub fn pinned_pubkey(cert_der: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("certificate parses");
    let spki = sha2::Sha256::digest(cert.public_key().raw);
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    )
}
