//! `mtls-sidecar demo`: the first thing a newcomer runs. It writes a throwaway PKI (made with
//! rcgen) into two kubelet-style Secret volumes (`server/`, `client/`), starts a tiny plaintext
//! upstream app, runs `server --protocol http` in front of it, prints a ready-to-paste curl
//! command, and renews the server certificate every `--rotate-every` with a kubelet-style
//! `..data` swap, so the serial can be seen changing without a failed request. Ctrl-C stops it.

mod pki;
mod upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tracing::{info, warn};

use crate::admin::Listen;
use crate::app;
use crate::check::check;
use crate::config::defaults;
use crate::config::raw::{RawConfig, RawListener, RawSet};
use crate::config::{ConfigErrors, Origin};
use crate::creds::paths::CredentialPaths;
use crate::creds::validate::{Policy, Usage};

/// What the demo is told.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Where to write the PKI; `None`: a new directory under the system temp dir, removed at exit.
    pub dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin: Listen,
    /// `0`: no rotation.
    pub rotate_every: Duration,
}

/// Removes a directory of throwaway keys when dropped (also when the demo fails).
struct Throwaway(Option<PathBuf>);

impl Drop for Throwaway {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes the volumes, then serves until SIGINT/SIGTERM.
pub async fn run(args: &DemoConfig, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let (dir, _cleanup) = match &args.dir {
        Some(d) => (d.clone(), Throwaway(None)),
        None => {
            let d = std::env::temp_dir().join(format!("mtls-sidecar-demo-{}", std::process::id()));
            (d.clone(), Throwaway(Some(d)))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::DemoPki::generate().context("generating the demo PKI")?;
    write_leaf(&dir.join("server"), &pki.server()?, &pki.ca_pem)?;
    write_leaf(&dir.join("client"), &pki.client()?, &pki.ca_pem)?;
    for (name, usage) in [("server", Usage::Server), ("client", Usage::Client)] {
        let paths = CredentialPaths::resolve(Some(&dir.join(name)), None, None, None, None)?;
        let report = check(
            &paths,
            &Policy {
                usage,
                ..Policy::default()
            },
            SystemTime::now(),
        );
        anyhow::ensure!(
            report.valid,
            "the demo's {name} credentials do not validate: {:?}",
            report.failures
        );
    }

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo upstream")?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(upstream::serve(upstream));

    // Bind first, so the curl command names the real port (also with --listen 127.0.0.1:0).
    let probe = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listen = probe.local_addr()?;
    drop(probe);
    let admin = match args.admin {
        Listen::On(a) => {
            let probe =
                std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))?;
            Listen::On(probe.local_addr()?)
        }
        Listen::Off => Listen::Off,
    };
    let d = dir.display();
    let port = listen.port();
    let mut text = format!(
        "demo PKI in {d} (kubelet layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>)\n\
         plaintext app on http://{upstream_addr}, mTLS in front of it on https://{listen}\n\
         \ncall it like a client pod would (paste into another terminal):\n\n\
         \x20 curl --cert {d}/client/tls.crt --key {d}/client/tls.key --cacert {d}/client/ca.crt https://localhost:{port}/\n\n\
         without a client certificate the handshake is refused:\n\n\
         \x20 curl --cacert {d}/client/ca.crt https://localhost:{port}/\n\n"
    );
    if let Listen::On(a) = admin {
        text.push_str(&format!(
            "status and metrics: curl http://{a}/status   curl http://{a}/metrics\n\n"
        ));
    }
    text.push_str(&format!("the server certificate is renewed every {:?}: watch the serial change in the log below. Ctrl-C stops.\n\n", args.rotate_every));
    // A closed stdout (`demo | head -3`) must not stop the demo: the instructions are a
    // courtesy, the server is the job.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());

    if !args.rotate_every.is_zero() {
        let server_dir = dir.join("server");
        let period = args.rotate_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                match pki
                    .server()
                    .map_err(anyhow::Error::from)
                    .and_then(|leaf| write_leaf(&server_dir, &leaf, &pki.ca_pem))
                {
                    Ok(()) => info!("demo: renewed the server certificate (kubelet-style swap)"),
                    Err(e) => warn!(error = %e, "demo: renewing the server certificate failed"),
                }
            }
        });
    }

    // The demo is a one-set configuration like any other: the same defaults and checks.
    let raw = RawConfig {
        admin_listen: Some(match admin {
            Listen::On(a) => a.to_string(),
            Listen::Off => "off".into(),
        }),
        shutdown_grace: Some("5s".into()),
        sets: [(
            defaults::SET.to_string(),
            RawSet {
                cert_dir: Some(dir.join("server")),
                ..RawSet::default()
            },
        )]
        .into(),
        listeners: vec![RawListener {
            name: "server".into(),
            kind: "server".into(),
            credentials: defaults::SET.into(),
            listen: Some(listen.to_string()),
            target: Some(upstream_addr.to_string()),
            protocol: Some("http".into()),
            allow_all: Some(true),
            max_connections: Some(1000),
            max_upstream_connections: Some(100),
            ..RawListener::default()
        }],
        ..RawConfig::default()
    };
    let config = crate::config::check::check(&raw, &Origin::Flags).map_err(|e| {
        anyhow::anyhow!(
            "the demo's configuration: {}",
            ConfigErrors::new(&Origin::Flags, &e)
        )
    })?;
    app::run(config, None).await
}

fn write_leaf(dir: &Path, leaf: &pki::DemoLeaf, ca_pem: &str) -> anyhow::Result<()> {
    // Throwaway keys, but still only for the user who runs the demo (and its curl command).
    let files = [
        ("tls.crt", leaf.cert_pem.as_bytes(), 0o644),
        ("tls.key", leaf.key_pem.as_bytes(), 0o600),
        ("ca.crt", ca_pem.as_bytes(), 0o644),
    ];
    crate::atomic_dir::write_generation_with_modes(dir, &files)
        .with_context(|| format!("writing the volume {}", dir.display()))
}
