#!/usr/bin/env bash
# mtls-sidecar `server --protocol http` vs nginx (ssl_verify_client on + proxy_pass), same PKI,
# same upstream, same machine, same run, same identity headers; with haproxy (HTTP mode, same
# identity headers) and, for PROTOCOL=tcp, stunnel (TCP only) as further peers. Measures with two
# independent load generators, oha (HTTP/1.1, built against OpenSSL so clients do full handshakes
# with no session resumption) and ApacheBench (`ab -k`: HTTP/1.0 keep-alive, one thread):
#   (hs) full mTLS handshakes/s: one new TLS connection per request (oha --disable-keepalive)
#   (ka) keep-alive requests/s: CONC long-lived TLS connections (oha, HTTP/1.1)
#   (ab) keep-alive requests/s: CONC long-lived TLS connections (ab -k, HTTP/1.0 keep-alive)
#   (dl) 1 MiB downloads/s: CONC long-lived TLS connections (oha), each response 1 MiB: per proxy
#        CPU-second it is MiB per CPU-second
# Each with p50/p99 latency and requests per proxy CPU-second (from /proc).
# Runs alternate the proxies (sidecar, nginx, haproxy, stunnel, then the reverse order); the table
# shows the median of ROUNDS runs and each proxy's ratio to nginx, the reference.
#
# Usage (as root, from anywhere):  bash bench/vs_nginx.sh
# Knobs (environment):
#   DURATION=10      seconds per measured run          CONC=32     concurrent connections
#   ROUNDS=3         measured runs per cell            WARMUP=2    seconds of warm-up per cell
#   KEY=rsa|ec       rsa = RSA 2048 (as in our users' guide), ec = ECDSA P-256, for CA, server, client
#   PIN=1|0          1: proxy + upstream on CPU 0, load generator on CPU 1 (taskset); 0: no pinning
#   NGINX_WORKERS    nginx worker_processes; default auto, or 1 with PIN=1 (one CPU for the proxy);
#                    also haproxy's nbthread (auto: haproxy's default, one thread per CPU it may use)
#   NGINX_KEEPALIVE_REQUESTS  set nginx keepalive_requests (default: unset, nginx's 1000)
#   MODES="hs ka ab dl" which measurements to run
#   PROTOCOL=http|tcp the sidecar's --protocol (nginx and haproxy always proxy HTTP with the identity
#                    headers: tcp shows what the sidecar costs when the app needs no identity headers;
#                    stunnel, TCP only, runs only with PROTOCOL=tcp)
#   PEERS="nginx haproxy stunnel"  which proxies run beside the sidecar (default: all three; nginx,
#                    the reference of the ratios, always runs; stunnel is skipped unless PROTOCOL=tcp)
#   SIDECAR_BIN=...  use this binary instead of `cargo build --release` in the repo
#   KEEP_TMP=1       keep the temp dir (PKI, configs, logs, oha JSON, the headers each proxy sent)
#   CHART=path.svg   where the chart of the ratios goes (default bench/results/vs_nginx-KEY-PROTOCOL.svg;
#                    CHART=none: no chart)
#   PORT_SIDECAR PORT_NGINX PORT_HAPROXY PORT_STUNNEL PORT_PROBE PORT_UPSTREAM
#                    default: free ports picked at random
# Install steps (apt nginx/haproxy/stunnel4/jq/..., `cargo install oha`) run only when something is
# missing and are not part of any measurement.
#
# The peers, and what differs between them (the configs are written below):
#   nginx    the users' guide's server block plus the identity headers (see its config below).
#   haproxy  `mode http`, `bind ... ssl crt ... ca-file ... verify required`, proxying to the same
#            upstream, setting the same six headers as nginx. A pre-flight request to the upstream's
#            /hdrs (which echoes them) checks that they are byte-identical to nginx's:
#              X-Client-Cert: nginx's $ssl_client_escaped_cert is the URL-encoded PEM; haproxy 2.6
#                has no PEM fetch, so it is built from ssl_c_der: base64, a newline every 64
#                characters (regsub), the BEGIN/END lines, url_enc. Same bytes, different code path.
#              X-Client-DN: ssl_c_s_dn(,0,rfc2253), nginx's $ssl_client_s_dn format.
#              X-Client-Verify: the constant SUCCESS when ssl_c_verify is 0 (haproxy has no string
#                form of the result; `verify required` lets no other client that far anyway).
#              X-Forwarded-Client-Cert: the hash is ssl_c_der,sha1,hex,lower = nginx's SHA-1
#                $ssl_client_fingerprint.
#              X-Forwarded-For %[src], X-Forwarded-Proto https (nginx: $remote_addr, $scheme).
#            Other differences: haproxy forwards the client's Host header (nginx sends its upstream
#            name); haproxy's cert and key are one PEM file (the same cert and key concatenated);
#            `http-reuse always` lets the first request of a client connection use an idle upstream
#            connection, as nginx's `keepalive 64` does (haproxy's default `safe` would open a new
#            upstream connection per hs request); haproxy keeps no per-connection request limit
#            (nginx: keepalive_requests 1000); a client without a certificate fails in the handshake
#            (nginx answers 400 after it). nbthread is nginx's worker count (1 under PIN=1).
#   stunnel  TCP only (no HTTP, no headers): a peer of the sidecar's --protocol tcp, and skipped
#            with a note when PROTOCOL=http. `verifyChain = yes` (implies requireCert) with the same
#            CA file, cert and key. It opens one upstream connection per client connection, like the
#            sidecar in tcp mode (nginx and haproxy pool theirs). Its Debian build is threaded
#            (pthread): one thread per client connection, which cannot be limited; under PIN=1 all
#            of them share CPU 0 (taskset), the one CPU nginx's single worker has, and in hs every
#            handshake also creates and ends a thread. `debug = warning` (no line per connection,
#            like nginx's access_log off); TCP_NODELAY on both sides is its default.
#   All: the same server cert/key and CA, TLS 1.2-1.3 (each negotiated version, cipher and key
#   exchange is printed and must match), 127.0.0.1 only, keep-alive and idle timeouts longer than
#   any run, no access logs.
set -euo pipefail

