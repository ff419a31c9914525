//! README's config file reference comes from the code, like the flag reference: the keys and
//! their meaning are the doc comments of `src/config/raw.rs` (the one raw model of files and
//! flags), and the defaults are what `run --config FILE --print` fills in for a minimal file.
//! Both live between `<!-- config: NAME -->` and `<!-- /config -->` markers. This test fails
//! when they differ from the code, showing the block to paste; `UPDATE_README=1 cargo test
//! readme_config` rewrites README.md itself. It also fails when a key has no doc comment.

use std::path::{Path, PathBuf};

use crate::support::bin_command;

/// The raw structs, in README order, with the heading of their table.
const STRUCTS: [(&str, &str); 4] = [
    ("RawConfig", "Top level"),
    ("RawSet", "`sets.NAME`: a credential set"),
    ("RawListener", "`listeners[]`: a listener"),
    (
        "RawWatch",
        "`watch[]`: actions after each validated change of a set",
    ),
];

/// The minimal file whose `--print` shows the defaults.
const MINIMAL: &str = "\
sets:
  service:
    cert-dir: /etc/tls/service
listeners:
  - name: inbound
    kind: server
    credentials: service
    target: 127.0.0.1:8080
    allow-uri: [spiffe://cluster.local/ns/production/sa/web-app]
  - name: outbound
    kind: client
    credentials: service
    listen: 127.0.0.1:15001
    target: api.production.svc.cluster.local:443
watch:
  - credentials: service
    signal: HUP
    pid-file: /run/nginx/nginx.pid
";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One key of a raw struct: (kebab-case name, its doc comment on one line).
type Key = (String, String);

/// The keys of `name` in `source` (the text of raw.rs), in order. Panics on a key without a
/// doc comment: the reference would have a hole.
fn keys(source: &str, name: &str) -> Vec<Key> {
    let start = source
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("raw.rs has no `pub struct {name}`"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("struct ends")];
    let mut keys = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    let mut in_attribute = false;
    for line in body.lines().skip(1).map(str::trim) {
        // Attributes (`#[serde(...)]`, over one line or several) sit between a doc and its field.
        if in_attribute || line.starts_with("#[") {
            in_attribute = !line.ends_with(']');
            continue;
        }
        if let Some(text) = line.strip_prefix("///") {
            doc.push(text.trim());
        } else if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split(':').next()) {
            assert!(
                !doc.is_empty(),
                "src/config/raw.rs: {name}.{field} has no doc comment (the README's config \
                 reference is made of them)"
            );
            keys.push((field.replace('_', "-"), doc.join(" ")));
            doc.clear();
        } else {
            doc.clear();
        }
    }
    keys
}

fn reference(source: &str) -> String {
    let mut out = String::new();
    for (name, heading) in STRUCTS {
        out.push_str(&format!(
            "\n**{heading}**\n\n| key | meaning |\n|---|---|\n"
        ));
        for (key, doc) in keys(source, name) {
            out.push_str(&format!("| `{key}` | {} |\n", doc.replace('|', "\\|")));
        }
    }
    out
}

/// `run --config MINIMAL --print`, run from a temp dir holding the file.
fn printed() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, MINIMAL).expect("write config.yaml");
    let mut cmd = bin_command();
    let out = cmd
        .args(["run", "--config", "config.yaml", "--print"])
        .current_dir(dir.path())
        .output()
        .expect("run mtls-sidecar run --print");
    assert!(
        out.status.success(),
        "--print of the minimal file failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("--print is UTF-8")
}

fn defaults() -> String {
    format!(
        "\nThis file (`config.yaml`):\n\n```yaml\n{MINIMAL}```\n\n`mtls-sidecar run --config \
         config.yaml --print` shows:\n\n```yaml\n{}```\n",
        printed()
    )
}

fn section(name: &str, body: &str) -> String {
    format!("<!-- config: {name} -->\n{body}<!-- /config -->")
}

/// The byte range of block `name` in `text`, markers included.
fn find(text: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(&format!("<!-- config: {name} -->"))?;
    let end = start + text[start..].find("<!-- /config -->")? + "<!-- /config -->".len();
    Some(start..end)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn readme_config_reference_is_the_code() {
    let source = read(&root().join("src/config/raw.rs"));
    let path = root().join("README.md");
    let mut text = read(&path);
    let update = std::env::var_os("UPDATE_README").is_some();
    let mut stale = Vec::new();
    for (name, body) in [("keys", reference(&source)), ("defaults", defaults())] {
        let want = section(name, &body);
        match find(&text, name) {
            Some(range) if text[range.clone()] == want => {}
            Some(range) if update => text.replace_range(range, &want),
            Some(_) => stale.push(format!(
                "README.md: the `{name}` config block differs from the code; it should be:\n\n{want}\n"
            )),
            None => stale.push(format!(
                "README.md has no `<!-- config: {name} -->` block; add (in the config reference):\n\n{want}\n"
            )),
        }
    }
    if update {
        std::fs::write(&path, text).expect("write README.md");
    }
    assert!(
        stale.is_empty(),
        "{}\n(or run `UPDATE_README=1 cargo test readme_config`)",
        stale.join("\n")
    );
}

#[test]
fn every_raw_key_is_found() {
    let source = read(&root().join("src/config/raw.rs"));
    let top: Vec<String> = keys(&source, "RawConfig")
        .into_iter()
        .map(|k| k.0)
        .collect();
    assert_eq!(
        top,
        [
            "admin-listen",
            "poll-interval",
            "debounce",
            "shutdown-grace",
            "drain-delay",
            "sets",
            "listeners",
            "watch"
        ]
    );
    let listener = keys(&source, "RawListener");
    assert!(listener.iter().any(|k| k.0 == "max-connection-age"));
    assert!(keys(&source, "RawWatch").iter().any(|k| k.0 == "exec"));
}
