//! The manifests under `deploy/` and the binary cannot drift apart. Every command line of ours in
//! them (the `command`/`args` of a container running the mtls-sidecar image, and any exec probe
//! that runs `/mtls-sidecar`) must name a real subcommand and only flags that subcommand's
//! `--help` lists; every `MTLS_SIDECAR_*` environment variable must be one the subcommand reads;
//! and the binary must accept the command line for real (a dry run with addresses and paths moved
//! into a temp dir). A `run --config FILE` command line is checked with its file: FILE must be a
//! key of a ConfigMap of the same kustomization (its configMapGenerator, or the rendered
//! ConfigMap) that the container mounts whole at FILE's directory, and `run --config FILE
//! --check`, then the dry run, must accept the file with its addresses and paths moved the same
//! way. No credential volume may be mounted with `subPath` (kubelet never updates such a mount),
//! and the alerts may only use documented metric names (ours; cert-manager's, kube-state-metrics'
//! and `up` are allowed by name).
//!
//! The YAML files are checked as written and, when a kubectl with kustomize v5 is available
//! (`$KUBECTL`, `kubectl` on PATH, or the one `.ci/validate-deploy` installs), as rendered by
//! `kubectl kustomize`, so a kustomize patch cannot slip a flag past the test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{bin, bin_command};

/// How long a dry run may take to reach its admin endpoint (or, for `check`, to exit).
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// The subcommands that run until stopped (the others run once).
const LONG_RUNNING: &[&str] = &["server", "client", "watch", "run"];

/// Keys of a `run --config` file that name a file or directory, per set and per watch entry
/// (src/config/raw.rs): the dry run moves them like path flags.
const SET_PATH_KEYS: &[&str] = &["cert-dir", "cert", "key", "ca", "peer-ca"];
const WATCH_PATH_KEYS: &[&str] = &["stage-dir", "pid-file", "webhook-ca"];

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// === The manifests ===

/// One YAML document: the file it is in (relative to the repository; for a rendered document,
/// its kustomization.yaml), where exactly it came from (for messages), whether `kubectl
/// kustomize` rendered it, and its content.
pub(crate) struct Doc {
    pub(crate) file: PathBuf,
    pub(crate) origin: String,
    pub(crate) rendered: bool,
    pub(crate) value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn parse_stream(text: &str, file: &Path, origin: &str, rendered: bool) -> Vec<Doc> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{origin} is not valid YAML: {e}"));
    values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(i, value)| Doc {
            file: file.to_path_buf(),
            origin: format!("{origin} (document {})", i + 1),
            rendered,
            value,
        })
        .collect()
}

/// Every document of every `deploy/**/*.yaml`, as written.
pub(crate) fn source_docs() -> &'static [Doc] {
    static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let root = repo();
        let mut files = Vec::new();
        yaml_files(&root.join("deploy"), &mut files);
        assert!(!files.is_empty(), "no YAML files under deploy/");
        files
            .iter()
            .flat_map(|path| {
                let text = fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let file = path.strip_prefix(&root).unwrap_or(path);
                parse_stream(&text, file, &file.display().to_string(), false)
            })
            .collect()
    })
}

