//! Reload latency: time from kubelet's commit point, `rename("..data_tmp", "..data")`, to the new
//! generation showing in `/status`, over 200 swaps with default settings (debounce 100ms), one
//! swap every 1.1 s (kubelet swaps at most every 60-90 s; the pause lets each swap meet a rested
//! watcher, as real updates do; closer swaps are paced as a burst). Prints p50, p90, p99 and max.
//!
//! Run: `cargo bench --bench reload_latency` (optionally `-- 500` for another number of swaps).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let swaps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path();

    // A CA and one leaf per generation (ECDSA: fast to make).
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaves: Vec<(String, String)> = (0..=swaps)
        .map(|_| {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec!["bench.svc".to_string()]).unwrap();
            (
                params.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        })
        .collect();

    stage(vol, 0, &leaves[0], &ca_pem);
    commit(vol);
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        symlink(Path::new("..data").join(name), vol.join(name)).unwrap();
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let _sidecar = Kill(
        Command::new(env!("CARGO_BIN_EXE_mtls-sidecar"))
            .args([
                "watch",
                "--cert-dir",
                vol.to_str().unwrap(),
                "--admin-listen",
                &admin,
                "--log-level",
                "warn",
                "--",
                "/bin/true",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start mtls-sidecar"),
    );
    let status_url = format!("http://{admin}/status");
    let agent = ureq::Agent::new_with_defaults();
    let generation = || -> Option<u64> {
        let body = agent
            .get(&status_url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["sets"][0]["generation"].as_u64()
    };
    let start = Instant::now();
    while generation() != Some(1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sidecar did not load the first generation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut latencies = Vec::with_capacity(swaps);
    for (i, leaf) in leaves.iter().enumerate().skip(1) {
        // More than the watcher's max wait (1 s) apart: each swap meets a rested watcher.
        std::thread::sleep(Duration::from_millis(1100));
        stage(vol, i, leaf, &ca_pem);
        let t0 = Instant::now();
        commit(vol);
        let want = i as u64 + 1;
        loop {
            if generation() == Some(want) {
                latencies.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "swap {i} was not applied within 10 s"
            );
        }
        let _ = std::fs::remove_dir_all(vol.join(ts_name(i - 1)));
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "reload latency over {swaps} kubelet swaps: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ts_name(i: usize) -> String {
    format!("..2026_11_28_00_00_00.{i}")
}

/// Kubelet steps 4-7: the new generation directory and `..data_tmp`.
fn stage(vol: &Path, i: usize, (cert, key): &(String, String), ca: &str) {
    let ts = vol.join(ts_name(i));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("tls.crt"), cert).unwrap();
    std::fs::write(ts.join("tls.key"), key).unwrap();
    std::fs::write(ts.join("ca.crt"), ca).unwrap();
    symlink(ts_name(i), vol.join("..data_tmp")).unwrap();
}

/// Kubelet step 8: the commit point.
fn commit(vol: &Path) {
    std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
}
