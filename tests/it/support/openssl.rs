//! A PKI made with the `openssl` CLI, step for step the way our users' guide
//! builds it (RSA 4096 CA from `genrsa` + `req -x509`, RSA 2048 server and client
//! leaves signed with `x509 -req -extfile`), plus helpers to sign bad variants.
//!
//! Callers must first check `require_tool("openssl")`.
//!
//! Notes on the installed openssl (3.0.x here):
//! - `genrsa` writes PKCS#8 (`BEGIN PRIVATE KEY`); add `-traditional` for PKCS#1.
//! - `x509 -req` has no `-not_before`/`-not_after` before 3.4, and `-days -1`
//!   yields notAfter < notBefore rather than a realistic expired cert, so
//!   `sign_leaf_dated` uses `openssl ca -startdate/-enddate` (in 1.1.1 and every 3.x;
//!   checked here on 3.0.19).
//! - `genrsa 4096` takes from a fraction of a second to a few seconds: use
//!   `shared()` and copy files out of it; never write into it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use time::OffsetDateTime;

/// Subject of the CA in our users' guide.
pub const CA_SUBJ: &str = "/C=US/ST=California/O=Example Org/OU=Security/CN=mTLS Root CA";
pub const SERVER_SUBJ: &str = "/CN=api.production.svc.cluster.local";
pub const CLIENT_SUBJ: &str = "/O=Example Org/OU=Web Services/CN=web-app";
/// `-extfile` content of the guide's server certificate.
pub const SERVER_EXT: &str = "subjectAltName=DNS:api.production.svc.cluster.local,\
DNS:api.production.svc,DNS:api.production,DNS:api.example.com
extendedKeyUsage=serverAuth
keyUsage=digitalSignature,keyEncipherment
basicConstraints=CA:FALSE
";
/// `-extfile` content of the guide's client certificate.
pub const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth
keyUsage=digitalSignature,keyEncipherment
basicConstraints=CA:FALSE
";
/// Default `key_cmd` for `sign_leaf`: an RSA 2048 key as in the guide.
pub const RSA2048_KEY_CMD: &[&str] = &["genrsa", "-out", "{key}", "2048"];

/// Files of one signed leaf.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// Directory holding `mtls-ca.key`, `mtls-ca.crt`, `server.{key,csr,crt}`,
/// `client.{key,csr,crt}` (and the `.ext`/`.srl` files used to make them).
#[derive(Debug)]
pub struct OpenSslPki {
    pub dir: tempfile::TempDir,
}

static SHARED: OnceLock<OpenSslPki> = OnceLock::new();

impl OpenSslPki {
    /// Generate a fresh PKI in a new temporary directory (slow: RSA 4096 CA).
    pub fn generate() -> OpenSslPki {
        let dir = tempfile::Builder::new()
            .prefix("openssl-pki-")
            .tempdir()
            .expect("create temp dir");
        Self::generate_in(dir)
    }

    /// One PKI per test process, generated on first use. Read or copy from it,
    /// never write into it. Its directory lives under cargo's target tmp dir and
    /// is not removed at exit (statics are never dropped); a later run deletes
    /// such directories once they are a day old. Under cargo-nextest every test
    /// is its own process, so each test that calls this pays for a generation.
    pub fn shared() -> &'static OpenSslPki {
        SHARED.get_or_init(|| {
            remove_stale_shared_dirs();
            let dir = tempfile::Builder::new()
                .prefix("openssl-pki-shared-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("create temp dir");
            Self::generate_in(dir)
        })
    }