/// A kubectl whose kustomize is v5 or newer, if there is one.
fn kubectl() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(k) = std::env::var_os("KUBECTL") {
        candidates.push(k.into());
    }
    if let Some(k) = crate::support::find_tool("kubectl") {
        candidates.push(k);
    }
    // Where .ci/validate-deploy installs one when PATH has none.
    let cache = std::env::var_os("CI_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|d| PathBuf::from(d).join("mtls-sidecar-ci"))
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache/mtls-sidecar-ci"))
                })
        });
    if let Some(dir) = cache {
        candidates.push(dir.join("bin/kubectl"));
    }
    candidates.into_iter().find(|k| {
        let Ok(out) = Command::new(k)
            .args(["version", "--client", "-o", "json"])
            .output()
        else {
            return false;
        };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["kustomizeVersion"]
            .as_str()
            .and_then(|s| {
                s.trim_start_matches('v')
                    .split('.')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .is_some_and(|major| major >= 5)
    })
}

/// Every document of every kustomization under `deploy/`, as `kubectl kustomize` renders it, or
/// `None` without a suitable kubectl.
fn rendered_docs() -> Option<&'static [Doc]> {
    static DOCS: OnceLock<Option<Vec<Doc>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let Some(kubectl) = kubectl() else {
            eprintln!(
                "note: no kubectl with kustomize >= v5 (set $KUBECTL, or run .ci/validate-deploy): \
                 checking deploy/ as written only, not as rendered"
            );
            return None;
        };
        let root = repo();
        let mut docs = Vec::new();
        for doc in source_docs() {
            if doc.value["kind"] != "Kustomization" {
                continue;
            }
            let dir = doc
                .file
                .parent()
                .expect("kustomization.yaml has a directory");
            let out = Command::new(&kubectl)
                .arg("kustomize")
                .arg(root.join(dir))
                .output()
                .expect("run kubectl kustomize");
            assert!(
                out.status.success(),
                "kubectl kustomize {} failed:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let origin = format!("kubectl kustomize {}", dir.display());
            docs.extend(parse_stream(
                &String::from_utf8_lossy(&out.stdout),
                &doc.file,
                &origin,
                true,
            ));
        }
        Some(docs)
    })
    .as_deref()
}

/// The documents to check: as written, and as rendered when possible.
fn all_docs() -> impl Iterator<Item = &'static Doc> {
    source_docs().iter().chain(rendered_docs().unwrap_or(&[]))
}

/// Every pod spec in `v`: any mapping with a `containers` or `initContainers` list (a Pod, a
/// workload's template, or a patch of one).
fn pod_specs<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if map.get("containers").is_some_and(Value::is_array)
                || map.get("initContainers").is_some_and(Value::is_array)
            {
                out.push(v);
            }
            map.values().for_each(|child| pod_specs(child, out));
        }
        Value::Array(items) => items.iter().for_each(|child| pod_specs(child, out)),
        _ => {}
    }
}

/// (list name, container) for every container of a pod spec.
pub(crate) fn containers(pod: &Value) -> impl Iterator<Item = (&'static str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |list| {
            pod[list]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| (list, c))
        })
}

