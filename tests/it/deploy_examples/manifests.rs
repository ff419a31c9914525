//! The examples as written: their Deployment, Service and kustomization, and the Certificates
//! of `deploy/` that make their Secrets.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::deploy_manifests::{containers, is_ours, repo, source_docs, strings};
use crate::support::pki::{Eku, LeafSpec};

/// The Certificate of `deploy/` that writes Secret `secret`, as a `LeafSpec` (CN, DNS names, URI
/// SANs, O, OU, and the EKUs of its usages); keys stay `TestPki`'s default (ECDSA P-256, as
/// `deploy/`).
pub(super) fn certificate_spec(secret: &str) -> LeafSpec {
    let found: Vec<&Value> = source_docs()
        .iter()
        .map(|d| &d.value)
        .filter(|v| v["kind"] == "Certificate" && v["spec"]["secretName"] == secret)
        .collect();
    let [cert] = found[..] else {
        panic!(
            "expected one Certificate under deploy/ with secretName {secret}, found {}",
            found.len()
        );
    };
    let spec = &cert["spec"];
    let mut leaf = LeafSpec::new()
        .cn(spec["commonName"].as_str().unwrap_or(""))
        .dns(&strings(&spec["dnsNames"]))
        .uris(&strings(&spec["uris"]));
    let subject = &spec["subject"];
    let one = |key: &str| {
        let values = strings(&subject[key]);
        assert!(values.len() <= 1, "{secret}: more than one {key}");
        values.into_iter().next()
    };
    if let Some(o) = one("organizations") {
        leaf = leaf.subject_o(o);
    }
    if let Some(ou) = one("organizationalUnits") {
        leaf = leaf.subject_ou(ou);
    }
    let usages = strings(&spec["usages"]);
    let has = |usage: &str| usages.iter().any(|u| u == usage);
    leaf.eku(match (has("server auth"), has("client auth")) {
        (true, true) => Eku::Both,
        (true, false) => Eku::Server,
        (false, true) => Eku::Client,
        (false, false) => Eku::None,
    })
}

/// The key of the CA bundle ConfigMap `name`, if trust-manager's `Bundle` under `deploy/` writes
/// it (the walkthrough's step 4; made by hand, it has the same name and key).
pub(super) fn ca_bundle_key(name: &str) -> Option<String> {
    source_docs()
        .iter()
        .map(|d| &d.value)
        .find(|v| v["kind"] == "Bundle" && v["metadata"]["name"] == name)
        .map(|v| {
            v["spec"]["target"]["configMap"]["key"]
                .as_str()
                .unwrap_or_else(|| panic!("Bundle {name} has no target.configMap.key"))
                .to_string()
        })
}

/// A container's whole command line: `command` (the image's entrypoint when empty) then `args`.
pub(super) fn command_line(c: &Value) -> Vec<String> {
    let mut argv = strings(&c["command"]);
    argv.extend(strings(&c["args"]));
    argv
}

/// The value of `--name` in `args` (`--name=VALUE` or `--name VALUE`).
pub(super) fn flag(args: &[String], name: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
        if a == name {
            return it.next().cloned();
        }
    }
    None
}

pub(super) fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// One example directory as written: its Deployment, Service and kustomization.
pub(super) struct Example {
    pub(super) name: &'static str,
    docs: Vec<&'static Value>,
}

impl Example {
    pub(super) fn load(name: &'static str) -> Example {
        let dir = Path::new("deploy/examples").join(name);
        let docs: Vec<&Value> = source_docs()
            .iter()
            .filter(|d| d.file.parent() == Some(dir.as_path()))
            .map(|d| &d.value)
            .collect();
        assert!(!docs.is_empty(), "no YAML in {}", dir.display());
        Example { name, docs }
    }

    /// The one document of `kind`.
    pub(super) fn doc(&self, kind: &str) -> &'static Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .copied()
            .filter(|v| v["kind"] == kind)
            .collect();
        let [doc] = found[..] else {
            panic!("{}: expected one {kind}, found {}", self.name, found.len());
        };
        doc
    }

    /// The Deployment's pod spec.
    pub(super) fn pod(&self) -> &'static Value {
        &self.doc("Deployment")["spec"]["template"]["spec"]
    }

    pub(super) fn containers(&self) -> impl Iterator<Item = (&'static str, &'static Value)> {
        containers(self.pod())
    }

    /// Our native sidecar: the init container running our image with `restartPolicy: Always`.
    pub(super) fn sidecar(&self) -> &'static Value {
        let found: Vec<&Value> = self
            .containers()
            .filter(|(list, c)| {
                *list == "initContainers" && is_ours(c) && c["restartPolicy"] == "Always"
            })
            .map(|(_, c)| c)
            .collect();
        let [c] = found[..] else {
            panic!("{}: expected one native sidecar of ours", self.name);
        };
        c
    }

    /// The init containers that run to completion, in order, before the sidecar starts.
    pub(super) fn init_containers(&self) -> Vec<&'static Value> {
        self.containers()
            .filter(|(list, c)| *list == "initContainers" && c["restartPolicy"] != "Always")
            .map(|(_, c)| c)
            .collect()
    }

    /// The app: the one entry of `containers`.
    pub(super) fn app(&self) -> &'static Value {
        let found: Vec<&Value> = self
            .containers()
            .filter(|(list, _)| *list == "containers")
            .map(|(_, c)| c)
            .collect();
        let [c] = found[..] else {
            panic!("{}: expected one app container", self.name);
        };
        c
    }

    /// The files of the ConfigMap `name` made by the kustomization's configMapGenerator: (key,
    /// text), read from the example's directory.
    pub(super) fn generated_config_map(&self, name: &str) -> Option<Vec<(String, String)>> {
        let generator = self.doc("Kustomization")["configMapGenerator"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == name)?;
        let dir = repo().join("deploy/examples").join(self.name);
        Some(
            strings(&generator["files"])
                .into_iter()
                .map(|entry| {
                    let (key, file) = entry.split_once('=').unwrap_or((&entry, &entry));
                    let path = dir.join(file);
                    let text = fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                    (key.to_string(), text)
                })
                .collect(),
        )
    }
}
