//! `run --config FILE` refuses a file with mistakes before anything starts: exit 2, and one
//! `error: FILE:LINE: KEY: MESSAGE` line per mistake (every mistake the check finds, at once),
//! the same with `--check` and `--print`; a file that cannot be read or is empty is named. Then
//! what a valid file gives:
//!
//! - `--check`: a one-line summary, exit 0, nothing bound;
//! - `--check --check-credentials`: each set's report under `set NAME:`, exit 1 naming the set
//!   whose key does not match or whose files are missing;
//! - `--print`: the file with every default written out, as YAML that is itself a valid config
//!   whose `--print` is the same text (a fixed point);
//! - `MTLS_SIDECAR_CONFIG` instead of `--config` (the flag wins), and flag mistakes left to clap.
//!
//! Every run is the real binary, bounded in time; a file wrongly accepted would start the
//! sidecar, which the bound then kills (and the test fails on the exit status).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::cli_clients::{run_bounded, Ran};
use crate::support::fixture::tls_files;
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::TestPki;
use crate::support::sidecar::wait_until;
use crate::support::{bin, bin_command, hermetic};

const WAIT: Duration = Duration::from_secs(10);

/// `run` as it starts the sidecar, then its two one-shot forms: a mistake is refused by each.
const MODES: [&[&str]; 3] = [&[], &["--check"], &["--print"]];

/// What only a started sidecar logs.
const STARTED: [&str; 2] = ["listener bound", "admin endpoint listening"];

// === running the binary ===

/// `mtls-sidecar ARGS` with `env` and no other `MTLS_SIDECAR_*` variable, bounded.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = bin_command();
    cmd.args(args).envs(env.iter().copied());
    run_bounded(&mut cmd, b"", WAIT)
}

/// `mtls-sidecar run --config FILE EXTRA...`, bounded.
fn run_config(file: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["run", "--config", text(file)];
    args.extend(extra);
    run_env(&args, &[])
}

fn code(ran: &Ran) -> Option<i32> {
    ran.status.and_then(|s| s.code())
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A temp dir holding `config.yaml` with `yaml`.
fn config_file(yaml: &str) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("config.yaml");
    fs::write(&path, yaml).expect("write config");
    (tmp, path)
}

// === mistakes ===

/// One mistake the output must report: its line (None: the file as a whole), its key path
/// (empty: the parser's own message, which has no key) and phrases of its message.
struct Expect<'a> {
    line: Option<usize>,
    key: &'a str,
    phrases: &'a [&'a str],
}

/// A file with mistakes and what each mistake must be reported as.
struct Case<'a> {
    what: &'a str,
    yaml: &'a str,
    errors: &'a [Expect<'a>],
}

const fn at<'a>(line: usize, key: &'a str, phrases: &'a [&'a str]) -> Expect<'a> {
    Expect {
        line: Some(line),
        key,
        phrases,
    }
}

