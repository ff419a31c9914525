//! A pod of an example, emulated here: its volumes, its Service, its containers' logs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::Value;
use tempfile::TempDir;

use super::manifests::{ca_bundle_key, certificate_spec, Example};
use crate::deploy_manifests::is_ours;
use crate::support::fixture::tls_files;
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::{Ca, Leaf, TestPki};

/// A Service in front of a pod: its cluster DNS name, and per Service port the container port it
/// targets, as a free port here.
pub(super) struct Service {
    /// `NAME.NAMESPACE.svc.cluster.local`
    pub(super) host: String,
    /// Every name cluster DNS answers for it (short forms included).
    aliases: Vec<String>,
    /// (Service port, port here).
    pub(super) ports: Vec<(u16, u16)>,
}

impl Service {
    /// The port here behind Service port `port`.
    pub(super) fn port(&self, port: u16) -> u16 {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .unwrap_or_else(|| panic!("Service {} has no port {port}", self.host))
            .1
    }
}

/// One pod of an example, emulated here (see the module docs). Fields drop in order: volumes
/// before the temp dir that holds them.
pub(super) struct Pod {
    pub(super) ex: Example,
    /// Volume name -> its directory.
    pub(super) volumes: BTreeMap<String, PathBuf>,
    /// The Secret and ConfigMap volumes, for kubelet-style updates.
    kubelet: BTreeMap<String, KubeletVolume>,
    /// Secret volume -> (secretName, the leaf it holds now).
    secrets: BTreeMap<String, (String, Leaf)>,
    pub(super) ca_pem: String,
    /// Port as the manifests give it -> free port here (allocated on first use).
    pub(super) ports: RefCell<BTreeMap<u16, u16>>,
    /// `host:port` of other pods' Services -> address here.
    pub(super) cluster_dns: BTreeMap<String, String>,
    pub(super) dir: TempDir,
}

impl Pod {
    /// The pod of `ex` with its volumes filled: Secrets issued by `pki.root` for the
    /// Certificates of `deploy/`, the CA bundle, the generated ConfigMaps (relocated).
    pub(super) fn new(ex: Example, pki: &TestPki) -> Pod {
        Self::calling(ex, pki, &[])
    }

