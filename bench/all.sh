#!/usr/bin/env bash
# The whole side-by-side benchmark in one command (not run in CI; as root, ~25 min at the
# defaults): the sidecar against nginx, haproxy and stunnel with the same PKI, upstream and load
# generators, then the memory sweep. Every part prints its own table; the README's Performance and
# Sizing sections are made of them.
#   1. KEY=ec   --protocol http: handshakes, keep-alive (oha and ab), 1 MiB downloads
#   2. KEY=ec   --protocol tcp:  the same (stunnel joins, it relays TCP only)
#   3. KEY=rsa  --protocol http: handshakes and keep-alive (RSA 2048, our users' guide's key type)
#   4. bench/memory.sh: RSS idle, with 100/1000/5000 kept-alive connections, and after they close
#
# Usage:  bash bench/all.sh
# Knobs are passed through (DURATION, ROUNDS, WARMUP, CONC, PIN, PEERS, SIDECAR_BIN, STEPS); the
# release binary is built once up front unless SIDECAR_BIN is given. OUT=dir keeps each part's
# output there (default: a new temp dir, printed at the end).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/mtls-bench-all.XXXXXX)}
mkdir -p "$OUT"

log() { printf '[all] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "ERROR: run as root (the peers are installed and started)"; exit 1; }
if [[ -z ${SIDECAR_BIN:-} ]]; then
    log "cargo build --release in $REPO"
    (cd "$REPO" && cargo build --release --quiet)
    SIDECAR_BIN="$REPO/target/release/mtls-sidecar"
fi
export SIDECAR_BIN
export DURATION=${DURATION:-5} ROUNDS=${ROUNDS:-2}

part() {
    local name=$1
    shift
    log "$name: $*"
    env "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" || {
        log "ERROR: $name failed; its log: $OUT/$name.log"
        tail -20 "$OUT/$name.log" >&2
        exit 1
    }
    printf '\n## %s\n\n' "$name"
    cat "$OUT/$name.out"
}

part ec-http KEY=ec PROTOCOL=http MODES="hs ka ab dl" bash "$HERE/vs_nginx.sh"
part ec-tcp KEY=ec PROTOCOL=tcp MODES="hs ka ab dl" bash "$HERE/vs_nginx.sh"
part rsa-http KEY=rsa PROTOCOL=http MODES="hs ka ab" CHART=none bash "$HERE/vs_nginx.sh"
part memory STEPS="${STEPS:-0 100 1000 5000}" bash "$HERE/memory.sh"
log "outputs in $OUT"