DURATION=${DURATION:-10}
CONC=${CONC:-32}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
KEY=${KEY:-rsa}
NGINX_WORKERS_SET=${NGINX_WORKERS:-}
PIN=${PIN:-1}
MODES=${MODES:-hs ka ab dl}
PROTOCOL=${PROTOCOL:-http}
PEERS_SET=${PEERS:-}
PEERS=${PEERS:-nginx haproxy stunnel}
OHA_VERSION=1.16.0

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/peers.sh
. "$HERE/lib/peers.sh"
TOOLS="$HERE/.tools"
CHART=${CHART:-$HERE/results/vs_nginx-$KEY-$PROTOCOL.svg}
OHA="$TOOLS/bin/oha"

log() { printf '[vs_nginx] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (installs packages, starts nginx)"
[[ $KEY == rsa || $KEY == ec ]] || die "KEY must be rsa or ec"
[[ $PROTOCOL == http || $PROTOCOL == tcp ]] || die "PROTOCOL must be http or tcp"
# PEERS: the sidecar's peers; nginx, the reference of every ratio, runs whatever PEERS says.
for peer in $PEERS; do
    [[ $peer == nginx || $peer == haproxy || $peer == stunnel ]] ||
        die "PEERS: unknown peer '$peer' (nginx haproxy stunnel)"
done
wanted() { [[ " $PEERS " == *" $1 "* ]]; }
wanted nginx || log "note: nginx runs anyway (the reference of the ratios)"
# EXTRA: the peers besides the sidecar and nginx, in table and chart order.
EXTRA=()
if wanted haproxy; then EXTRA+=(haproxy); fi
if wanted stunnel; then
    if [[ $PROTOCOL == tcp ]]; then
        EXTRA+=(stunnel)
    else
        log "note: stunnel skipped: it proxies TCP only (no identity headers), a peer only with PROTOCOL=tcp"
    fi
fi
# PROXIES: everything measured, in the order of odd rounds (even rounds: the reverse).
PROXIES=(sidecar nginx "${EXTRA[@]}")
runs() { [[ " ${PROXIES[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- install (not measured)
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
if runs haproxy; then command -v haproxy >/dev/null || need_apt+=(haproxy); fi
if runs stunnel; then command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_apt+=(stunnel4); fi
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v ab >/dev/null || need_apt+=(apache2-utils)
if [[ ! -x $OHA ]] || [[ $("$OHA" --version 2>/dev/null) != "oha $OHA_VERSION" ]]; then
    command -v pkg-config >/dev/null || need_apt+=(pkg-config)
    pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
fi
if ((${#need_apt[@]})); then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian's postinst may start a system nginx on :80 (or a system haproxy); it is not ours and
    # is left alone. stunnel4's starts nothing without a config in /etc/stunnel.
fi
if [[ ! -x $OHA ]] || [[ $("$OHA" --version 2>/dev/null) != "oha $OHA_VERSION" ]]; then
    log "cargo install oha $OHA_VERSION (native-tls/OpenSSL) into $TOOLS (a few minutes, once)"
    cargo install --locked --quiet --root "$TOOLS" oha --version "$OHA_VERSION" \
        --no-default-features --features native-tls
fi
if [[ -n ${SIDECAR_BIN:-} ]]; then
    SIDECAR=$SIDECAR_BIN
else
    log "cargo build --release in $REPO"
    (cd "$REPO" && cargo build --release --quiet)
    SIDECAR="$REPO/target/release/mtls-sidecar"
fi
[[ -x $SIDECAR ]] || die "no sidecar binary at $SIDECAR"

# in_use, pick_port and TAKEN: bench/lib/peers.sh.
for v in PORT_SIDECAR PORT_NGINX PORT_HAPROXY PORT_STUNNEL PORT_PROBE PORT_UPSTREAM; do
    if [[ -n ${!v:-} ]]; then
        in_use "${!v}" && die "$v=${!v}: 127.0.0.1:${!v} is already in use"
        TAKEN+="${!v} "
    fi
done
for v in PORT_SIDECAR PORT_NGINX PORT_HAPROXY PORT_STUNNEL PORT_PROBE PORT_UPSTREAM; do
    [[ -n ${!v:-} ]] || pick_port "$v"
done

# ---------------------------------------------------------------- processes + cleanup
TMP=$(mktemp -d /tmp/mtls-bench.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$?
    stop_pids "${PIDS[@]}"
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
# Ctrl-C reaches oha too and stops at once; a SIGTERM to this script alone takes effect when the
# current oha run ends (at most DURATION s), then everything started here is stopped.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $PIN == 1 ]]; then
    [[ $(nproc) -ge 2 ]] || die "PIN=1 needs 2 CPUs"
    SRV=(taskset -c 0)
    LOAD=(taskset -c 1)
    OHA_THREADS=1
    SRV_CPUS=1
    # nginx 1.22's `auto` counts all CPUs, not the affinity mask: it would run 2 workers on 1 CPU.
    NGINX_WORKERS=${NGINX_WORKERS:-1}
else
    NGINX_WORKERS=${NGINX_WORKERS:-auto}
    SRV_CPUS=$(nproc)
    SRV=()
    LOAD=()
    OHA_THREADS=$(nproc)
fi

# ---------------------------------------------------------------- PKI (openssl CLI)
PKI="$TMP/pki"
mkdir -p "$PKI"
newkey() {
    if [[ $KEY == rsa ]]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
    else
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    fi
}
(
    cd "$PKI"
    newkey ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -out ca.crt \
        -subj "/O=Example Org/OU=Security/CN=mTLS Bench Root CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    ku="digitalSignature"
    [[ $KEY == rsa ]] && ku="digitalSignature,keyEncipherment"
    newkey tls.key
    openssl req -new -key tls.key -subj "/O=Example Org/CN=localhost" -out tls.csr
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,$ku" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile server.ext -out tls.crt 2>/dev/null
    newkey client.key
    openssl req -new -key client.key -subj "/O=Example Org/OU=Web Services/CN=web-app" -out client.csr
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,$ku" \
        "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile client.ext -out client.crt 2>/dev/null
    openssl verify -CAfile ca.crt tls.crt client.crt >/dev/null
    # ab -E: the client certificate followed by its key, in one file.
    cat client.crt client.key >client-ab.pem
)
# The cert dir both proxies use, laid out like a mounted kubernetes.io/tls Secret.
CERTS="$TMP/certs"
mkdir -p "$CERTS"
cp "$PKI/tls.crt" "$PKI/tls.key" "$PKI/ca.crt" "$CERTS/"
chmod 600 "$CERTS/tls.key"

# ---------------------------------------------------------------- upstream: nginx, plaintext
mkdir -p "$TMP/upstream" "$TMP/nginx"
head -c 1048576 /dev/zero >"$TMP/upstream/1m.bin"
cat >"$TMP/upstream/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$(nginx_temp_paths "$TMP/upstream")
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT_UPSTREAM;
    location / { default_type text/plain; return 200 "ok\n"; }
    # Pre-flight only: echoes the identity headers the proxy sent.
    location = /hdrs {
      default_type text/plain;
      return 200 "X-Client-Cert: \$http_x_client_cert\nX-Client-DN: \$http_x_client_dn\nX-Client-Verify: \$http_x_client_verify\nX-Forwarded-Client-Cert: \$http_x_forwarded_client_cert\nX-Forwarded-For: \$http_x_forwarded_for\nX-Forwarded-Proto: \$http_x_forwarded_proto\n";
    }
    location = /1m { default_type application/octet-stream; alias $TMP/upstream/1m.bin; }
  }
}
EOF

# ---------------------------------------------------------------- nginx mTLS proxy (users' guide)
# The guide's server block (ssl_verify_client on, ssl_client_certificate, ssl_verify_depth 2, the
# $ssl_client_verify check, X-Client-Cert/X-Client-DN headers, proxy_pass), plus what the brief
# asks for: keepalive to the upstream, worker_processes auto, access_log off. One change: the guide's
# X-Client-Cert $ssl_client_cert (deprecated, tab-folded multi-line PEM) makes an nginx upstream
# answer 400 ("client sent invalid header line"), so this uses $ssl_client_escaped_cert, the
# URL-encoded PEM that nginx recommends instead, which is also the form the sidecar sends. And
# `ssl_protocols TLSv1.2 TLSv1.3` is nginx's default since 1.23.4 (the guide runs nginx:1.25);
# Debian 12's nginx 1.22 would otherwise default to TLS <= 1.2. Everything else is
# nginx's default (e.g. keepalive_requests 1000 per client connection). Like with like: nginx
# sends the identity headers the sidecar sends (X-Client-Cert, X-Client-DN, X-Client-Verify, an
# XFCC with nginx's SHA-1 fingerprint where ours has SHA-256, X-Forwarded-For/-Proto): building
# them is part of the work measured (X-Client-Cert alone costs nginx about a third more CPU per
# request than the subject only). A second server block on
# PORT_PROBE is identical but logs, and is used only by the pre-flight checks, never measured.
# The server block itself: nginx_mtls_server_block in bench/lib/peers.sh (also bench/memory.sh's).
nginx_server_block() {
    nginx_mtls_server_block "$1" "$CERTS/tls.crt" "$CERTS/tls.key" "$CERTS/ca.crt" "$2" \
        "${NGINX_KEEPALIVE_REQUESTS:+keepalive_requests $NGINX_KEEPALIVE_REQUESTS;}"
}
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$(nginx_temp_paths "$TMP/nginx")
  log_format probe '\$connection \$connection_requests \$ssl_session_reused \$ssl_protocol \$ssl_cipher \$status';
$(nginx_upstream_backend "$PORT_UPSTREAM")
$(nginx_server_block "$PORT_NGINX" "")
$(nginx_server_block "$PORT_PROBE" "access_log $TMP/nginx/probe.log probe;")
}
EOF

# ---------------------------------------------------------------- haproxy mTLS proxy (HTTP mode)
# What differs from nginx: see the header of this script; the config: write_haproxy_mtls in
# bench/lib/peers.sh (also bench/memory.sh's).
HAPROXY_THREADS=""
[[ $NGINX_WORKERS == auto ]] || HAPROXY_THREADS="nbthread $NGINX_WORKERS"
if runs haproxy; then
    write_haproxy_mtls "$TMP/haproxy" "${HAPROXY_THREADS:-# nbthread unset: one thread per CPU it may use (the default)}" \
        4096 "$PORT_HAPROXY" "$CERTS/tls.crt" "$CERTS/tls.key" "$CERTS/ca.crt" "$PORT_UPSTREAM"
    haproxy -q -c -f "$TMP/haproxy/haproxy.cfg" || die "haproxy rejected $TMP/haproxy/haproxy.cfg"
fi

# ---------------------------------------------------------------- stunnel mTLS proxy (TCP only)
if runs stunnel; then
    STUNNEL=$(command -v stunnel4 || command -v stunnel)
    write_stunnel_mtls "$TMP/stunnel" "$PORT_STUNNEL" "$PORT_UPSTREAM" \
        "$CERTS/tls.crt" "$CERTS/tls.key" "$CERTS/ca.crt"
fi

log "starting upstream nginx on 127.0.0.1:$PORT_UPSTREAM, nginx mTLS on :$PORT_NGINX, sidecar on :$PORT_SIDECAR"
"${SRV[@]}" nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' \
    >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=($!)
UPSTREAM_PID=$!
"${SRV[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
    >"$TMP/nginx/stdout.log" 2>&1 &
PIDS+=($!)
NGINX_PID=$!
"${SRV[@]}" "$SIDECAR" server --protocol "$PROTOCOL" --cert-dir "$CERTS" \
    --listen "127.0.0.1:$PORT_SIDECAR" --target "127.0.0.1:$PORT_UPSTREAM" \
    --allow-all --admin-listen off >"$TMP/sidecar.log" 2>&1 &
PIDS+=($!)
SIDECAR_PID=$!
declare -A PROXY_PID=([sidecar]=$SIDECAR_PID [nginx]=$NGINX_PID)
declare -A PROXY_PORT=([sidecar]=$PORT_SIDECAR [nginx]=$PORT_NGINX [haproxy]=$PORT_HAPROXY [stunnel]=$PORT_STUNNEL)
if runs haproxy; then
    log "starting haproxy on 127.0.0.1:$PORT_HAPROXY"
    "${SRV[@]}" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/stdout.log" 2>&1 &
    PIDS+=($!)
    PROXY_PID[haproxy]=$!
fi
if runs stunnel; then
    log "starting stunnel on 127.0.0.1:$PORT_STUNNEL"
    "${SRV[@]}" "$STUNNEL" "$TMP/stunnel/stunnel.conf" >"$TMP/stunnel/stdout.log" 2>&1 &
    PIDS+=($!)
    PROXY_PID[stunnel]=$!
fi

CURL=(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$PKI/ca.crt")
CLIENT=(--cert "$PKI/client.crt" --key "$PKI/client.key")
wait_200() {
    local url=$1 name=$2
    for _ in $(seq 100); do
        [[ $("${CURL[@]}" "${CLIENT[@]}" "$url" 2>/dev/null || true) == 200 ]] && return 0
        sleep 0.1
    done
    log "--- $name logs:"
    local logs=("$TMP/sidecar.log" "$TMP/nginx/error.log" "$TMP/upstream/error.log")
    runs haproxy && logs+=("$TMP/haproxy/stdout.log")
    runs stunnel && logs+=("$TMP/stunnel/stunnel.log" "$TMP/stunnel/stdout.log")
    tail -n 20 "${logs[@]}" >&2 || true
    die "$name did not answer 200 at $url"
}
for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_UPSTREAM/" || true) == 200 ]] && break
    sleep 0.1
done
[[ $(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_UPSTREAM/") == 200 ]] || die "upstream down"
wait_200 "https://127.0.0.1:$PORT_NGINX/" nginx
wait_200 "https://127.0.0.1:$PORT_PROBE/" nginx-probe
wait_200 "https://127.0.0.1:$PORT_SIDECAR/" sidecar
for name in "${EXTRA[@]}"; do wait_200 "https://127.0.0.1:${PROXY_PORT[$name]}/" "$name"; done

# ---------------------------------------------------------------- pre-flight checks (not measured)
# Every proxy must refuse a client without a certificate (the handshake fails, or nginx's 400).
for name in "${PROXIES[@]}"; do
    code=$("${CURL[@]}" "https://127.0.0.1:${PROXY_PORT[$name]}/" 2>/dev/null || true)
    [[ $code != 200 ]] || die "$name (127.0.0.1:${PROXY_PORT[$name]}) answered 200 without a client certificate"
done
tls_params() {
    local out pc kx sig
    out=$(openssl s_client -connect "127.0.0.1:$1" -CAfile "$PKI/ca.crt" -cert "$PKI/client.crt" \
        -key "$PKI/client.key" -verify_return_error </dev/null 2>/dev/null || true)
    pc=$(sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p' <<<"$out" | head -n1)
    kx=$(sed -n 's/^Server Temp Key: \([^,]*\).*/\1/p' <<<"$out" | head -n1)
    sig=$(sed -n 's/^Peer signature type: //p' <<<"$out" | head -n1)
    [[ -n $pc ]] || die "openssl s_client could not complete an mTLS handshake with 127.0.0.1:$1"
    echo "$pc, kx $kx, server sig $sig"
}
declare -A TLS
for name in "${PROXIES[@]}"; do
    TLS[$name]=$(tls_params "${PROXY_PORT[$name]}")
    [[ ${TLS[$name]%% *} == "${TLS[sidecar]%% *}" ]] ||
        die "TLS versions differ: sidecar ${TLS[sidecar]}, $name ${TLS[$name]}"
done

# The identity headers each HTTP proxy sends, as the upstream's /hdrs echoes them
# (headers-NAME.txt, kept with KEEP_TMP=1). nginx and haproxy must send all six; haproxy's are
# compared with nginx's, and so are the sidecar's with --protocol http (informational: its XFCC
# differs by design). The TCP proxies send none.
HDR_NAMES=(X-Client-Cert X-Client-DN X-Client-Verify X-Forwarded-Client-Cert X-Forwarded-For X-Forwarded-Proto)
header_diff() { # FILE_A FILE_B -> the names of the headers whose values differ
    local h out=""
    for h in "${HDR_NAMES[@]}"; do
        [[ $(grep "^$h: " "$1" || true) == "$(grep "^$h: " "$2" || true)" ]] || out+="$h "
    done
    echo "${out% }"
}
declare -A HDR_NOTE
for name in "${PROXIES[@]}"; do
    [[ $name == stunnel || ($name == sidecar && $PROTOCOL == tcp) ]] && continue
    curl -sS --max-time 5 --cacert "$PKI/ca.crt" "${CLIENT[@]}" -o "$TMP/headers-$name.txt" \
        "https://127.0.0.1:${PROXY_PORT[$name]}/hdrs" || die "$name: GET /hdrs failed"
    if [[ $name != sidecar ]]; then
        for h in "${HDR_NAMES[@]}"; do
            grep -q "^$h: ." "$TMP/headers-$name.txt" || die "$name sent no $h header (see $TMP/headers-$name.txt)"
        done
    fi
done
for name in "${PROXIES[@]}"; do
    [[ -f $TMP/headers-$name.txt && $name != nginx ]] || continue
    diff=$(header_diff "$TMP/headers-nginx.txt" "$TMP/headers-$name.txt")
    if [[ -z $diff ]]; then
        HDR_NOTE[$name]="the same 6 identity headers as nginx, byte for byte"
    else
        HDR_NOTE[$name]="identity headers that differ from nginx's: $diff"
        [[ $name == sidecar ]] || log "WARNING: $name's $diff differ from nginx's (see headers-*.txt with KEEP_TMP=1)"
    fi
    log "pre-flight: $name sends ${HDR_NOTE[$name]}"
done

OHA_BASE=(--no-tui --output-format json --cacert "$PKI/ca.crt" --cert "$PKI/client.crt"
    --key "$PKI/client.key" --worker-threads "$OHA_THREADS")
# oha must do full handshakes (no resumption) in (a) and reuse connections in (b): checked on the
# logging nginx block.
"${LOAD[@]}" "$OHA" "${OHA_BASE[@]}" -n 400 -c 8 --disable-keepalive "https://127.0.0.1:$PORT_PROBE/" >/dev/null
sleep 0.3
reused=$(awk '$3 == "r"' "$TMP/nginx/probe.log" | wc -l)
conns_a=$(awk '{print $1}' "$TMP/nginx/probe.log" | sort -u | wc -l)
lines_a=$(wc -l <"$TMP/nginx/probe.log")
[[ $reused -eq 0 ]] || die "load tool resumed $reused TLS sessions; handshakes would not be full"
[[ $conns_a -eq $lines_a ]] || die "load tool reused connections with --disable-keepalive ($conns_a conns for $lines_a requests)"
: >"$TMP/nginx/probe.log" # opened with O_APPEND by nginx: truncating is enough
"${LOAD[@]}" "$OHA" "${OHA_BASE[@]}" -n 400 -c 8 "https://127.0.0.1:$PORT_PROBE/" >/dev/null
sleep 0.3
conns_b=$(awk '{print $1}' "$TMP/nginx/probe.log" | sort -u | wc -l)
[[ $conns_b -le 16 ]] || die "keep-alive run opened $conns_b connections for 400 requests"
log "pre-flight: (a) $lines_a requests on $conns_a new connections, $reused resumed; (b) 400 requests on $conns_b connections"

# ---------------------------------------------------------------- measurements
RES="$TMP/results"
mkdir -p "$RES"
# CPU time (clock ticks) used so far by a process and its direct children (nginx master + workers).
TICK=$(getconf CLK_TCK)
tree_ticks() {
    local pids
    mapfile -t pids < <(echo "$1"; pgrep -P "$1" || true)
    for pid in "${pids[@]}"; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        sed 's/.*) //' | awk '{t += $12 + $13} END {print t + 0}'
}
proxy_pid() { echo "${PROXY_PID[$1]}"; }
# user+nice+system ticks of all CPUs (irq/softirq left out: loopback traffic lands there)
all_ticks() { awk '/^cpu /{print $2 + $3 + $4; exit}' /proc/stat; }
# run_one NAME PORT MODE SECONDS OUTFILE
#   -> "ok_per_s non200 errors p50_ms p99_ms ok_per_proxy_cpu_s server_cpu_pct other_cpu_pct"
# server_cpu_pct: CPU used by proxy + upstream, in % of the CPUs they may use (SRV_CPUS); well
# under 100 with PIN=1 means the load generator, not the proxy, was the limit.
# other_cpu_pct: CPU used meanwhile by processes that are not the proxy, the upstream or the load
# generator (e.g. another build or test run on the machine), in % of all CPUs; high values mean a
# disturbed run.
run_one() {
    local name=$1 port=$2 mode=$3 secs=$4 out=$5 p0 p1 u0 u1 a0 a1 w0 w1 load_s
    local cmd
    if [[ $mode == ab ]]; then
        # -t before -n: -t alone caps the run at 50000 requests.
        cmd=(ab -q -k -c "$CONC" -t "$secs" -n 100000000 -E "$PKI/client-ab.pem" "https://127.0.0.1:$port/")
    else
        cmd=("$OHA" "${OHA_BASE[@]}" -z "${secs}s" -c "$CONC")
        [[ $mode == hs ]] && cmd+=(--disable-keepalive)
        if [[ $mode == dl ]]; then cmd+=("https://127.0.0.1:$port/1m"); else cmd+=("https://127.0.0.1:$port/"); fi
    fi
    p0=$(tree_ticks "$(proxy_pid "$name")"); u0=$(tree_ticks "$UPSTREAM_PID"); a0=$(all_ticks)
    w0=$(date +%s.%N)
    load_s=$( { TIMEFORMAT='%3U %3S'; time "${LOAD[@]}" "${cmd[@]}" >"$out" 2>"$out.err"; } 2>&1 )
    w1=$(date +%s.%N)
    p1=$(tree_ticks "$(proxy_pid "$name")"); u1=$(tree_ticks "$UPSTREAM_PID"); a1=$(all_ticks)
    local stats
    stats=$(awk -v p0="$p0" -v p1="$p1" -v u0="$u0" -v u1="$u1" -v a0="$a0" -v a1="$a1" -v hz="$TICK" \
        -v w0="$w0" -v w1="$w1" -v load="$load_s" -v n="$(nproc)" -v sc="$SRV_CPUS" 'BEGIN {
            split(load, o, " "); proxy = (p1 - p0) / hz; other = (a1 - a0) / hz - proxy - (u1 - u0) / hz - o[1] - o[2]
            if (other < 0) other = 0
            srv = 100 * (proxy + (u1 - u0) / hz) / ((w1 - w0) * sc)
            printf "{\"proxy_cpu\": %f, \"srv_pct\": %f, \"other_pct\": %f}", proxy, srv, 100 * other / ((w1 - w0) * n) }')
    if [[ $mode == ab ]]; then
        ab_tsv "$out" "$stats"
        return
    fi
    jq -r --argjson st "$stats" \
        '[ ((.statusCodeDistribution["200"] // 0) / .summary.total),
           (([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add) // 0),
           (([.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value] | add) // 0),
           ((.latencyPercentiles.p50 // 0) * 1000),
           ((.latencyPercentiles.p99 // 0) * 1000),
           (if $st.proxy_cpu > 0 then (.statusCodeDistribution["200"] // 0) / $st.proxy_cpu else 0 end),
           $st.srv_pct, $st.other_pct ] | @tsv' "$out"
}
# ab's report (OUTFILE) and the CPU figures (JSON) -> the same fields as run_one. Requests that
# are not 2xx, and failed ones, are not counted as ok; ab's "Length" failures are not failures
# here (every answer is "ok\n", and ab counts a length change against the first answer).
ab_tsv() {
    jq -r -n --argjson st "$2" --rawfile r "$1" '
        def num(re): ($r | capture(re) | .v | tonumber) // 0;
        (num("Complete requests:\\s+(?<v>[0-9]+)")) as $done
        | (num("Time taken for tests:\\s+(?<v>[0-9.]+)")) as $secs
        | ([$r | scan("Non-2xx responses:\\s+([0-9]+)") | .[0] | tonumber] | add // 0) as $non2xx
        | ([$r | scan("Exceptions: ([0-9]+)") | .[0] | tonumber] | add // 0) as $exc
        | ([$r | scan("Connect: ([0-9]+), Receive: ([0-9]+)") | map(tonumber) | add] | add // 0) as $conn_fail
        | ($done - $non2xx) as $ok
        | [ (if $secs > 0 then $ok / $secs else 0 end), $non2xx, ($exc + $conn_fail),
            num("\\n\\s+50%\\s+(?<v>[0-9]+)"), num("\\n\\s+99%\\s+(?<v>[0-9]+)"),
            (if $st.proxy_cpu > 0 then $ok / $st.proxy_cpu else 0 end),
            $st.srv_pct, $st.other_pct ] | @tsv'
}
port_of() { echo "${PROXY_PORT[$1]}"; }

nginx_workers=$(pgrep -c -P "$NGINX_PID" || true)
threads_of() { find "/proc/$1/task" -mindepth 1 -maxdepth 1 | wc -l; }
sidecar_threads=$(threads_of "$SIDECAR_PID")
haproxy_threads=""
if runs haproxy; then haproxy_threads=$(threads_of "${PROXY_PID[haproxy]}"); fi
log "warm-up: ${WARMUP}s per cell"
for mode in $MODES; do
    for name in "${PROXIES[@]}"; do
        run_one "$name" "$(port_of "$name")" "$mode" "$WARMUP" "$RES/warmup-$name-$mode.json" >/dev/null
    done
done

declare -A VALS EFF SRVP OTHC P99
OTHER=""
printf '\n%-5s %-4s %-8s %10s %7s %7s %8s %8s %14s %8s %7s\n' round test proxy "ok/s" non200 errors "p50(ms)" "p99(ms)" "ok/proxy-cpu-s" "server%" "other%"
for round in $(seq "$ROUNDS"); do
    order=("${PROXIES[@]}")
    if ! ((round % 2)); then
        order=()
        for ((i = ${#PROXIES[@]} - 1; i >= 0; i--)); do order+=("${PROXIES[i]}"); done
    fi
    for mode in $MODES; do
        for name in "${order[@]}"; do
            line=$(run_one "$name" "$(port_of "$name")" "$mode" "$DURATION" "$RES/r$round-$name-$mode.json")
            read -r rps non200 errs p50 p99 eff srv other <<<"$line"
            VALS[$name-$mode]+="$rps "
            P99[$name-$mode]+="$p99 "
            EFF[$name-$mode]+="$eff "
            SRVP[$name-$mode]+="$srv "
            OTHER+="$other "
            OTHC[$name-$mode]+="$other "
            mark=""
            awk -v o="$other" 'BEGIN{exit !(o > 2)}' && mark=" *"
            printf '%-5s %-4s %-8s %10.1f %7d %7d %8.2f %8.2f %14.0f %8.0f %7.1f%s\n' "$round" "$mode" "$name" "$rps" "$non200" "$errs" "$p50" "$p99" "$eff" "$srv" "$other" "$mark"
            if ((non200 > 0 || errs > 0)); then
                log "WARNING: $name $mode round $round: $non200 non-200 responses, $errs errors (see JSON with KEEP_TMP=1)"
            fi
        done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR%2)print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR==1{lo=$1} {hi=$1} END{printf "%.0f-%.0f", lo, hi}'; }

cpu_model=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)
if [[ $PIN == 1 ]]; then
    pinning="proxy+upstream on CPU 0, oha on CPU 1 (taskset)"
else
    pinning="none: proxy, upstream and oha share all $(nproc) CPUs"
fi
others=""
if ((${#EXTRA[@]})); then
    printf -v others ', %s' "${EXTRA[@]}"
    others=" (and ${others#, })"
fi
echo
echo "mtls-sidecar vs nginx${others}, mTLS, HTTP/1.1, same PKI/upstream/machine/run"
echo "  machine:  $(nproc) CPUs ($cpu_model); pinning: $pinning"
echo "  PKI:      $([[ $KEY == rsa ]] && echo 'RSA 2048' || echo 'ECDSA P-256') (CA, server, client), openssl CLI"
first="  TLS:     "
for name in "${PROXIES[@]}"; do
    printf '%s %-8s %s\n' "$first" "$name:" "${TLS[$name]}"
    first="           "
done
echo "  sidecar:  $("$SIDECAR" --version) ($sidecar_threads threads), server --protocol $PROTOCOL"
echo "  nginx:    $(nginx -v 2>&1 | sed 's/nginx version: //') ($nginx_workers workers), $(openssl version | cut -d' ' -f1-2)"
if runs haproxy; then
    echo "  haproxy:  $(haproxy -v | head -n1 | awk '{print $3}') ($haproxy_threads threads), mode http, http-reuse always"
fi
if runs stunnel; then
    echo "  stunnel:  $("$STUNNEL" -version 2>&1 | awk '/^stunnel /{print $2; exit}') (one thread per client connection), TCP only, a new upstream connection per client connection"
fi
for name in "${PROXIES[@]}"; do
    [[ -n ${HDR_NOTE[$name]:-} ]] && echo "  headers:  $name: ${HDR_NOTE[$name]}"
done
if [[ $PROTOCOL == tcp ]]; then
    echo "  note:     nginx$(runs haproxy && echo ' and haproxy') proxy HTTP with the identity headers; the sidecar$(runs stunnel && echo ' and stunnel') proxy TCP"
fi
printf '  upstream: nginx, 1 worker, return 200 "ok\\n"\n'
echo "  load:     $("$OHA" --version) (native-tls/OpenSSL, $OHA_THREADS threads) and $(ab -V | head -1 | sed 's/This is //; s/,.*//'), c=$CONC, ${DURATION}s per run, $ROUNDS alternating rounds"
echo
ratio() { awk -v s="$1" -v n="$2" 'BEGIN{printf "%.2f", (n>0)?s/n:0}'; }
# table_row LABEL FORMAT RATIOS: one line of the table from M (proxy -> median); RATIOS=1 adds
# each proxy's ratio to nginx. Columns: sidecar, nginx, sidecar/nginx, then per extra peer its
# value and ratio.
declare -A M
table_row() {
    local label=$1 fmt=$2 with_ratio=$3 line name r=""
    ((with_ratio)) && r=$(ratio "${M[sidecar]}" "${M[nginx]}")
    # shellcheck disable=SC2059 # the format is the argument
    line=$(printf "%-30s $fmt $fmt %14s" "$label" "${M[sidecar]}" "${M[nginx]}" "$r")
    for name in "${EXTRA[@]}"; do
        ((with_ratio)) && r=$(ratio "${M[$name]}" "${M[nginx]}")
        # shellcheck disable=SC2059
        line+=$(printf " $fmt %14s" "${M[$name]}" "$r")
    done
    echo "${line%"${line##*[! ]}"}"
}
medians() { # ARRAY_NAME MODE [range]: fill M from VALS/EFF/P99/SRVP
    local -n arr=$1
    local name
    for name in "${PROXIES[@]}"; do
        if [[ ${3:-} == range ]]; then M[$name]=$(range <<<"${arr[$name-$2]}"); else M[$name]=$(median <<<"${arr[$name-$2]}"); fi
    done
}
header=$(printf '%-30s %12s %12s %14s' "median of $ROUNDS runs" "sidecar" "nginx" "sidecar/nginx")
for name in "${EXTRA[@]}"; do header+=$(printf ' %12s %14s' "$name" "$name/nginx"); done
echo "$header"
for mode in $MODES; do
    case $mode in
    hs) label="full mTLS handshakes/s" ;;
    ka) label="keep-alive req/s (oha, 1.1)" ;;
    ab) label="keep-alive req/s (ab -k, 1.0)" ;;
    dl) label="1 MiB downloads/s (oha)" ;;
    esac
    medians VALS "$mode"
    table_row "$label" '%12.0f' 1
    medians VALS "$mode" range
    table_row "  (min-max)" '%12s' 0
    medians EFF "$mode"
    table_row "  per proxy CPU-second" '%12.0f' 1
    declare -A CPU_RATIO=()
    for name in sidecar "${EXTRA[@]}"; do
        CPU_RATIO[$name]=$(ratio "${M[nginx]}" "${M[$name]}") # its CPU per unit over nginx's
    done
    medians P99 "$mode"
    table_row "  p99 latency (ms)" '%12.2f' 1
    for name in sidecar "${EXTRA[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "${label%/s*}${label#*/s}" "$name" "${CPU_RATIO[$name]}" \
            "$(ratio "${M[$name]}" "${M[nginx]}")" >>"$RES/summary.tsv"
    done
    medians SRVP "$mode"
    table_row "  server CPU busy %" '%12.0f' 0
    if [[ $PIN == 1 ]]; then
        for who in "${PROXIES[@]}"; do
            v=$(median <<<"${SRVP[$who-$mode]}")
            o=$(median <<<"${OTHC[$who-$mode]}")
            if awk -v v="$v" -v o="$o" 'BEGIN{exit !(v < 90 && o <= 2)}'; then
                echo "  note: $who's CPU was ${v%.*}% busy: the load generator (1 CPU) was the limit, so its $label is a lower bound"
            elif awk -v v="$v" 'BEGIN{exit !(v < 90)}'; then
                echo "  note: $who's CPU was ${v%.*}% busy, and other processes took CPU (other%): disturbed"
            fi
        done
    fi
done
other_max=$(tr ' ' '\n' <<<"$OTHER" | grep -v '^$' | sort -g | tail -n1)
if awk -v o="$other_max" 'BEGIN{exit !(o > 2)}'; then
    echo "WARNING: runs marked * lost over 2% of the CPUs (up to $(printf '%.0f' "$other_max")%) to other processes; rerun on an idle machine"
fi
echo "  sidecar binary: $SIDECAR"
if [[ $CHART != none ]]; then
    mkdir -p "$(dirname "$CHART")"
    python3 "$HERE/vs_nginx_plot.py" "$RES/summary.tsv" "$CHART" \
        "sidecar${others:+$(printf ', %s' "${EXTRA[@]}")} vs nginx, $([[ $KEY == rsa ]] && echo 'RSA 2048' || echo 'ECDSA P-256'), --protocol $PROTOCOL, c=$CONC, $(date +%F)"
    echo "  chart: $CHART"
fi
echo "command: MODES=\"$MODES\" PROTOCOL=$PROTOCOL ${PEERS_SET:+PEERS=\"$PEERS\" }${NGINX_KEEPALIVE_REQUESTS:+NGINX_KEEPALIVE_REQUESTS=$NGINX_KEEPALIVE_REQUESTS }${NGINX_WORKERS_SET:+NGINX_WORKERS=$NGINX_WORKERS }PIN=$PIN KEY=$KEY CONC=$CONC DURATION=$DURATION ROUNDS=$ROUNDS bash bench/vs_nginx.sh"