    /// `new`, for a pod whose generated configs dial the Services of `others` (cluster DNS
    /// resolves them before the configs are relocated, see `resolve_service_of`).
    pub(super) fn calling(ex: Example, pki: &TestPki, others: &[&Pod]) -> Pod {
        let dir = tempfile::tempdir().expect("tempdir for the pod");
        // Reachable for the containers' users, as a pod's volumes are.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod pod");
        fs::create_dir_all(dir.path().join("logs")).expect("mkdir logs");
        let mut pod = Pod {
            ex,
            volumes: BTreeMap::new(),
            kubelet: BTreeMap::new(),
            secrets: BTreeMap::new(),
            ca_pem: pki.root.cert_pem.clone(),
            ports: RefCell::default(),
            cluster_dns: BTreeMap::new(),
            dir,
        };
        for other in others {
            pod.resolve_service_of(other);
        }
        let volumes = pod.ex.pod()["volumes"].as_array().expect("pod volumes");
        for v in volumes {
            let name = v["name"].as_str().expect("volume name").to_string();
            let path = pod.dir.path().join("volumes").join(&name);
            fs::create_dir_all(&path).expect("mkdir volume");
            pod.volumes.insert(name, path);
        }
        for v in volumes {
            let name = v["name"].as_str().expect("volume name").to_string();
            let path = pod.volumes[&name].clone();
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                let leaf = pki.issue(&certificate_spec(secret));
                let mut vol = KubeletVolume::new(path);
                vol.write(&tls_files(&leaf, &pod.ca_pem));
                pod.kubelet.insert(name.clone(), vol);
                pod.secrets.insert(name, (secret.to_string(), leaf));
            } else if let Some(config_map) = v["configMap"]["name"].as_str() {
                let files = match ca_bundle_key(config_map) {
                    Some(key) => vec![(key, pod.ca_pem.clone())],
                    None => pod.generated_config_map(&name, config_map),
                };
                let mut vol = KubeletVolume::new(path);
                vol.write(&files);
                pod.kubelet.insert(name, vol);
            } else if v.get("emptyDir").is_some() {
                // kubelet makes an emptyDir world-writable.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
                    .expect("chmod emptyDir");
            } else {
                panic!(
                    "{}: volume {name}: only secret, configMap and emptyDir volumes are \
                     emulated here",
                    pod.ex.name
                );
            }
        }
        pod
    }

    /// The files of generated ConfigMap `config_map` (volume `volume`), relocated for the one
    /// container that mounts it: nginx configs (`*.conf`), and our sidecar's `run --config`
    /// files (`*.yaml`).
    pub(super) fn generated_config_map(
        &self,
        volume: &str,
        config_map: &str,
    ) -> Vec<(String, String)> {
        let files = self.ex.generated_config_map(config_map).unwrap_or_else(|| {
            panic!(
                "{}: nothing here makes ConfigMap {config_map} (no generator, no Bundle)",
                self.ex.name
            )
        });
        let users: Vec<&Value> = self
            .ex
            .containers()
            .map(|(_, c)| c)
            .filter(|c| mounts(c).any(|(_, vol)| vol == volume))
            .collect();
        let [user] = users[..] else {
            panic!(
                "{}: ConfigMap volume {volume} should be mounted by one container",
                self.ex.name
            );
        };
        files
            .into_iter()
            .map(|(key, text)| {
                let origin = format!("deploy/examples/{}/{key}", self.ex.name);
                let text = if key.ends_with(".conf") {
                    self.relocate_nginx_conf(user, &text, &origin)
                } else if (key.ends_with(".yaml") || key.ends_with(".yml")) && is_ours(user) {
                    self.relocate_sidecar_config(user, &text, &origin)
                } else {
                    panic!(
                        "{}: ConfigMap {config_map}: only nginx configs and our sidecar's config \
                         files are relocated here, not {key}",
                        self.ex.name
                    );
                };
                (key, text)
            })
            .collect()
    }

    pub(super) fn name(c: &Value) -> &str {
        c["name"].as_str().unwrap_or("?")
    }

    /// A directory of this pod for the test's own files (curl's client files, say).
    pub(super) fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("scratch").join(name);
        fs::create_dir_all(&dir).expect("mkdir scratch");
        dir
    }

    /// Where the process of container `c` writes its stdout or stderr (`stream`).
    pub(super) fn log_path(&self, c: &Value, stream: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{}.{stream}", Self::name(c)))
    }

    /// Create container `c`'s log file for `stream`, owned by its user (nginx reopens
    /// `/dev/stdout` and `/dev/stderr`, which needs the right to open the file).
    pub(super) fn create_log(&self, c: &Value, stream: &str) -> fs::File {
        let path = self.log_path(c, stream);
        let file = fs::File::create(&path).expect("create log");
        if let Some((uid, gid)) = self.user(c) {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown log");
        }
        file
    }

    /// Container `c`'s stdout and stderr so far (for failure messages).
    pub(super) fn logs(&self, c: &Value) -> String {
        let read = |stream| fs::read_to_string(self.log_path(c, stream)).unwrap_or_default();
        format!(
            "--- {name} stdout ---\n{}--- {name} stderr ---\n{}",
            read("stdout"),
            read("stderr"),
            name = Self::name(c)
        )
    }

    /// The leaf Secret volume `volume` holds now.
    pub(super) fn leaf(&self, volume: &str) -> &Leaf {
        &self.secrets[volume].1
    }

    /// A renewal, as cert-manager issues it (`rotationPolicy: Always`: a new key): a new leaf
    /// for the Certificate of Secret volume `volume`.
    pub(super) fn renewal(&self, pki: &TestPki, volume: &str) -> Leaf {
        pki.issue(&certificate_spec(&self.secrets[volume].0))
    }

    /// cert-manager re-issues the Certificate of Secret volume `volume` from `ca` (its Issuer
    /// now points at that CA): a new leaf, a new key.
    pub(super) fn reissue_by(&self, pki: &TestPki, ca: &Ca, volume: &str) -> Leaf {
        pki.issue_by(ca, &certificate_spec(&self.secrets[volume].0))
    }

    /// kubelet delivers `leaf` (and the same CA) into Secret volume `volume`: one atomic swap.
    pub(super) fn publish(&mut self, volume: &str, leaf: &Leaf) {
        let ca_pem = self.ca_pem.clone();
        self.publish_issued(volume, leaf, &ca_pem);
    }

    /// `publish`, with `ca_pem` as the Secret's `ca.crt` (cert-manager's CA Issuer writes the
    /// CA that signed the leaf there).
    pub(super) fn publish_issued(&mut self, volume: &str, leaf: &Leaf, ca_pem: &str) {
        let files = tls_files(leaf, ca_pem);
        self.kubelet
            .get_mut(volume)
            .unwrap_or_else(|| panic!("no Secret volume {volume}"))
            .write(&files);
        self.secrets.get_mut(volume).expect("a Secret volume").1 = leaf.clone();
    }

    /// The CA bundle ConfigMap (trust-manager's target) now holds `ca_pem`: kubelet delivers it
    /// into every volume of it, one atomic swap each. Secrets keep their `ca.crt` (it changes
    /// with a new leaf: `publish_issued`).
    pub(super) fn publish_ca_bundle(&mut self, ca_pem: &str) {
        let volumes = self.ex.pod()["volumes"].as_array().expect("pod volumes");
        let mut delivered = 0;
        for v in volumes {
            let key = v["configMap"]["name"].as_str().and_then(ca_bundle_key);
            if let (Some(name), Some(key)) = (v["name"].as_str(), key) {
                let vol = self.kubelet.get_mut(name).expect("a ConfigMap volume");
                vol.write(&[(key, ca_pem)]);
                delivered += 1;
            }
        }
        assert!(delivered > 0, "{}: no CA bundle volume", self.ex.name);
        self.ca_pem = ca_pem.to_string();
    }
}