/// True if `image` is ours: repository `mtls-sidecar` (kustomize's name for it) or
/// `<registry>/<path>/mtls-sidecar`, any tag or digest.
fn is_our_image(image: &str) -> bool {
    let repo = image.split('@').next().unwrap_or(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next() == Some("mtls-sidecar")
}

/// True if `container` runs our binary: our image, or (a kustomize patch, which names no image)
/// the container name `mtls-sidecar` every manifest gives our sidecar.
pub(crate) fn is_ours(container: &Value) -> bool {
    match container["image"].as_str() {
        Some(image) => is_our_image(image),
        None => container["name"] == "mtls-sidecar",
    }
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// `MTLS_SIDECAR_*` variables of a container: name, and value (`None` when set by `valueFrom`).
type Env = Vec<(String, Option<String>)>;

/// A command line of ours found in a manifest: the arguments after the binary, the
/// `MTLS_SIDECAR_*` environment it gets, and the files of the ConfigMaps its container mounts.
#[derive(Clone, Debug)]
struct CommandLine {
    origin: String,
    argv: Vec<String>,
    env: Env,
    files: Files,
}

/// Path in the container -> text: every file of the ConfigMap volumes a container mounts whole.
type Files = BTreeMap<String, String>;

fn is_our_binary(program: &str) -> bool {
    Path::new(program).file_name().and_then(|n| n.to_str()) == Some("mtls-sidecar")
}

/// Exec probes and lifecycle hooks of `container` that run our binary.
fn exec_command_lines(container: &Value, at: &str, out: &mut Vec<CommandLine>) {
    let hooks = [
        ("startupProbe", &container["startupProbe"]),
        ("readinessProbe", &container["readinessProbe"]),
        ("livenessProbe", &container["livenessProbe"]),
        ("lifecycle.postStart", &container["lifecycle"]["postStart"]),
        ("lifecycle.preStop", &container["lifecycle"]["preStop"]),
    ];
    for (name, hook) in hooks {
        let command = strings(&hook["exec"]["command"]);
        if let Some((program, rest)) = command.split_first() {
            if is_our_binary(program) {
                out.push(CommandLine {
                    origin: format!("{at} {name}"),
                    argv: rest.to_vec(),
                    env: Vec::new(),
                    files: Files::new(),
                });
            }
        }
    }
}

/// The files (key -> text) of ConfigMap `name` as the kustomization of `doc` makes it: a
/// ConfigMap of the same render (for a rendered `doc`) or of the same directory (as written),
/// else, as written, the configMapGenerator of the kustomization.yaml next to `doc`, read from
/// that directory.
fn config_map_files(doc: &Doc, docs: &[&Doc], name: &str) -> Option<BTreeMap<String, String>> {
    let dir = doc.file.parent()?;
    let same_kustomization = |d: &Doc| {
        d.rendered == doc.rendered
            && if doc.rendered {
                d.file == doc.file
            } else {
                d.file.parent() == Some(dir)
            }
    };
    let found = docs.iter().find(|d| {
        same_kustomization(d)
            && d.value["kind"] == "ConfigMap"
            && d.value["metadata"]["name"] == name
    });
    if let Some(config_map) = found {
        let data = config_map.value["data"].as_object()?;
        return Some(
            data.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        );
    }
    if doc.rendered {
        return None;
    }
    let kustomization = docs
        .iter()
        .find(|d| same_kustomization(d) && d.value["kind"] == "Kustomization")?;
    let generator = kustomization.value["configMapGenerator"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == name)?;
    Some(
        strings(&generator["files"])
            .into_iter()
            .map(|entry| {
                let (key, file) = entry.split_once('=').unwrap_or((&entry, &entry));
                let path = repo().join(dir).join(file);
                let text = fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                (key.to_string(), text)
            })
            .collect(),
    )
}

/// Every file container `c` of `pod` (in `doc`) sees from a ConfigMap volume it mounts whole,
/// by its path in the container. A subPath mount is the other test's to report.
fn mounted_files(doc: &Doc, docs: &[&Doc], pod: &Value, c: &Value) -> Files {
    let mut files = Files::new();
    for mount in c["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(at), Some(volume)) = (mount["mountPath"].as_str(), mount["name"].as_str()) else {
            continue;
        };
        if mount.get("subPath").is_some() || mount.get("subPathExpr").is_some() {
            continue;
        }
        let source = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume)
            .map(|v| &v["configMap"]);
        let Some(name) = source.and_then(|s| s["name"].as_str()) else {
            continue;
        };
        let items = source.and_then(|s| s["items"].as_array());
        for (key, text) in config_map_files(doc, docs, name).unwrap_or_default() {
            // With `items`, only the listed keys appear, each at its `path`.
            let rel = match items {
                None => key,
                Some(items) => match items.iter().find(|i| i["key"] == key.as_str()) {
                    Some(item) => item["path"].as_str().unwrap_or(&key).to_string(),
                    None => continue,
                },
            };
            files.insert(format!("{}/{rel}", at.trim_end_matches('/')), text);
        }
    }
    files
}

