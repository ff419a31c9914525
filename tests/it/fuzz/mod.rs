//! Fuzz targets on the stable toolchain: proptest properties over hostile inputs, one file per
//! target. `cargo test` runs each with a few cases (a smoke run that CI gets for free);
//! `bench/fuzz.sh` runs the same properties with `PROPTEST_CASES` cases each, in release.
//!
//! A failing case is shrunk and its seed appended to `proptest-regressions/<target>.txt` beside
//! this file; every later run replays those seeds before new cases. Commit those files: they are
//! the regression tests of what a long run found. (The seeds reproduce the generated mutations;
//! the test PKI is made afresh each run, so a finding that depends on particular key bytes also
//! gets a plain `#[test]` with the concrete input.)

mod headers;
mod pem_and_bundles;

use proptest::test_runner::{Config, FileFailurePersistence};

/// `cases` is the smoke-run default; `PROPTEST_CASES` (and every other `PROPTEST_*` variable)
/// overrides it, because `proptest!` applies the environment on top of this config.
/// `regressions` is relative to the package root, where cargo runs tests.
fn config(cases: u32, regressions: &'static str) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    }
}
