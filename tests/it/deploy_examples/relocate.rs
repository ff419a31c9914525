//! Moving what a container uses to this machine: paths through its volumeMounts, ports to free
//! ports on 127.0.0.1, Service names to the pod behind them, nginx configs line by line, and our
//! `run --config` files key by key.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::pod::{mounts, runs_nginx_image, Pod};
use crate::deploy_manifests::is_ours;
use crate::support::bin;

/// What `nginx` reads when started without `-c` in `nginxinc/nginx-unprivileged` (the app of
/// terminate-legacy-app): the stock image's `/etc/nginx/nginx.conf` with the unprivileged image's
/// `/tmp` paths, whose log files are links to `/dev/stdout` and `/dev/stderr`, and which
/// includes `/etc/nginx/conf.d/*.conf`, where the example mounts its ConfigMap. Trimmed to what
/// matters here (one worker, no mime types or log format).
const IMAGE_NGINX_CONF: &str = "\
worker_processes 1;
error_log /dev/stderr notice;
pid /tmp/nginx.pid;
events {}
http {
    proxy_temp_path /tmp/proxy_temp;
    client_body_temp_path /tmp/client_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    default_type application/octet-stream;
    access_log /dev/stdout;
    include /etc/nginx/conf.d/*.conf;
}
";

/// nginx directives whose first argument is a file or directory (relocated like any path).
const NGINX_PATH_DIRECTIVES: &[&str] = &[
    "pid",
    "error_log",
    "access_log",
    "include",
    "client_body_temp_path",
    "proxy_temp_path",
    "fastcgi_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_client_certificate",
    "ssl_trusted_certificate",
    "ssl_crl",
    "ssl_dhparam",
    "ssl_password_file",
    "root",
    "alias",
];

/// Keys of a `run --config` file that name a file or directory (src/config/raw.rs), per set and
/// per watch entry.
const CONFIG_SET_PATHS: &[&str] = &["cert-dir", "cert", "key", "ca", "peer-ca"];
const CONFIG_WATCH_PATHS: &[&str] = &["stage-dir", "pid-file", "webhook-ca"];
/// Keys of a `run --config` file that name an address or a URL: per listener, per watch entry.
const CONFIG_LISTENER_ADDRS: &[&str] = &["listen", "target"];
const CONFIG_WATCH_ADDRS: &[&str] = &["verify-addr", "webhook"];
/// Where a server listener without `listen` listens (src/config/defaults.rs).
const SERVER_LISTEN_DEFAULT: &str = "[::]:8443";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Pod {
    /// Port `port` of this pod, here.
    pub(super) fn port(&self, port: u16) -> u16 {
        *self
            .ports
            .borrow_mut()
            .entry(port)
            .or_insert_with(free_port)
    }

    /// `host:port` as a container of this pod dials or binds it, here: a local address (any
    /// address, loopback) becomes `127.0.0.1:PORT`; another pod's Service name, that pod's
    /// address. None if `addr` is no `host:port`.
    pub(super) fn addr(&self, addr: &str) -> Option<String> {
        let (host, port) = addr.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        match host {
            "" | "0.0.0.0" | "127.0.0.1" | "localhost" | "[::]" | "[::1]" => {
                Some(format!("127.0.0.1:{}", self.port(port)))
            }
            _ => Some(self.cluster_dns.get(addr).cloned().unwrap_or_else(|| {
                panic!(
                    "{}: {addr} is no Service emulated here (known: {:?})",
                    self.ex.name,
                    self.cluster_dns.keys()
                )
            })),
        }
    }

    /// Where `path`, as container `c` sees it, is here: under the volume `c` mounts there, or
    /// one of the image files we stand in for. Panics for a path `c` has no way to reach.
    pub(super) fn path(&self, c: &Value, path: &str) -> String {
        if matches!(path, "/dev/stdout" | "/dev/stderr") {
            return path.to_string();
        }
        let mount = mounts(c)
            .filter_map(|(at, volume)| {
                let rest = path.strip_prefix(at)?;
                (rest.is_empty() || rest.starts_with('/')).then_some((at.len(), volume, rest))
            })
            .max_by_key(|(len, ..)| *len);
        if let Some((_, volume, rest)) = mount {
            let dir = self.volumes.get(volume).unwrap_or_else(|| {
                panic!(
                    "{}: container {} mounts volume {volume}, which the pod does not have",
                    self.ex.name,
                    Self::name(c)
                )
            });
            return format!("{}{rest}", dir.display());
        }
        if is_ours(c) && path == "/mtls-sidecar" {
            return bin().display().to_string();
        }
        if runs_nginx_image(c) && path == "/etc/nginx/nginx.conf" {
            return self.image_nginx_conf(c).display().to_string();
        }
        panic!(
            "{}: container {} uses {path}, which none of its volumeMounts provides \
             (in the pod it would read the image's copy, if there is one, and could not write \
             there: the root filesystem is read-only)",
            self.ex.name,
            Self::name(c)
        );
    }

    /// The nginx image's own main config (`IMAGE_NGINX_CONF`) for container `c`, relocated.
    fn image_nginx_conf(&self, c: &Value) -> PathBuf {
        let dir = self.dir.path().join("image").join(Self::name(c));
        fs::create_dir_all(&dir).expect("mkdir image dir");
        let path = dir.join("nginx.conf");
        let origin = "the nginx image's /etc/nginx/nginx.conf";
        let text = self.relocate_nginx_conf(c, IMAGE_NGINX_CONF, origin);
        fs::write(&path, text).expect("write the image's nginx.conf");
        path
    }

    /// One command-line value of container `c`, here: an absolute path (also a `unix:` one), a
    /// URL or a `host:port`, relocated; anything else as is.
    fn relocate_value(&self, c: &Value, value: &str) -> String {
        if value.starts_with('/') {
            return self.path(c, value);
        }
        if let Some(path) = value.strip_prefix("unix:") {
            return format!("unix:{}", self.path(c, path));
        }
        for scheme in ["http://", "https://"] {
            if let Some(rest) = value.strip_prefix(scheme) {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let addr = self
                    .addr(authority)
                    .unwrap_or_else(|| panic!("{}: {value}: a URL without a port", self.ex.name));
                return format!("{scheme}{addr}{path}");
            }
        }
        self.addr(value).unwrap_or_else(|| value.to_string())
    }

    /// A command line of container `c`, here: the value of each `--flag=VALUE` and each other
    /// argument relocated.
    pub(super) fn relocate_args(&self, c: &Value, args: &[String]) -> Vec<String> {
        args.iter()
            .map(|a| match a.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    format!("{flag}={}", self.relocate_value(c, value))
                }
                _ => self.relocate_value(c, a),
            })
            .collect()
    }

    /// An nginx config used by container `c`, here: `listen`, `proxy_pass` and every path
    /// directive relocated. Panics if an absolute path is left over (a directive missing from
    /// `NGINX_PATH_DIRECTIVES`), so nothing of this machine's is used by mistake.
    pub(super) fn relocate_nginx_conf(&self, c: &Value, text: &str, origin: &str) -> String {
        let mut out = String::new();
        for (n, line) in (1..).zip(text.lines()) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let (directive, rest) = trimmed
                .split_once(char::is_whitespace)
                .unwrap_or((trimmed, ""));
            let rest = rest.trim_start();
            let end = rest
                .find(|ch: char| ch.is_whitespace() || ch == ';')
                .unwrap_or(rest.len());
            let (arg, tail) = rest.split_at(end);
            let new = match directive {
                // A bare port is every address of the pod: loopback here.
                // nginx binds `[::]` as IPv6-only, beside a bare port's IPv4: IPv6 loopback here.
                "listen" => match arg.parse::<u16>() {
                    Ok(port) => format!("127.0.0.1:{}", self.port(port)),
                    Err(_) if arg.starts_with("[::]:") => {
                        let port = arg["[::]:".len()..].parse::<u16>().unwrap_or_else(|_| {
                            panic!("{origin}:{n}: `listen {arg}` is not emulated here")
                        });
                        format!("[::1]:{}", self.port(port))
                    }
                    Err(_) => self.addr(arg).unwrap_or_else(|| {
                        panic!("{origin}:{n}: `listen {arg}` is not emulated here")
                    }),
                },
                "proxy_pass" => self.relocate_value(c, arg),
                d if NGINX_PATH_DIRECTIVES.contains(&d) && arg.starts_with('/') => {
                    self.path(c, arg)
                }
                _ => arg.to_string(),
            };
            let line = if new == arg {
                line.to_string()
            } else {
                format!("{indent}{directive} {new}{tail}")
            };
            if directive != "location" {
                let ours = self.dir.path().display().to_string();
                let left: Vec<&str> = line
                    .split_whitespace()
                    .map(|t| t.trim_matches(|ch| matches!(ch, ';' | '"' | '\'')))
                    .filter(|t| t.len() > 1 && t.starts_with('/'))
                    .filter(|t| {
                        !t.starts_with(&ours) && !matches!(*t, "/dev/stdout" | "/dev/stderr")
                    })
                    .collect();
                assert!(
                    left.is_empty(),
                    "{origin}:{n}: {left:?} not relocated (add `{directive}` to NGINX_PATH_DIRECTIVES)"
                );
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// A `run --config` file of our sidecar `c`, here, moved key by key as its flags would be:
    /// the admin endpoint to `127.0.0.1:0` (where `Sidecar` puts it for the other subcommands);
    /// each listener's `listen` and `target`, a watch entry's `verify-addr` and `webhook`, through
    /// the pod's ports and cluster DNS (a server listener without `listen` gets its default,
    /// moved); every path of a set or watch entry, and a watch entry's `exec` program, through
    /// `c`'s own mounts. A client listener that dials a Service name, which becomes an address
    /// here, gets that name as its `server-name` (unless it has one), so the name verified and
    /// sent as SNI stays the manifest's. Panics if an absolute path is left over (a key missing
    /// from `CONFIG_SET_PATHS` or `CONFIG_WATCH_PATHS`).
    pub(super) fn relocate_sidecar_config(&self, c: &Value, text: &str, origin: &str) -> String {
        let mut config: Value = serde_saphyr::from_str(text)
            .unwrap_or_else(|e| panic!("{origin}: not a YAML config file: {e}"));
        assert!(config.is_object(), "{origin}: not a YAML mapping");
        if config["admin-listen"] != "off" {
            config["admin-listen"] = "127.0.0.1:0".into();
        }
        let relocate = |entry: &mut Value, keys: &[&str], how: &dyn Fn(&str) -> String| {
            for key in keys {
                if let Some(v) = entry.get_mut(*key) {
                    let value = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{origin}: {key}: {v} is no string"));
                    *v = how(value).into();
                }
            }
        };
        let path = |p: &str| self.path(c, p);
        let value = |v: &str| self.relocate_value(c, v);
        let sets = config.get_mut("sets").and_then(Value::as_object_mut);
        for set in sets.into_iter().flat_map(|m| m.values_mut()) {
            relocate(set, CONFIG_SET_PATHS, &path);
        }
        let listeners = config.get_mut("listeners").and_then(Value::as_array_mut);
        for l in listeners.into_iter().flatten() {
            if l["kind"] == "server" && l.get("listen").is_none() {
                l["listen"] = SERVER_LISTEN_DEFAULT.into();
            }
            let target = l["target"].as_str().map(str::to_string);
            relocate(l, CONFIG_LISTENER_ADDRS, &value);
            let host = target
                .as_deref()
                .and_then(|t| t.rsplit_once(':'))
                .map(|(h, _)| h);
            if let Some(host) = host {
                let named = host.trim_matches(['[', ']']).parse::<IpAddr>().is_err();
                if l["kind"] == "client" && named && l.get("server-name").is_none() {
                    l["server-name"] = host.into();
                }
            }
        }
        let watches = config.get_mut("watch").and_then(Value::as_array_mut);
        for w in watches.into_iter().flatten() {
            relocate(w, CONFIG_WATCH_PATHS, &path);
            relocate(w, CONFIG_WATCH_ADDRS, &value);
            if let Some(program) = w.get_mut("exec").and_then(|e| e.get_mut(0)) {
                if let Some(p) = program.as_str().filter(|p| p.starts_with('/')) {
                    *program = path(p).into();
                }
            }
        }
        let mut left = Vec::new();
        absolute_paths(&config, &mut left);
        let ours = self.dir.path().display().to_string();
        left.retain(|p| {
            !p.starts_with(&ours) && !matches!(p.as_str(), "/dev/stdout" | "/dev/stderr")
        });
        assert!(
            left.is_empty(),
            "{origin}: {left:?} not relocated (a path key missing from CONFIG_SET_PATHS or \
             CONFIG_WATCH_PATHS?)"
        );
        serde_saphyr::to_string(&config)
            .unwrap_or_else(|e| panic!("{origin}: cannot write the relocated config: {e}"))
    }
}

/// Every string in `v` that is an absolute path (also after `unix:`).
fn absolute_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let path = s.strip_prefix("unix:").unwrap_or(s);
            if path.starts_with('/') {
                out.push(path.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|i| absolute_paths(i, out)),
        Value::Object(map) => map.values().for_each(|i| absolute_paths(i, out)),
        _ => {}
    }
}