/// The stderr lines of `ran` that report a mistake.
fn error_lines(ran: &Ran) -> Vec<&str> {
    ran.stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// Why `ran` (of `run --config FILE` in some mode) is not a refusal reporting exactly `errors`,
/// or None if it is.
fn refusal_problem(file: &Path, ran: &Ran, errors: &[Expect]) -> Option<String> {
    if code(ran) != Some(2) {
        return Some(format!("expected exit 2, got {:?}", ran.status));
    }
    if let Some(s) = STARTED.iter().find(|s| ran.stderr.contains(*s)) {
        return Some(format!("refused, but it logged {s:?} first"));
    }
    if !ran.stdout.is_empty() {
        return Some(format!("expected nothing on stdout, got {:?}", ran.stdout));
    }
    let lines = error_lines(ran);
    if let Some(twice) = lines.iter().find(|l| l.contains(" at line ")) {
        return Some(format!("the line is said twice: {twice}"));
    }
    if lines.len() != errors.len() {
        return Some(format!(
            "expected {} error line(s), got {}",
            errors.len(),
            lines.len()
        ));
    }
    for e in errors {
        let mut prefix = match e.line {
            Some(line) => format!("error: {}:{line}: ", file.display()),
            None => format!("error: {}: ", file.display()),
        };
        if !e.key.is_empty() {
            prefix.push_str(&format!("{}: ", e.key));
        }
        let found = lines
            .iter()
            .any(|l| l.starts_with(&prefix) && e.phrases.iter().all(|p| l.contains(p)));
        if !found {
            return Some(format!("no line `{prefix}...` containing {:?}", e.phrases));
        }
    }
    None
}

/// Runs every case in every mode; panics listing every case that was not refused as expected.
fn assert_refused(cases: &[Case]) {
    let mut problems = Vec::new();
    for case in cases {
        let (_tmp, file) = config_file(case.yaml);
        for mode in MODES {
            let ran = run_config(&file, mode);
            if let Some(p) = refusal_problem(&file, &ran, case.errors) {
                problems.push(format!(
                    "{} (run {mode:?}): {p}\n--- stderr ---\n{}",
                    case.what, ran.stderr
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Each file has one mistake; line numbers count from the first line of the text.
const MISTAKES: &[Case<'static>] = &[
    Case {
        what: "an unknown top-level key",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    exec: [/bin/true]
reload-on: sighup
",
        errors: &[at(
            8,
            "reload-on",
            &[
                "unknown key; allowed: ",
                "admin-listen",
                "sets",
                "listeners",
                "watch",
            ],
        )],
    },
    Case {
        what: "an unknown key in a set",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
    expect-dsn: [a.example]
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(
            5,
            "sets.s.expect-dsn",
            &["unknown key; allowed: ", "expect-dns"],
        )],
    },
    Case {
        what: "an unknown key in a listener",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-cn: [web-app]
    upstream: 127.0.0.1:8080
",
        errors: &[at(
            12,
            "listeners[0].upstream",
            &["unknown key; allowed: ", "target"],
        )],
    },
    Case {
        what: "an unknown key in a watch entry",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    command: [nginx, -s, reload]
",
        errors: &[at(
            7,
            "watch[0].command",
            &["unknown key; allowed: ", "exec"],
        )],
    },
    Case {
        what: "a listener naming an unknown set",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  server:
    cert-dir: /etc/tls/server
  client:
    cert-dir: /etc/tls/client
listeners:
  - name: in
    kind: server
    credentials: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-cn: [web-app]
  - name: out
    kind: client
    credentials: srv
    listen: 127.0.0.1:0
    target: api.example:443
",
        errors: &[at(
            16,
            "listeners[1].credentials",
            &[r#"unknown set "srv""#, r#"known: "client", "server""#],
        )],
    },
    Case {
        what: "a listener without credentials (reported at the listener)",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-all: true
",
        errors: &[at(
            6,
            "listeners[0].credentials",
            &["missing", r#"known sets: "s""#],
        )],
    },
    Case {
        what: "a bad duration",
        yaml: "\
admin-listen: 127.0.0.1:0
poll-interval: 5 parsecs
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(
            2,
            "poll-interval",
            &["\"parsecs\"", "use a duration like 100ms, 30s, 5m"],
        )],
    },
    Case {
        what: "a bad duration in a listener",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-cn: [web-app]
    idle-timeout: forever
",
        errors: &[at(
            12,
            "listeners[0].idle-timeout",
            &["use a duration like"],
        )],
    },
    Case {
        what: "a host name as a listen address",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: localhost:8443
    target: 127.0.0.1:8080
    allow-cn: [web-app]
",
        errors: &[at(
            9,
            "listeners[0].listen",
            &["expected IP:PORT", "\"localhost:8443\""],
        )],
    },
    Case {
        what: "a port alone as a listen address",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 8443
    target: 127.0.0.1:8080
    allow-cn: [web-app]
",
        errors: &[at(
            9,
            "listeners[0].listen",
            &["a port alone is not enough", "0.0.0.0:8443"],
        )],
    },
    Case {
        what: "a bad admin address",
        yaml: "\
admin-listen: localhost:9901
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(
            1,
            "admin-listen",
            &["expected IP:PORT", "`off`", "\"localhost:9901\""],
        )],
    },
    Case {
        what: "two listeners on one address",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: a
    kind: server
    credentials: s
    listen: 127.0.0.1:18443
    target: 127.0.0.1:8080
    allow-all: true
  - name: b
    kind: server
    credentials: s
    listen: 0.0.0.0:18443
    target: 127.0.0.1:8081
    allow-all: true
",
        errors: &[at(
            15,
            "listeners[1].listen",
            &[r#"0.0.0.0:18443 is also the address of listener "a""#],
        )],
    },
    Case {
        what: "a listener on the admin address",
        yaml: "\
admin-listen: 0.0.0.0:18444
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:18444
    target: 127.0.0.1:8080
    allow-all: true
",
        errors: &[at(
            9,
            "listeners[0].listen",
            &["is also the address of the admin endpoint", "admin-listen"],
        )],
    },
    Case {
        what: "a client listener off loopback without unsafe-listen",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  c:
    cert-dir: /etc/tls
listeners:
  - name: out
    kind: client
    credentials: c
    listen: 0.0.0.0:18080
    target: api.example:443
",
        errors: &[at(
            9,
            "listeners[0].listen",
            &["0.0.0.0:18080", "must be loopback", "unsafe-listen"],
        )],
    },
    Case {
        what: "a server listener on a set with usage client",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  c:
    cert-dir: /etc/tls
    usage: client
listeners:
  - name: in
    kind: server
    credentials: c
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-all: true
",
        errors: &[at(
            5,
            "sets.c.usage",
            &[
                r#""client" does not allow"#,
                r#""in" (server)"#,
                "must allow server",
            ],
        )],
    },
    Case {
        what: "an unknown usage",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
    usage: server-only
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(
            5,
            "sets.s.usage",
            &["expected server, client or both", "\"server-only\""],
        )],
    },
    Case {
        what: "two sets on the same files with other rules",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  a:
    cert-dir: /etc/tls
    expect-dns: [a.example]
  b:
    cert-dir: /etc/tls
    expect-dns: [b.example]
watch:
  - credentials: a
    exec: [/bin/true]
  - credentials: b
    exec: [/bin/true]
",
        errors: &[at(
            6,
            "sets.b",
            &[
                r#"reads the same files as set "a""#,
                "/etc/tls/tls.crt",
                "use one set for both",
            ],
        )],
    },
    Case {
        what: "a set without files (reported at the set)",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert: /etc/tls/tls.crt
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(
            3,
            "sets.s.key",
            &["required when cert-dir is not given"],
        )],
    },
    Case {
        what: "a watch entry without an action",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    act-on-start: true
",
        errors: &[at(
            6,
            "watch[0]",
            &["every watch entry needs an action", "stage-dir", "exec"],
        )],
    },
    Case {
        what: "a signal without a target",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    signal: HUP
",
        errors: &[at(
            7,
            "watch[0].signal",
            &["needs a target", "pid-file", "process-name"],
        )],
    },
    Case {
        what: "a watch entry naming an unknown set",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: nginx
    exec: [/bin/true]
",
        errors: &[at(
            6,
            "watch[0].credentials",
            &[r#"unknown set "nginx""#, r#"known: "s""#],
        )],
    },
    Case {
        what: "two listeners with one name",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-all: true
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8081
    allow-all: true
",
        errors: &[at(
            12,
            "listeners[1].name",
            &[r#""in" is also the name of listeners[0]"#],
        )],
    },
    Case {
        what: "an unknown listener kind",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: proxy
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
",
        errors: &[at(
            7,
            "listeners[0].kind",
            &["expected server or client", "\"proxy\""],
        )],
    },
    Case {
        what: "a server listener without an access rule (reported at the listener)",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
",
        errors: &[at(
            6,
            "listeners[0]",
            &["needs an access rule", "allow-all", "allow-cn"],
        )],
    },
    Case {
        what: "a client option on a server listener",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-all: true
    server-name: api.example
",
        errors: &[at(
            12,
            "listeners[0].server-name",
            &["only for kind client"],
        )],
    },
    Case {
        what: "nothing to run (reported for the whole file)",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
",
        errors: &[at(1, "", &["nothing to run", "listeners", "watch"])],
    },
];

/// Set `s` twice.
const DUPLICATE_KEY: &str = "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls/a
  s:
    cert-dir: /etc/tls/b
watch:
  - credentials: s
    exec: [/bin/true]
";

/// YAML that does not parse, and the file without content.
const UNPARSABLE: &[Case<'static>] = &[
    Case {
        what: "an unclosed quote",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: \"/etc/tls
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(4, "", &["unclosed quote"])],
    },
    Case {
        what: "a key indented too far",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
     exec: [/bin/true]
",
        errors: &[at(7, "", &["mapping values are not allowed"])],
    },
    Case {
        what: "a tab as indentation",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
\ts:
    cert-dir: /etc/tls
",
        errors: &[at(3, "", &["tabs", "at column "])],
    },
    Case {
        what: "a key given twice",
        yaml: DUPLICATE_KEY,
        errors: &[at(5, "", &["duplicate mapping key: s"])],
    },
    Case {
        what: "an empty file",
        yaml: "",
        errors: &[Expect {
            line: None,
            key: "",
            phrases: &["the file is empty", "sets", "listeners", "watch"],
        }],
    },
    Case {
        what: "a file of blank lines",
        yaml: "\n   \n\n",
        errors: &[Expect {
            line: None,
            key: "",
            phrases: &["the file is empty"],
        }],
    },
];

#[test]
fn each_mistake_is_refused_with_its_file_line_and_key() {
    assert_refused(MISTAKES);
}

#[test]
fn yaml_that_does_not_parse_is_refused_with_its_line() {
    assert_refused(UNPARSABLE);
}

#[test]
fn a_duplicate_key_is_reported_in_the_files_terms() {
    let (_tmp, file) = config_file(DUPLICATE_KEY);
    let ran = run_config(&file, &["--check"]);
    assert_eq!(code(&ran), Some(2), "{ran:?}");
    // Not the parser's advice to its API users ("set DuplicateKeyPolicy in Options").
    assert!(
        !ran.stderr.contains("DuplicateKeyPolicy") && !ran.stderr.contains("Options"),
        "{}",
        ran.stderr
    );
}

#[test]
fn every_mistake_of_a_file_is_reported_at_once() {
    assert_refused(&[Case {
        what: "four mistakes",
        yaml: "\
admin-listen: 127.0.0.1:0
poll-interval: 1 fortnight
sets:
  server:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: srv
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-cn: [web-app]
  - name: out
    kind: client
    credentials: server
    listen: 0.0.0.0:18080
    target: api.example:443
watch:
  - credentials: server
",
        errors: &[
            at(2, "poll-interval", &["\"fortnight\""]),
            at(9, "listeners[0].credentials", &[r#"unknown set "srv""#]),
            at(16, "listeners[1].listen", &["must be loopback"]),
            at(19, "watch[0]", &["needs an action"]),
        ],
    }]);
}

#[test]
fn a_file_that_cannot_be_read_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.yaml");
    for (file, why) in [
        (missing.as_path(), "No such file"),
        (tmp.path(), "Is a directory"),
    ] {
        for mode in MODES {
            let ran = run_config(file, mode);
            let expect = [Expect {
                line: None,
                key: "",
                phrases: &["cannot be read", why],
            }];
            if let Some(p) = refusal_problem(file, &ran, &expect) {
                panic!("{} (run {mode:?}): {p}\n{}", file.display(), ran.stderr);
            }
        }
    }
}

// === valid files ===

/// Two sets, a server and a client listener, and `watches` exec entries on set `server`.
fn two_sets_yaml(server_dir: &Path, client_dir: &Path, watches: usize) -> String {
    let mut yaml = format!(
        "\
admin-listen: 127.0.0.1:0
sets:
  server:
    cert-dir: {}
    expect-dns: [api.production.svc]
  client:
    cert-dir: {}
listeners:
  - name: inbound
    kind: server
    credentials: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:8080
    allow-cn: [web-app]
  - name: outbound
    kind: client
    credentials: client
    listen: 127.0.0.1:0
    target: api.production.svc:443
",
        server_dir.display(),
        client_dir.display()
    );
    if watches > 0 {
        yaml.push_str("watch:\n");
    }
    for _ in 0..watches {
        yaml.push_str("  - credentials: server\n    exec: [/bin/true]\n");
    }
    yaml
}

/// Exit 0 with exactly `stdout`, and nothing started.
fn assert_one_shot_ok(ran: &Ran, stdout: &str) {
    assert_eq!(code(ran), Some(0), "{ran:?}");
    assert_eq!(ran.stdout, stdout, "{ran:?}");
    for s in STARTED {
        assert!(!ran.stderr.contains(s), "it started: {}", ran.stderr);
    }
}

#[test]
fn check_of_a_valid_file_prints_a_summary_and_starts_nothing() {
    for (watches, entries) in [
        (1, "1 watch entry"),
        (0, "0 watch entries"),
        (2, "2 watch entries"),
    ] {
        let yaml = two_sets_yaml(Path::new("/etc/tls/s"), Path::new("/etc/tls/c"), watches);
        let (_tmp, file) = config_file(&yaml);
        let ran = run_config(&file, &["--check"]);
        let summary = format!(
            "{}: valid: 2 set(s), 2 listener(s), {entries}\n",
            file.display()
        );
        assert_one_shot_ok(&ran, &summary);
        assert_eq!(ran.stderr, "", "--check logs nothing");
    }
}

#[test]
fn unsafe_listen_lets_a_client_listener_off_loopback() {
    let yaml = "\
admin-listen: 127.0.0.1:0
sets:
  c:
    cert-dir: /etc/tls
listeners:
  - name: out
    kind: client
    credentials: c
    listen: 0.0.0.0:18080
    unsafe-listen: true
    target: api.example:443
";
    let (_tmp, file) = config_file(yaml);
    let ran = run_config(&file, &["--check"]);
    let summary = format!(
        "{}: valid: 1 set(s), 1 listener(s), 0 watch entries\n",
        file.display()
    );
    assert_one_shot_ok(&ran, &summary);
}

// === --check-credentials ===

/// A pod's two Secrets (`server`: a serverAuth leaf, `client`: a clientAuth leaf) and the
/// config file using them.
struct Secrets {
    pki: TestPki,
    server: KubeletVolume,
    client: KubeletVolume,
    file: PathBuf,
    _tmp: TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new();
        let mut server = KubeletVolume::new(tmp.path().join("server-tls"));
        server.write(&tls_files(&pki.server(), &pki.root.cert_pem));
        let mut client = KubeletVolume::new(tmp.path().join("client-tls"));
        client.write(&tls_files(&pki.client(), &pki.root.cert_pem));
        let file = tmp.path().join("config.yaml");
        fs::write(&file, two_sets_yaml(server.dir(), client.dir(), 1)).expect("write config");
        Secrets {
            pki,
            server,
            client,
            file,
            _tmp: tmp,
        }
    }
}

/// The report of set `name`: from its `set NAME:` header to the next set's header.
fn set_report<'a>(stdout: &'a str, name: &str) -> &'a str {
    let header = format!("\nset {name}:\n");
    let start = stdout
        .find(&header)
        .unwrap_or_else(|| panic!("no `set {name}:` header in:\n{stdout}"));
    let rest = &stdout[start + header.len()..];
    match rest.find("\nset ") {
        Some(end) => &rest[..end],
        None => rest,
    }
}

#[test]
fn check_credentials_of_valid_sets_exits_0() {
    let secrets = Secrets::new();
    let ran = run_config(&secrets.file, &["--check", "--check-credentials"]);
    assert_eq!(code(&ran), Some(0), "{ran:?}");
    assert!(
        ran.stdout.starts_with(&format!(
            "{}: valid: 2 set(s), 2 listener(s), 1 watch entry\n",
            secrets.file.display()
        )),
        "{}",
        ran.stdout
    );
    for set in ["server", "client"] {
        let report = set_report(&ran.stdout, set);
        assert!(report.contains("result        valid"), "{set}:\n{report}");
    }
    // Each set is checked for what its listener needs.
    assert!(set_report(&ran.stdout, "server").contains("usage         server"));
    assert!(set_report(&ran.stdout, "client").contains("usage         client"));
    for s in STARTED {
        assert!(!ran.stderr.contains(s), "it started: {}", ran.stderr);
    }
}

#[test]
fn check_credentials_names_the_set_whose_key_does_not_match() {
    let mut secrets = Secrets::new();
    let leaf = secrets.pki.client();
    let other = secrets.pki.client();
    let mut files = tls_files(&leaf, &secrets.pki.root.cert_pem);
    files[1].1 = other.key_pkcs8_pem.into_bytes();
    secrets.client.write(&files);
    let ran = run_config(&secrets.file, &["--check", "--check-credentials"]);
    assert_eq!(code(&ran), Some(1), "{ran:?}");
    let client = set_report(&ran.stdout, "client");
    assert!(client.contains("FAIL key_mismatch"), "{client}");
    assert!(client.contains("result        INVALID"), "{client}");
    let server = set_report(&ran.stdout, "server");
    assert!(server.contains("result        valid"), "{server}");
}

#[test]
fn check_credentials_names_the_set_whose_files_are_missing() {
    let secrets = Secrets::new();
    fs::remove_dir_all(secrets.server.dir()).expect("remove the server Secret");
    let ran = run_config(&secrets.file, &["--check", "--check-credentials"]);
    assert_eq!(code(&ran), Some(1), "{ran:?}");
    let server = set_report(&ran.stdout, "server");
    assert!(server.contains("FAIL missing_file"), "{server}");
    assert!(
        server.contains(&secrets.server.dir().join("tls.crt").display().to_string()),
        "the report names the missing file:\n{server}"
    );
    assert!(server.contains("result        INVALID"), "{server}");
    let client = set_report(&ran.stdout, "client");
    assert!(client.contains("result        valid"), "{client}");
}

// === --print ===

/// Everything left out that has a default: `--print` must write each out.
const MINIMAL: &str = "\
sets:
  server:
    cert-dir: /etc/tls/server
  client:
    cert-dir: /etc/tls/client
    ca: /etc/trust/ca.crt
listeners:
  - name: inbound
    kind: server
    credentials: server
    target: 127.0.0.1:8080
    allow-cn: [web-app]
  - name: outbound
    kind: client
    credentials: client
    listen: 127.0.0.1:18080
    target: api.example:443
watch:
  - credentials: server
    pid-file: /run/nginx.pid
";

/// Values YAML must quote or escape (IPv6 brackets, `: `, `#`, quotes, `*`), and comments.
const TRICKY: &str = r##"# the pod's sidecar
admin-listen: "[::1]:0"   # loopback only
poll-interval: 1m
sets:
  server:
    cert-dir: /etc/tls/server
    expect-dns: [api.production.svc]
  client:
    cert-dir: /etc/tls/client
    peer-ca: /etc/trust/ca.crt
listeners:
  - name: inbound
    kind: server
    credentials: server
    listen: "[::]:0"
    target: unix:/run/app.sock
    protocol: http
    min-tls: "1.3"
    allow-cn: [web-app, "a: b", "#not-a-comment"]
  - name: outbound
    kind: client
    credentials: client
    listen: 127.0.0.1:0
    target: "[::1]:8443"
    server-name: api.production.svc
    verify-dns: ["*.production.svc"]
watch:
  - credentials: server
    exec: [/bin/sh, -c, 'echo "it''s # not a comment: $X"']
    pid-file: /run/nginx.pid
    verify-addr: 127.0.0.1:443
  - credentials: client
    stage-dir: /run/staged
    act-on-start: true
"##;

/// `run --print` of `yaml`: the printed text, asserting a clean exit that started nothing.
fn print(yaml: &str) -> String {
    let (_tmp, file) = config_file(yaml);
    let ran = run_config(&file, &["--print"]);
    assert_eq!(code(&ran), Some(0), "{ran:?}");
    for s in STARTED {
        assert!(!ran.stderr.contains(s), "it started: {}", ran.stderr);
    }
    ran.stdout
}

fn parse_yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

#[test]
fn print_writes_out_every_default() {
    let printed = print(MINIMAL);
    let v = parse_yaml(&printed);
    let s = |v: &Value| v.as_str().map(str::to_string);
    let top = [
        ("admin-listen", "[::]:9901"),
        ("poll-interval", "30s"),
        ("debounce", "100ms"),
        ("shutdown-grace", "25s"),
        ("drain-delay", "5s"),
    ];
    for (key, value) in top {
        assert_eq!(s(&v[key]).as_deref(), Some(value), "{key}:\n{printed}");
    }
    // Each set's files as resolved, and its usage as its listener needs it.
    let server = &v["sets"]["server"];
    assert_eq!(
        s(&server["cert"]).as_deref(),
        Some("/etc/tls/server/tls.crt")
    );
    assert_eq!(
        s(&server["key"]).as_deref(),
        Some("/etc/tls/server/tls.key")
    );
    assert_eq!(s(&server["ca"]).as_deref(), Some("/etc/tls/server/ca.crt"));
    assert_eq!(s(&server["usage"]).as_deref(), Some("server"));
    let client = &v["sets"]["client"];
    assert_eq!(
        s(&client["cert"]).as_deref(),
        Some("/etc/tls/client/tls.crt")
    );
    assert_eq!(s(&client["ca"]).as_deref(), Some("/etc/trust/ca.crt"));
    assert_eq!(s(&client["usage"]).as_deref(), Some("client"));
    let listener_defaults = [
        ("protocol", "tcp"),
        ("min-tls", "1.2"),
        ("handshake-timeout", "10s"),
        ("connect-timeout", "5s"),
        ("idle-timeout", "5m"),
    ];
    for l in [&v["listeners"][0], &v["listeners"][1]] {
        for (key, value) in listener_defaults {
            assert_eq!(s(&l[key]).as_deref(), Some(value), "{key}:\n{printed}");
        }
        // Default limits are comments: written out, they would count as chosen.
        assert_eq!(l["max-connections"], Value::Null, "{printed}");
    }
    let comment = "  # max-connections: 10000 (default; lowered to fit the open-file limit";
    assert_eq!(printed.matches(comment).count(), 2, "{printed}");
    let inbound = &v["listeners"][0];
    assert_eq!(s(&inbound["listen"]).as_deref(), Some("[::]:8443"));
    assert_eq!(inbound["allow-all"], Value::Bool(false), "{printed}");
    assert_eq!(v["listeners"][1]["unsafe-listen"], Value::Bool(false));
    let watch = &v["watch"][0];
    assert_eq!(s(&watch["signal"]).as_deref(), Some("HUP"), "{printed}");
    assert_eq!(s(&watch["min-interval"]).as_deref(), Some("1s"));
    assert_eq!(watch["act-on-start"], Value::Bool(false));
}

#[test]
fn printed_config_is_valid_and_prints_the_same() {
    for (what, yaml) in [("minimal", MINIMAL), ("tricky", TRICKY)] {
        let counts = {
            let (_tmp, file) = config_file(yaml);
            let ran = run_config(&file, &["--check"]);
            assert_eq!(code(&ran), Some(0), "{what}: {ran:?}");
            ran.stdout.replacen(&file.display().to_string(), "FILE", 1)
        };
        let printed = print(yaml);
        parse_yaml(&printed);
        let (_tmp, file) = config_file(&printed);
        let ran = run_config(&file, &["--check"]);
        assert_eq!(code(&ran), Some(0), "{what}: printed:\n{printed}\n{ran:?}");
        assert_eq!(
            ran.stdout.replacen(&file.display().to_string(), "FILE", 1),
            counts,
            "{what}: the printed file has other parts"
        );
        assert_eq!(
            print(&printed),
            printed,
            "{what}: --print is not a fixed point"
        );
    }
}

/// Whether `run --config FILE` binds its listeners in a shell whose open-file limit is `nofile`
/// (soft and hard): Err with its exit status and output if it exits first. The sidecar is
/// killed either way.
fn starts_with_nofile(file: &Path, nofile: u32) -> Result<(), String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("stderr.log");
    let stderr = fs::File::create(&log).expect("stderr log");
    let mut cmd = Command::new("/bin/sh");
    hermetic(&mut cmd);
    // `exec`: the child is the sidecar itself, so killing it stops the sidecar.
    cmd.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
        .arg(bin())
        .args(["run", "--config", text(file)])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = cmd.spawn().expect("spawn sh");
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let mut exited = None;
    wait_until(WAIT, || {
        exited = child.try_wait().ok().flatten();
        exited.is_some() || read().contains("listener bound")
    });
    let _ = child.kill();
    let _ = child.wait();
    if read().contains("listener bound") {
        Ok(())
    } else {
        Err(format!("exited: {exited:?}\n{}", read()))
    }
}

#[test]
fn printed_config_starts_where_the_original_starts() {
    let yaml = "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /nonexistent
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:0
    target: 127.0.0.1:9
    allow-all: true
";
    let (_tmp, file) = config_file(yaml);
    let printed = print(yaml);
    let (_tmp2, printed_file) = config_file(&printed);
    if let Err(e) = starts_with_nofile(&file, 1024) {
        panic!("the original does not start with 1024 open files: {e}");
    }
    if let Err(e) = starts_with_nofile(&printed_file, 1024) {
        panic!("the original starts with 1024 open files, its --print does not: {e}\n{printed}");
    }
}

// === where the file comes from, and flag mistakes ===

#[test]
fn the_config_variable_names_the_file_and_the_flag_wins() {
    let (_tmp, file) = config_file(&two_sets_yaml(
        Path::new("/etc/tls/s"),
        Path::new("/etc/tls/c"),
        1,
    ));
    let summary = format!(
        "{}: valid: 2 set(s), 2 listener(s), 1 watch entry\n",
        file.display()
    );
    let ran = run_env(&["run", "--check"], &[("MTLS_SIDECAR_CONFIG", text(&file))]);
    assert_one_shot_ok(&ran, &summary);
    // A mistaken file named by the variable is reported under its own name.
    let (_tmp2, bad) = config_file(MISTAKES[0].yaml);
    let ran = run_env(&["run", "--check"], &[("MTLS_SIDECAR_CONFIG", text(&bad))]);
    if let Some(p) = refusal_problem(&bad, &ran, MISTAKES[0].errors) {
        panic!("{p}\n{}", ran.stderr);
    }
    // --config on the command line wins over the variable.
    let ran = run_env(
        &["run", "--check", "--config", text(&file)],
        &[("MTLS_SIDECAR_CONFIG", text(&bad))],
    );
    assert_one_shot_ok(&ran, &summary);
}

#[test]
fn flag_mistakes_are_clap_usage_errors() {
    let (_tmp, file) = config_file(MINIMAL);
    let path = text(&file);
    let cases: [(&[&str], &[&str]); 4] = [
        (&["run"], &["--config <FILE>", "required"]),
        (&["run", "--check"], &["--config <FILE>"]),
        (
            &["run", "--config", path, "--check-credentials"],
            &["--check"],
        ),
        (&["run", "--config", path, "--dry-run"], &["--dry-run"]),
    ];
    for (args, phrases) in cases {
        let ran = run_env(args, &[]);
        assert_eq!(code(&ran), Some(2), "{args:?}: {ran:?}");
        assert!(ran.stdout.is_empty(), "{args:?}: {ran:?}");
        assert!(ran.stderr.contains("Usage: "), "{args:?}: {}", ran.stderr);
        for p in phrases {
            assert!(
                ran.stderr.contains(p),
                "{args:?}: no {p:?} in {}",
                ran.stderr
            );
        }
    }
}

// === reported ===

#[test]
fn a_duplicate_address_is_reported_at_the_second_listener_even_when_names_repeat() {
    assert_refused(&[Case {
        what: "two listeners with one name on one address",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:18443
    target: 127.0.0.1:8080
    allow-all: true
  - name: in
    kind: server
    credentials: s
    listen: 127.0.0.1:18443
    target: 127.0.0.1:8081
    allow-all: true
",
        errors: &[
            at(
                12,
                "listeners[1].name",
                &["is also the name of listeners[0]"],
            ),
            at(
                15,
                "listeners[1].listen",
                &["is also the address of listener"],
            ),
        ],
    }]);
}

#[test]
fn two_spellings_of_one_directory_are_the_same_files() {
    assert_refused(&[Case {
        what: "./tls and tls",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  a:
    cert-dir: ./tls
    expect-dns: [a.example]
  b:
    cert-dir: tls
    expect-dns: [b.example]
watch:
  - credentials: a
    exec: [/bin/true]
",
        errors: &[at(6, "sets.b", &[r#"reads the same files as set "a""#])],
    }]);
}

#[test]
fn paths_are_compared_as_files_and_the_shared_one_is_named() {
    assert_refused(&[
        Case {
            what: "a `..` in the path",
            yaml: "\
admin-listen: 127.0.0.1:0
sets:
  a:
    cert-dir: /etc/tls
    expect-dns: [a.example]
  b:
    cert-dir: /etc/other/../tls/.
    expect-dns: [b.example]
watch:
  - credentials: a
    exec: [/bin/true]
",
            errors: &[at(
                6,
                "sets.b",
                &[r#"reads the same files as set "a" (/etc/tls/tls.crt)"#],
            )],
        },
        Case {
            what: "only the key is shared",
            yaml: "\
admin-listen: 127.0.0.1:0
sets:
  a:
    cert-dir: /x
  b:
    cert: /y/tls.crt
    key: /x/tls.key
    ca: /y/ca.crt
watch:
  - credentials: a
    exec: [/bin/true]
",
            errors: &[at(
                5,
                "sets.b",
                &[r#"reads the same files as set "a" (/x/tls.key)"#],
            )],
        },
    ]);
}

#[test]
fn a_directory_and_a_symlink_to_it_are_the_same_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let yaml = format!(
        "\
admin-listen: 127.0.0.1:0
sets:
  a:
    cert-dir: {}
    expect-dns: [a.example]
  b:
    cert-dir: {}
    expect-dns: [b.example]
watch:
  - credentials: a
    exec: [/bin/true]
",
        real.display(),
        link.display()
    );
    assert_refused(&[Case {
        what: "a directory and a symlink to it",
        yaml: &yaml,
        errors: &[at(6, "sets.b", &[r#"reads the same files as set "a""#])],
    }]);
}

#[test]
fn a_key_with_nothing_after_it_is_empty() {
    assert_refused(&[Case {
        what: "listeners and watch without entries",
        yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
watch:
",
        errors: &[at(1, "", &["nothing to run", "listeners", "watch"])],
    }]);
    let yaml = "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
watch:
  - credentials: s
    exec: [/bin/true]
";
    let (_tmp, file) = config_file(yaml);
    let ran = run_config(&file, &["--check"]);
    let summary = format!(
        "{}: valid: 1 set(s), 0 listener(s), 1 watch entry\n",
        file.display()
    );
    assert_one_shot_ok(&ran, &summary);
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key() {
    assert_refused(&[
        Case {
            what: "a word as max-connections",
            yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    max-connections: many
",
            errors: &[at(9, "", &["max-connections"])],
        },
        Case {
            what: "a word as allow-all",
            yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
listeners:
  - name: in
    kind: server
    credentials: s
    allow-all: maybe
",
            errors: &[at(9, "", &["allow-all"])],
        },
        Case {
            what: "a name where a list is expected",
            yaml: "\
admin-listen: 127.0.0.1:0
sets:
  s:
    cert-dir: /etc/tls
    expect-dns: a.example
",
            errors: &[at(5, "", &["expect-dns"])],
        },
        Case {
            what: "a list where the file's mapping is expected",
            yaml: "\
- sets
- listeners
",
            errors: &[at(1, "", &["admin-listen", "sets", "listeners", "watch"])],
        },
    ]);
}

#[test]
fn a_bad_duration_is_quoted() {
    assert_refused(&[Case {
        what: "a word as a duration",
        yaml: "\
admin-listen: 127.0.0.1:0
debounce: soon
sets:
  s:
    cert-dir: /etc/tls
watch:
  - credentials: s
    exec: [/bin/true]
",
        errors: &[at(2, "debounce", &["\"soon\""])],
    }]);
}

#[test]
fn a_value_of_the_wrong_type_says_what_is_expected() {
    let sets = "admin-listen: 127.0.0.1:0\nsets:\n  s:\n    cert-dir: /etc/tls\n";
    let listener =
        format!("{sets}listeners:\n  - name: in\n    kind: server\n    credentials: s\n");
    let cases = [
        (
            format!("{listener}    max-connections: many\n"),
            at(
                9,
                "listeners[0].max-connections",
                &["expected a whole number", r#"(got "many")"#],
            ),
        ),
        (
            format!("{listener}    allow-all: maybe\n"),
            at(
                9,
                "listeners[0].allow-all",
                &["expected true or false", r#"(got "maybe")"#],
            ),
        ),
        (
            format!("{sets}    expect-dns: a.example\n"),
            at(5, "sets.s.expect-dns", &["expected a list", "`- a` lines"]),
        ),
        (
            format!("{sets}    ca: [a, b]\n"),
            at(5, "sets.s.ca", &["expected a single value"]),
        ),
        (
            format!("{sets}  t: /etc/tls\n"),
            at(5, "sets.t", &["expected a mapping of keys"]),
        ),
        (
            format!("{sets}watch:\n  - credentials: s\n    pid: -x\n"),
            at(7, "watch[0].pid", &["expected a whole number", r#""-x""#]),
        ),
        (
            "- sets\n- listeners\n".to_string(),
            at(1, "", &["the file must be a mapping of keys: admin-listen"]),
        ),
    ];
    for (yaml, expect) in cases {
        assert_refused(&[Case {
            what: &yaml,
            yaml: &yaml,
            errors: &[expect],
        }]);
    }
}
