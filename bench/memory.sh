#!/usr/bin/env bash
# Memory per connection of `mtls-sidecar server --protocol http` (not run in CI): the resident set
# (VmRSS) at rest, with N kept-alive mTLS connections open (each has completed one request), and
# again after they all closed. The numbers size a pod: `limits.memory` must hold
# `--max-connections` connections (README "Sizing").
#
# Usage:  bash bench/memory.sh                       # steps 0 100 500 1000 2000
#         STEPS="0 1000" SIDECAR_BIN=path bash bench/memory.sh
# Needs bash, cargo (unless SIDECAR_BIN), openssl, curl, python3 (stdlib); loopback only, no root.
# Prints one Markdown table row per step.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
STEPS="${STEPS:-0 100 500 1000 2000}"
if [ -z "${SIDECAR_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
  SIDECAR_BIN="$REPO/target/release/mtls-sidecar"
fi
SIDECAR_BIN=$(realpath "$SIDECAR_BIN")
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP"

# PKI: ECDSA P-256 CA, server (DNS:localhost), client.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout ca.key -out ca.crt 2>/dev/null
for who in server client; do
  cn=localhost ext="subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth"
  [ "$who" = client ] && cn=bench-client ext="extendedKeyUsage=clientAuth"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$who.key" -out "$who.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$who.ext"
  openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
    -extfile "$who.ext" -out "$who.crt" 2>/dev/null
done

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP=$(port) TLS=$(port) ADMIN=$(port)
mkdir app && echo ok >app/index.html
python3 -m http.server "$APP" --bind 127.0.0.1 --directory app >/dev/null 2>&1 &
PIDS+=($!)
ulimit -n "$(ulimit -Hn)"
"$SIDECAR_BIN" server --cert server.crt --key server.key --ca ca.crt --listen "127.0.0.1:$TLS" \
  --target "127.0.0.1:$APP" --protocol http --allow-all --admin-listen "127.0.0.1:$ADMIN" \
  >"$TMP/server.log" 2>&1 &
SC=$!
PIDS+=($SC)
until curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1; do
  kill -0 "$SC" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 1; }
  sleep 0.1
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$SC/status"; }
echo "| kept-alive connections | RSS (KiB) | after they closed (KiB) |"
echo "|---|---|---|"
for n in $STEPS; do
  # Open n connections, one request each, hold them until told, then close.
  mkfifo "go.$n"
  python3 - "$TLS" "$n" "go.$n" >/dev/null <<'PY' &
import socket, ssl, sys
port, n, fifo = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile="ca.crt")
ctx.load_cert_chain("client.crt", "client.key")
conns = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"ok\n" not in data:
        data += s.recv(4096)
    conns.append(s)
print("open", flush=True)
open(fifo).read()
for s in conns:
    s.close()
PY
  LOAD=$!
  # Wait until the listener counts them.
  until [ "$(curl -fsS "http://127.0.0.1:$ADMIN/status" | python3 -c 'import json,sys; print(sum(l["active_connections"] for l in json.load(sys.stdin)["listeners"]))')" -ge "$n" ]; do
    sleep 0.2
  done
  sleep 1
  open_rss=$(rss)
  echo done >"go.$n"
  wait "$LOAD"
  sleep 5
  echo "| $n | $open_rss | $(rss) |"
done