    fn generate_in(dir: tempfile::TempDir) -> OpenSslPki {
        let d = dir.path();
        openssl(&["genrsa", "-out", "mtls-ca.key", "4096"], d);
        openssl(
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "3650",
                "-key",
                "mtls-ca.key",
                "-out",
                "mtls-ca.crt",
                "-subj",
                CA_SUBJ,
            ],
            d,
        );
        let d = d.to_path_buf();
        let pki = OpenSslPki { dir };
        pki.sign_leaf(&d, "server", SERVER_SUBJ, SERVER_EXT, RSA2048_KEY_CMD);
        pki.sign_leaf(&d, "client", CLIENT_SUBJ, CLIENT_EXT, RSA2048_KEY_CMD);
        pki
    }

    /// Path of a file in the PKI directory, e.g. `path("server.crt")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Contents of a file in the PKI directory.
    pub fn read(&self, name: &str) -> String {
        let p = self.path(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Copy `{name}.crt`, `{name}.key` and `mtls-ca.crt` to `dest` as `tls.crt`,
    /// `tls.key`, `ca.crt` (a kubernetes.io/tls Secret's files, plain, no `..data`).
    pub fn copy_triple(&self, name: &str, dest: &Path) {
        std::fs::create_dir_all(dest).unwrap_or_else(|e| panic!("mkdir {}: {e}", dest.display()));
        for (from, to) in [
            (format!("{name}.crt"), "tls.crt"),
            (format!("{name}.key"), "tls.key"),
            ("mtls-ca.crt".to_string(), "ca.crt"),
        ] {
            let src = self.path(&from);
            std::fs::copy(&src, dest.join(to))
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dest.display()));
        }
    }

    /// Make a key with `key_cmd` (openssl args run in `out_dir`; `{key}` is replaced
    /// by `{name}.key`; empty means RSA 2048), a CSR with subject `subj`, and sign it
    /// with this CA for 90 days using `ext` as the `-extfile` content.
    /// Writes `{name}.key`, `{name}.csr`, `{name}.ext`, `{name}.srl`, `{name}.crt` in `out_dir`.
    ///
    /// e.g. weak key: `&["genrsa", "-out", "{key}", "1024"]`; P-256 SEC1 key:
    /// `&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "{key}"]`.
    pub fn sign_leaf(
        &self,
        out_dir: &Path,
        name: &str,
        subj: &str,
        ext: &str,
        key_cmd: &[&str],
    ) -> LeafFiles {
        let files = self.prepare_csr(out_dir, name, subj, ext, key_cmd);
        let ca_crt = self.path("mtls-ca.crt");
        let ca_key = self.path("mtls-ca.key");
        let (csr, ext_file, srl, crt) = (
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.srl"),
            format!("{name}.crt"),
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                path_str(&ca_crt),
                "-CAkey",
                path_str(&ca_key),
                "-CAserial",
                &srl,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "90",
                "-extfile",
                &ext_file,
            ],
            out_dir,
        );
        files
    }

    /// Like `sign_leaf`, but with explicit validity (e.g. already expired or not yet
    /// valid), signed with `openssl ca -startdate/-enddate` from a throwaway CA
    /// database in `out_dir/{name}-cadb/`. Subject order is kept (`-preserveDN`).
    #[allow(clippy::too_many_arguments)]
    pub fn sign_leaf_dated(
        &self,
        out_dir: &Path,
        name: &str,
        subj: &str,
        ext: &str,
        key_cmd: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> LeafFiles {
        let files = self.prepare_csr(out_dir, name, subj, ext, key_cmd);
        let db = out_dir.join(format!("{name}-cadb"));
        std::fs::create_dir_all(&db).unwrap_or_else(|e| panic!("mkdir {}: {e}", db.display()));
        std::fs::write(db.join("index.txt"), "").expect("write index.txt");
        let cnf = db.join("ca.cnf");
        let d = path_str(&db);
        let config = format!(
            "[ca]\ndefault_ca = testca\n\
             [testca]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nrand_serial = yes\n\
             default_md = sha256\npolicy = policy_any\nunique_subject = no\nemail_in_dn = no\n\
             copy_extensions = none\n\
             [policy_any]\ncountryName = optional\nstateOrProvinceName = optional\n\
             localityName = optional\norganizationName = optional\n\
             organizationalUnitName = optional\ncommonName = optional\nemailAddress = optional\n"
        );
        std::fs::write(&cnf, config).expect("write ca.cnf");
        let (start, end) = (asn1_time(not_before), asn1_time(not_after));
        openssl(
            &[
                "ca",
                "-batch",
                "-notext",
                "-preserveDN",
                "-config",
                path_str(&cnf),
                "-cert",
                path_str(&self.path("mtls-ca.crt")),
                "-keyfile",
                path_str(&self.path("mtls-ca.key")),
                "-in",
                &format!("{name}.csr"),
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
                "-startdate",
                &start,
                "-enddate",
                &end,
            ],
            out_dir,
        );
        files
    }

    fn prepare_csr(
        &self,
        out_dir: &Path,
        name: &str,
        subj: &str,
        ext: &str,
        key_cmd: &[&str],
    ) -> LeafFiles {
        std::fs::create_dir_all(out_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", out_dir.display()));
        let key = format!("{name}.key");
        let key_cmd = if key_cmd.is_empty() {
            RSA2048_KEY_CMD
        } else {
            key_cmd
        };
        let args: Vec<String> = key_cmd.iter().map(|a| a.replace("{key}", &key)).collect();
        openssl(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            out_dir,
        );
        let ext_path = out_dir.join(format!("{name}.ext"));
        std::fs::write(&ext_path, ext)
            .unwrap_or_else(|e| panic!("write {}: {e}", ext_path.display()));
        let csr = format!("{name}.csr");
        openssl(
            &["req", "-new", "-key", &key, "-out", &csr, "-subj", subj],
            out_dir,
        );
        LeafFiles {
            crt: out_dir.join(format!("{name}.crt")),
            key: out_dir.join(key),
        }
    }
}

/// Earlier test runs leave their shared PKI behind (statics are never dropped):
/// remove those older than a day so `target/tmp` does not grow without bound.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("openssl-pki-shared-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// `YYMMDDHHMMSSZ` (UTCTime) for 1950..2049, else `YYYYMMDDHHMMSSZ`.
fn asn1_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if (1950..2050).contains(&y) {
        format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100)
    } else {
        format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z")
    }
}

/// Run `openssl ARGS` in `cwd` without checking the status.
pub fn openssl_output(args: &[&str], cwd: &Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl {}`: {e}", args.join(" ")))
}

/// Run `openssl ARGS` in `cwd`, panic (with its stderr, never stdout, which may
/// hold key material) unless it exits 0; return its stdout.
pub fn openssl(args: &[&str], cwd: &Path) -> String {
    let out = openssl_output(args, cwd);
    if !out.status.success() {
        panic!(
            "`openssl {}` in {} failed ({}): {}",
            args.join(" "),
            cwd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl version` output, e.g. `OpenSSL 3.0.19 27 Jan 2026 (...)`.
pub fn openssl_version() -> String {
    openssl(&["version"], Path::new(".")).trim().to_string()
}