/// Every command line of ours in `docs`; and problems: an `MTLS_SIDECAR_*` variable set on a
/// container that is not ours (only our binary reads them), a `command` that replaces our
/// entrypoint with another program.
fn command_lines<'a>(docs: impl Iterator<Item = &'a Doc>) -> (Vec<CommandLine>, Vec<String>) {
    let docs: Vec<&Doc> = docs.collect();
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for &doc in &docs {
        let mut pods = Vec::new();
        pod_specs(&doc.value, &mut pods);
        for pod in pods {
            for (list, c) in containers(pod) {
                let at = format!(
                    "{}: {list}/{}",
                    doc.origin,
                    c["name"].as_str().unwrap_or("?")
                );
                exec_command_lines(c, &at, &mut lines);
                let env: Env = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let name = e["name"].as_str()?;
                        name.starts_with("MTLS_SIDECAR_")
                            .then(|| (name.to_string(), e["value"].as_str().map(str::to_string)))
                    })
                    .collect();
                if !is_ours(c) {
                    problems.extend(env.iter().map(|(name, _)| {
                        format!("{at}: {name} is set on a container that does not run mtls-sidecar")
                    }));
                    continue;
                }
                let command = strings(&c["command"]);
                let args = strings(&c["args"]);
                if command.is_empty() && args.is_empty() {
                    // A patch that changes something else (resources, mounts) of our sidecar.
                    if c["image"].is_null() {
                        continue;
                    }
                }
                let mut argv = Vec::new();
                if let Some((program, rest)) = command.split_first() {
                    if !is_our_binary(program) {
                        problems.push(format!(
                            "{at}: `command` runs {program:?}, not /mtls-sidecar \
                             (the image's entrypoint)"
                        ));
                        continue;
                    }
                    argv.extend_from_slice(rest);
                }
                argv.extend(args);
                lines.push(CommandLine {
                    origin: at,
                    argv,
                    env,
                    files: mounted_files(doc, &docs, pod, c),
                });
            }
        }
    }
    (lines, problems)
}

// === The binary's own description of its CLI ===

/// What `--help` lists for one (sub)command.
#[derive(Debug, Default)]
struct Help {
    /// Long flag name (without `--`) -> whether it takes a value.
    flags: BTreeMap<String, bool>,
    /// The `MTLS_SIDECAR_*` variables it reads (`[env: NAME=]`).
    env: BTreeSet<String>,
}

struct Cli {
    /// Options before the subcommand.
    global: Help,
    subcommands: BTreeMap<String, Help>,
}

fn help_text(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .expect("run mtls-sidecar --help");
    assert!(out.status.success(), "mtls-sidecar {args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    for line in text.lines() {
        let trimmed = line.trim_start();
        // Option lines: `      --cert-dir <DIR>   ...` or `  -h, --help   ...`. Wrapped
        // descriptions are indented further, and may start with a flag name too.
        if !(1..=6).contains(&(line.len() - trimmed.len())) {
            continue;
        }
        let rest = match trimmed.split_once(", --") {
            Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
            _ => match trimmed.strip_prefix("--") {
                Some(rest) => rest,
                None => continue,
            },
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let takes_value = rest[name.len()..].starts_with(" <");
        help.flags.insert(name, takes_value);
    }
    // Wrapped help may split `[env: NAME=]` across lines; the `=` marks a variable it reads.
    let mut rest = text;
    while let Some(i) = rest.find("MTLS_SIDECAR_") {
        let tail = &rest[i..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if tail[name.len()..].starts_with('=') {
            help.env.insert(name.clone());
        }
        rest = &tail[name.len()..];
    }
    help
}

fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| {
        let top = help_text(&[]);
        let commands = top
            .split("Commands:")
            .nth(1)
            .expect("`mtls-sidecar --help` lists its commands")
            .split("\n\n")
            .next()
            .unwrap_or("");
        let mut subcommands = BTreeMap::new();
        for line in commands.lines() {
            // Command lines are indented by two spaces; wrapped descriptions by more.
            if line.starts_with("  ") && !line.starts_with("   ") {
                let name = line.split_whitespace().next().unwrap_or("");
                if !name.is_empty() && name != "help" {
                    subcommands.insert(name.to_string(), parse_help(&help_text(&[name])));
                }
            }
        }
        assert!(
            ["check", "server", "client", "watch"]
                .iter()
                .all(|s| subcommands.contains_key(*s)),
            "could not read the subcommands from --help: {:?}",
            subcommands.keys()
        );
        Cli {
            global: parse_help(&top),
            subcommands,
        }
    })
}