impl Pod {
    // --- Containers ---

    /// The pod's Service (the example's `Service`), its ports here.
    pub(super) fn service(&self) -> Service {
        let svc = self.ex.doc("Service");
        let name = svc["metadata"]["name"].as_str().expect("Service name");
        let namespace = self.ex.doc("Kustomization")["namespace"]
            .as_str()
            .expect("the kustomization sets a namespace");
        let ports = svc["spec"]["ports"]
            .as_array()
            .expect("Service ports")
            .iter()
            .map(|p| {
                let port = p["port"].as_u64().expect("Service port number") as u16;
                let target = self.service_target_port(&p["targetPort"]);
                (port, self.port(target))
            })
            .collect();
        Service {
            host: format!("{name}.{namespace}.svc.cluster.local"),
            aliases: vec![
                name.to_string(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            ports,
        }
    }

    /// The number of a container port of any container, given by number or by name (a probe's
    /// `port`; a Service's `targetPort` is `service_target_port`).
    pub(super) fn container_port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return n as u16;
        }
        let name = port.as_str().expect("a port number or name");
        self.ex
            .containers()
            .flat_map(|(_, c)| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.ex.name))
            as u16
    }

    /// The container port a Service's `targetPort` reaches, as the EndpointSlice controller
    /// resolves it before Kubernetes 1.33: a name is looked up in the regular containers only
    /// (kubernetes/kubernetes#127958, #128850), so a port named only on a native sidecar (an
    /// init container) reaches nothing there, and fails here.
    pub(super) fn service_target_port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return n as u16;
        }
        let name = port.as_str().expect("a port number or name");
        self.ex
            .containers()
            .filter(|(list, _)| *list == "containers")
            .flat_map(|(_, c)| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "{}: the Service's targetPort {name} is no port of a regular container: \
                     before Kubernetes 1.33 its endpoints get no port (a native sidecar's port \
                     needs its number)",
                    self.ex.name
                )
            }) as u16
    }

    /// Cluster DNS: `other`'s Service names resolve to `other` here.
    pub(super) fn resolve_service_of(&mut self, other: &Pod) {
        let svc = other.service();
        for alias in &svc.aliases {
            for (port, here) in &svc.ports {
                self.cluster_dns
                    .insert(format!("{alias}:{port}"), format!("127.0.0.1:{here}"));
            }
        }
    }
}

/// (mountPath, volume name) of every volumeMount of `c`.
pub(super) fn mounts(c: &Value) -> impl Iterator<Item = (&str, &str)> {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["mountPath"].as_str()?, m["name"].as_str()?)))
}

pub(super) fn runs_nginx_image(c: &Value) -> bool {
    let image = c["image"].as_str().unwrap_or("");
    let repo = image.split([':', '@']).next().unwrap_or(image);
    repo.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("nginx"))
}
