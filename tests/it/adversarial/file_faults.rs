//! A hostile (or broken) writer of the credential files: each fault is swapped into a plain
//! directory under a running sidecar, one after the other. Every one must be refused with its
//! reason code while the last good credentials stay served and the process stays healthy and
//! ready, without hanging on a special file or reading without bound; a good update at the end
//! is applied.

use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;
use crate::support::pki::write_triple;

/// Replaces `dir/name` by whatever `make` creates at a temporary path (a rename: atomic).
fn swap_in(dir: &Path, name: &str, make: impl FnOnce(&Path)) {
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    make(&tmp);
    if tmp.is_dir() {
        // rename(2) cannot put a directory over a file.
        std::fs::remove_file(dir.join(name)).expect("remove the file");
    }
    std::fs::rename(&tmp, dir.join(name)).expect("swap in");
}

fn write(text: impl AsRef<[u8]>) -> impl FnOnce(&Path) {
    move |p: &Path| std::fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()))
}

#[test]
fn hostile_credential_files_are_refused_with_their_reason_and_the_last_good_stay() {
    let pki = TestPki::new();
    let (good, other, next) = (pki.server(), pki.server(), pki.server());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("creds");
    std::fs::create_dir(&dir).expect("mkdir");
    let root = pki.root.cert_pem.clone();
    write_triple(&dir, &good.chain_pem, &good.key_pkcs8_pem, &root);
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir.display().to_string(),
        "--poll-interval",
        "1s",
        "--",
        "/bin/true",
    ]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());

    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let huge_line = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        "A".repeat(1024 * 1024 - 64)
    );
    let with_nul = good.chain_pem.replacen('\n', "\n\0", 3);
    let two_keys = format!("{}{}", good.key_pkcs8_pem, other.key_pkcs8_pem);
    type Make = Box<dyn FnOnce(&Path)>;
    let faults: Vec<(&str, &str, Make, &str)> = vec![
        (
            "binary garbage as the certificate",
            "tls.crt",
            Box::new(write(garbage.clone())),
            "bad_pem",
        ),
        (
            "an empty certificate file",
            "tls.crt",
            Box::new(write("")),
            "no_certificate",
        ),
        (
            "one base64 line of almost 1 MiB",
            "tls.crt",
            Box::new(write(huge_line)),
            "bad_pem",
        ),
        (
            "NUL bytes inside the PEM",
            "tls.crt",
            Box::new(write(with_nul)),
            "bad_pem",
        ),
        (
            "two private keys",
            "tls.key",
            Box::new(write(two_keys)),
            "multiple_private_keys",
        ),
        (
            "another certificate's key",
            "tls.key",
            Box::new(write(other.key_pkcs8_pem.clone())),
            "key_mismatch",
        ),
        (
            "an empty CA bundle",
            "ca.crt",
            Box::new(write("")),
            "empty_ca_bundle",
        ),
        (
            "a leaf as the CA",
            "ca.crt",
            Box::new(write(other.cert_pem.clone())),
            "ca_not_a_ca",
        ),
        (
            "a file over 1 MiB",
            "tls.crt",
            Box::new(write(vec![b'A'; 1024 * 1024 + 1])),
            "too_large",
        ),
        (
            "a FIFO as the certificate (must not block)",
            "tls.crt",
            Box::new(|p: &Path| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo")
            }),
            "unreadable",
        ),
        (
            "a directory as the key",
            "tls.key",
            Box::new(|p: &Path| std::fs::create_dir(p).expect("mkdir")),
            "unreadable",
        ),
        (
            "a symlink to /dev/urandom (must not read forever)",
            "tls.crt",
            Box::new(|p: &Path| symlink("/dev/urandom", p).expect("symlink")),
            "too_large",
        ),
        (
            "a symlink to /dev/null",
            "tls.crt",
            Box::new(|p: &Path| symlink("/dev/null", p).expect("symlink")),
            "no_certificate",
        ),
        (
            "a dangling symlink",
            "tls.key",
            Box::new(|p: &Path| symlink("nowhere", p).expect("symlink")),
            "missing_file",
        ),
        (
            "a symlink loop",
            "ca.crt",
            // Points at its own final name: a loop once swapped in.
            Box::new(|p: &Path| symlink("ca.crt", p).expect("symlink")),
            "unreadable",
        ),
    ];
    for (what, file, make, reason) in faults {
        // Start each fault from the good triple, so that exactly one thing is wrong.
        write_triple(&dir, &good.chain_pem, &good.key_pkcs8_pem, &root);
        assert!(
            sc.wait_until(WAIT, || sc.last_error_reason().is_none()),
            "{what}: the good triple was not seen again: {}",
            sc.status()
        );
        swap_in(&dir, file, make);
        assert!(
            sc.wait_until(WAIT, || sc.last_error_reason().as_deref() == Some(reason)),
            "{what}: expected {reason}, /status says {}\n{}",
            sc.status()["sets"][0]["last_error"],
            sc.log()
        );
        assert_eq!(
            sc.serial().as_deref(),
            Some(&*good.serial_hex),
            "{what}: served"
        );
        assert!(
            sc.healthy() && sc.ready(),
            "{what}: not healthy or not ready"
        );
        // A symlink loop or special file is replaced by a regular file again below.
        let _ = std::fs::remove_file(dir.join(file));
        let _ = std::fs::remove_dir(dir.join(file));
    }
    write_triple(&dir, &next.chain_pem, &next.key_pkcs8_pem, &root);
    assert!(
        sc.wait_until(WAIT, || sc.serial().as_deref() == Some(&*next.serial_hex)),
        "the good update after the faults was not applied: {}",
        sc.status()
    );
}