/// The subcommand of `line`, after checking every flag and variable against `--help`; or the
/// problems found.
fn check_against_help(line: &CommandLine) -> Result<String, Vec<String>> {
    let cli = cli();
    let mut problems = Vec::new();
    let mut tokens = line.argv.iter().peekable();
    // Global options may come before the subcommand.
    let sub = loop {
        let Some(token) = tokens.next() else {
            return Err(vec![format!(
                "{}: no subcommand in {:?}",
                line.origin, line.argv
            )]);
        };
        if let Some(flag) = token.strip_prefix("--") {
            let (name, inline) = flag
                .split_once('=')
                .map_or((flag, false), |(n, _)| (n, true));
            match cli.global.flags.get(name) {
                Some(&takes_value) => {
                    if takes_value && !inline {
                        tokens.next();
                    }
                }
                None => problems.push(format!(
                    "{}: `--{name}` before the subcommand is not a global option",
                    line.origin
                )),
            }
            continue;
        }
        break token.as_str();
    };
    let Some(help) = cli.subcommands.get(sub) else {
        return Err(vec![format!(
            "{}: `{sub}` is not a subcommand of mtls-sidecar (it has: {:?})",
            line.origin,
            cli.subcommands.keys()
        )]);
    };
    while let Some(token) = tokens.next() {
        if token == "--" {
            if sub != "watch" {
                problems.push(format!(
                    "{}: only `watch` takes a program after `--`",
                    line.origin
                ));
            }
            break;
        }
        let Some(flag) = token.strip_prefix("--") else {
            problems.push(format!(
                "{}: unexpected argument {token:?} (`{sub}` takes no positional arguments; \
                 use long flags)",
                line.origin
            ));
            continue;
        };
        let (name, inline) = flag
            .split_once('=')
            .map_or((flag, false), |(n, _)| (n, true));
        match help.flags.get(name) {
            None => problems.push(format!(
                "{}: `--{name}` is not a flag of `mtls-sidecar {sub}` \
                 (see `mtls-sidecar {sub} --help`)",
                line.origin
            )),
            Some(false) if inline => {
                problems.push(format!("{}: `--{name}` takes no value", line.origin))
            }
            Some(true) if !inline => {
                if tokens.next().is_none() {
                    problems.push(format!("{}: `--{name}` needs a value", line.origin));
                }
            }
            Some(_) => {}
        }
    }
    for (name, _) in &line.env {
        if !help.env.contains(name) {
            problems.push(format!(
                "{}: `mtls-sidecar {sub}` does not read the variable {name}",
                line.origin
            ));
        }
    }
    if problems.is_empty() {
        Ok(sub.to_string())
    } else {
        Err(problems)
    }
}

// === Dry runs ===

/// A child process killed (and reaped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `arg` with an absolute path (also a `unix:` one) moved under `root`, so a dry run never
/// touches the real paths.
fn relocate(value: &str, root: &Path) -> String {
    if let Some(path) = value.strip_prefix("unix:") {
        return format!("unix:{}", relocate(path, root));
    }
    match value.strip_prefix('/') {
        Some(rel) => root.join(rel).display().to_string(),
        None => value.to_string(),
    }
}

/// A listening address for a dry run: a free port on loopback; a client listener keeps its host
/// (so its loopback rule still applies).
fn dry_run_listen(addr: &str, client: bool) -> String {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) if client => host,
        _ => "127.0.0.1",
    };
    format!("{host}:0")
}

/// A `run --config` file moved out of the way as `dry_run` moves flags: the admin endpoint to
/// `127.0.0.1:0`, each listener to a free port (a server listener without `listen` too, which
/// would bind 0.0.0.0:8443), every path of a set or watch entry under `root`.
fn relocate_config(config: &mut Value, root: &Path) {
    let move_paths = |entry: &mut Value, keys: &[&str]| {
        for key in keys {
            if let Some(path) = entry.get_mut(*key) {
                if let Some(s) = path.as_str() {
                    *path = Value::String(relocate(s, root));
                }
            }
        }
    };
    config["admin-listen"] = "127.0.0.1:0".into();
    for set in config
        .get_mut("sets")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        move_paths(set, SET_PATH_KEYS);
    }
    for l in config
        .get_mut("listeners")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let client = l["kind"] == "client";
        let listen = dry_run_listen(l["listen"].as_str().unwrap_or(""), client);
        if !client || l.get("listen").is_some() {
            l["listen"] = listen.into();
        }
        move_paths(l, &["target"]);
    }
    for w in config
        .get_mut("watch")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        move_paths(w, WATCH_PATH_KEYS);
    }
}

