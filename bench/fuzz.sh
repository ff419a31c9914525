#!/usr/bin/env bash
# Long run of the fuzz targets in tests/it/fuzz (proptest on the stable toolchain; no cargo-fuzz):
# every property there with CASES generated cases (default 50000), in a release build, 2 threads.
#   pem_and_bundles  validate and `check` on arbitrary bytes and on mutated valid PEM triples
#   headers          protected-header recognition and stripping, and the Host check
# `cargo test` runs the same properties with 256 (credentials) or 512 (headers) cases each, a
# smoke run of about 3 s in a debug build that CI gets for free.
#
# Duration on the 2-core dev machine (measured): the default CASES=50000 tests for about 40 s,
# CASES=400000 for about 6 min (368 s); time grows linearly with CASES. Add the release build of
# the test binary when sources changed: about 1 min, 3 min from scratch.
#
# Usage (from anywhere):   bash bench/fuzz.sh            CASES=200000 bash bench/fuzz.sh
#   CASES=N    cases per property (sets PROPTEST_CASES; the other PROPTEST_* variables pass
#              through, e.g. PROPTEST_RNG_SEED=7 to generate the same inputs again; the test PKI
#              itself is new in every run)
#
# Findings: a failing case is shrunk to a minimal one, printed, and its seed is appended to
# tests/it/fuzz/proptest-regressions/<target>.txt. COMMIT THOSE FILES: every later run, including
# the smoke run inside `cargo test`, replays their seeds first, so they are regression tests. The
# test PKI is generated afresh in each run, so also turn the printed minimal input into a named
# #[test] in the target's file when the finding depends on particular key or certificate bytes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROPTEST_CASES=${CASES:-50000} exec cargo test --release --test it fuzz:: -- --test-threads 2