/// For `run`: the file its `--config` (or `MTLS_SIDECAR_CONFIG`) names must be one the container
/// mounts from a ConfigMap of its kustomization. Moved out of the way (`relocate_config`), it
/// is written where the dry run's relocated `--config` points, and `run --config FILE --check`
/// must accept it.
fn prepare_run_config(line: &CommandLine, root: &Path) -> Result<(), String> {
    let path = config_flag(&line.argv)
        .or_else(|| {
            line.env
                .iter()
                .find(|(name, _)| name == "MTLS_SIDECAR_CONFIG")
                .and_then(|(_, v)| v.clone())
        })
        .ok_or_else(|| format!("{}: `run` without --config", line.origin))?;
    let text = line.files.get(&path).ok_or_else(|| {
        format!(
            "{}: --config {path}: no ConfigMap of this kustomization (configMapGenerator) is \
             mounted with that file; the container's ConfigMap files: {:?}",
            line.origin,
            line.files.keys()
        )
    })?;
    let mut config: Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("{}: --config {path} is not YAML: {e}", line.origin))?;
    if !config.is_object() {
        return Err(format!("{}: --config {path} is no mapping", line.origin));
    }
    relocate_config(&mut config, root);
    let file = PathBuf::from(relocate(&path, root));
    fs::create_dir_all(file.parent().expect("an absolute path has a parent")).expect("mkdir");
    let yaml = serde_saphyr::to_string(&config).expect("a JSON value is YAML");
    fs::write(&file, &yaml).expect("write the config file");
    let mut check = bin_command();
    check.args(["run", "--config"]).arg(&file).arg("--check");
    let out = check.output().expect("run mtls-sidecar run --check");
    if !out.status.success() {
        return Err(format!(
            "{}: `mtls-sidecar run --config {path} --check` failed ({}) on the file, \
             moved:\n{yaml}\n{}{}",
            line.origin,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The value of `--config` in `argv`.
fn config_flag(argv: &[String]) -> Option<String> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
        if a == "--config" {
            return it.next().cloned();
        }
    }
    None
}

/// Runs `line` for real, moved out of the way: listeners get a free port on loopback (`client`
/// keeps its host, so its loopback rule still applies), the admin endpoint moves to
/// `127.0.0.1:0`, absolute paths move into a temp dir (where the credentials do not exist, which
/// is not an error: the sidecar waits for them); `run` gets its config file, moved the same way
/// (`prepare_run_config`). A long-running subcommand passes once its admin endpoint listens;
/// `check` passes when it exits 0 (valid) or 1 (invalid), not 2 (usage).
fn dry_run(line: &CommandLine, sub: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    if sub == "run" {
        prepare_run_config(line, &root)?;
    }
    let mut argv: Vec<String> = Vec::new();
    let mut tokens = line.argv.iter();
    let mut program_args = false;
    while let Some(token) = tokens.next() {
        if program_args || token == "--" {
            program_args = true;
            argv.push(token.clone());
            continue;
        }
        let (flag, value) = match token.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (token.clone(), None),
        };
        if !flag.starts_with("--") {
            argv.push(relocate(&flag, &root));
            continue;
        }
        let takes_value = cli()
            .subcommands
            .get(sub)
            .and_then(|h| h.flags.get(&flag[2..]))
            .or_else(|| cli().global.flags.get(&flag[2..]))
            .copied()
            .unwrap_or(false);
        let value = match value {
            Some(v) => Some(v),
            None if takes_value => tokens.next().cloned(),
            None => None,
        };
        match (flag.as_str(), value) {
            // Ours, below.
            ("--admin-listen" | "--log-format", _) => {}
            ("--listen", Some(v)) => {
                argv.extend(["--listen".into(), dry_run_listen(&v, sub == "client")]);
            }
            (_, Some(v)) => argv.extend([flag.clone(), relocate(&v, &root)]),
            (_, None) => argv.push(flag.clone()),
        }
    }
    // The subcommand comes first in argv (checked before); our options go right after it.
    let at = argv.iter().position(|a| a == sub).map_or(0, |i| i + 1);
    let mut extra = vec!["--log-format".to_string(), "json".to_string()];
    // `run` has no --admin-listen: its file says where (moved to 127.0.0.1:0 above).
    if !matches!(sub, "check" | "run") {
        extra.extend(["--admin-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    argv.splice(at..at, extra);

    let log_path = dir.path().join("log");
    let log = fs::File::create(&log_path).expect("create log");
    let mut cmd = bin_command();
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    // Variables set from a Secret or ConfigMap (`valueFrom`) have no value to try here.
    for (name, value) in &line.env {
        if let Some(value) = value {
            cmd.env(name, relocate(value, &root));
        }
    }
    let mut child = Running(cmd.spawn().expect("spawn mtls-sidecar"));
    let deadline = Instant::now() + DRY_RUN_TIMEOUT;
    let output = || fs::read_to_string(&log_path).unwrap_or_default();
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return match status.code() {
                Some(0 | 1) if sub == "check" => Ok(()),
                _ => Err(format!(
                    "{}: `mtls-sidecar {}` exited ({status}):\n{}",
                    line.origin,
                    argv.join(" "),
                    output()
                )),
            };
        }
        if sub != "check" && output().contains("admin endpoint listening") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: `mtls-sidecar {}` neither exited nor started its admin endpoint within \
                 {DRY_RUN_TIMEOUT:?}:\n{}",
                line.origin,
                argv.join(" "),
                output()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === Tests ===

fn fail_on(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_flag_in_the_manifests_is_a_flag_of_the_binary() {
    let (lines, mut problems) = command_lines(all_docs());
    let mut seen = BTreeSet::new();
    for line in &lines {
        match check_against_help(line) {
            Ok(sub) => {
                seen.insert(sub);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    // Guards against a walk that silently finds nothing.
    for sub in ["check", "server", "client", "watch", "run"] {
        if !seen.contains(sub) {
            problems.push(format!(
                "no manifest under deploy/ runs `mtls-sidecar {sub}`"
            ));
        }
    }
    fail_on(problems);
}

#[test]
fn every_command_line_in_the_manifests_is_accepted_by_the_binary() {
    let (lines, _) = command_lines(all_docs());
    // The rendered copies repeat the written ones: run each distinct command line once.
    let mut distinct: BTreeMap<(Vec<String>, Env, Files), &CommandLine> = BTreeMap::new();
    for line in &lines {
        distinct
            .entry((line.argv.clone(), line.env.clone(), line.files.clone()))
            .or_insert(line);
    }
    let mut problems = Vec::new();
    let mut long_running = 0;
    for line in distinct.values() {
        // Flag problems are the other test's to report.
        let Ok(sub) = check_against_help(line) else {
            continue;
        };
        long_running += usize::from(LONG_RUNNING.contains(&sub.as_str()));
        if let Err(e) = dry_run(line, &sub) {
            problems.push(e);
        }
    }
    assert!(
        long_running > 0,
        "no long-running sidecar found under deploy/"
    );
    fail_on(problems);
}

#[test]
fn no_credential_volume_is_mounted_with_subpath() {
    // A subPath mount is a bind mount of one path at pod start: kubelet's `..data` swap never
    // reaches it, so a renewed certificate would never arrive (KUBELET.md). Credential volumes:
    // every Secret, ConfigMap, projected or downwardAPI volume (kubelet updates those), and any
    // volume our sidecar mounts (its inputs, and the --stage-dir it swaps itself).
    const UPDATED_BY_KUBELET: &[&str] = &["secret", "configMap", "projected", "downwardAPI"];
    let mut problems = Vec::new();
    let mut mounts_seen = 0;
    for doc in all_docs() {
        let mut pods = Vec::new();
        pod_specs(&doc.value, &mut pods);
        for pod in pods {
            let volume_kinds: BTreeMap<&str, Vec<&str>> = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    let name = v["name"].as_str()?;
                    let kinds = v.as_object()?.keys().map(String::as_str).collect();
                    Some((name, kinds))
                })
                .collect();
            let ours: BTreeSet<&str> = containers(pod)
                .filter(|(_, c)| is_ours(c))
                .flat_map(|(_, c)| c["volumeMounts"].as_array().into_iter().flatten())
                .filter_map(|m| m["name"].as_str())
                .collect();
            for (list, c) in containers(pod) {
                for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                    mounts_seen += 1;
                    let Some(sub_path) = mount.get("subPath").or(mount.get("subPathExpr")) else {
                        continue;
                    };
                    let name = mount["name"].as_str().unwrap_or("?");
                    let credential = ours.contains(name)
                        || is_ours(c)
                        // A volume defined elsewhere (a patch): assume the worst.
                        || volume_kinds.get(name).is_none_or(|kinds| {
                            kinds.iter().any(|k| UPDATED_BY_KUBELET.contains(k))
                        });
                    if credential {
                        problems.push(format!(
                            "{}: {list}/{} mounts volume `{name}` with subPath {sub_path}: kubelet \
                             never updates a subPath mount; mount the whole volume instead",
                            doc.origin,
                            c["name"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    assert!(mounts_seen > 0, "no volumeMounts found under deploy/");
    fail_on(problems);
}

/// Metrics the alerts may use that are not ours, by name: cert-manager's (its own `/metrics`),
/// kube-state-metrics', and Prometheus' `up`. They are not checked against our README.
const FOREIGN_METRIC_PREFIXES: &[&str] = &["certmanager_", "kube_"];
const FOREIGN_METRICS: &[&str] = &["up"];

/// The metric names of the selectors in a PromQL expression: each identifier right before `{`.
fn selector_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in expr.match_indices('{') {
        let name: String = expr[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[test]
fn alerts_use_only_documented_metric_names() {
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("mtls_sidecar_") {
            let tail = &rest[i..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &tail[name.len()..];
            names.insert(name);
        }
        names
    }
    let readme = fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let documented = metric_names(&readme);
    assert!(
        !documented.is_empty(),
        "README.md documents no metric names"
    );
    let mut used = BTreeMap::new();
    let mut problems = Vec::new();
    for doc in source_docs() {
        if doc.value["kind"] != "PrometheusRule" {
            continue;
        }
        for group in doc.value["spec"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let expr = rule["expr"].as_str().unwrap_or_default();
                for name in metric_names(expr) {
                    used.insert(name, doc.origin.clone());
                }
                // Every other selector must be a known exporter's metric: a typo in ours
                // (`mtls_sidcar_...`) or an unknown name would make an alert that never fires.
                for name in selector_names(expr) {
                    let foreign = FOREIGN_METRICS.contains(&name.as_str())
                        || FOREIGN_METRIC_PREFIXES.iter().any(|p| name.starts_with(p));
                    if !name.starts_with("mtls_sidecar_") && !foreign {
                        problems.push(format!(
                            "{}: {name} is neither ours nor in FOREIGN_METRIC_PREFIXES / \
                             FOREIGN_METRICS",
                            doc.origin
                        ));
                    }
                }
            }
        }
    }
    assert!(
        !used.is_empty(),
        "no PrometheusRule under deploy/ uses mtls-sidecar metrics"
    );
    problems.extend(
        used.iter()
            .filter(|(name, _)| {
                // A histogram's series: name_bucket, name_sum, name_count.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                !documented.contains(*name) && !documented.contains(base)
            })
            .map(|(name, origin)| format!("{origin}: {name} is not a metric the README documents")),
    );
    fail_on(problems);
}
