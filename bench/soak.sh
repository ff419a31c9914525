#!/usr/bin/env bash
# Soak test for `mtls-sidecar server --protocol http` (not run in CI): mixed mTLS load for a long
# time while the server certificate is rotated every few seconds with kubelet's `..data` swap, and a
# deliberately broken update (a key that does not match the certificate) is written every minute.
# Watches the sidecar for leaks and for failed requests.
#
# Usage (from anywhere):  bash bench/soak.sh                 # 30 minutes
#                         DURATION=90s bash bench/soak.sh    # a quick check
# Takes DURATION plus about 10 s (plus `cargo build --release` the first time). Needs bash, cargo,
# openssl, curl (with HTTP/2), jq and python3 (stdlib only); loopback only, no root, no install.
#
# What one run does:
#   1. A throwaway PKI with the openssl CLI: ECDSA P-256 CA, server cert (serverAuth, DNS:localhost,
#      IP:127.0.0.1), client cert (clientAuth, CN=soak-client,OU=Web Services,O=Example Org).
#   2. The server triple in a kubelet-style volume (tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>).
#   3. A plaintext upstream (python3 http.server, HTTP/1.1 keep-alive) that answers 200 with
#      "ok <X-Client-DN>\n", and `mtls-sidecar server --protocol http --allow-all` in front of it.
#   4. Load for DURATION (python3 threads + curl), every response checked (status, body):
#      - KA_CONNS keep-alive HTTP/1.1 connections with the client cert, each reopened every 20 s
#        (so connections stay open across several rotations);
#      - NEW_CONNS workers opening a new TLS connection (full handshake) per request;
#      - H2_WORKERS workers running `curl --http2 --parallel`: 1000 requests, 10 streams at a time,
#        multiplexed on one connection per run (a few seconds, so some runs span a rotation);
#      - one worker without a client certificate, every REFUSED_PAUSE s: it must be refused during
#        the handshake (counted as `refused`, not as a failure; an HTTP answer would be a failure).
#   5. Every ROTATE_EVERY a fresh server cert is written with the kubelet swap and must appear in
#      /status (sha256) within 5 s; every BROKEN_EVERY that slot writes a new cert with a key that
#      does not match instead: /status must show last_error.reason=key_mismatch while the old cert
#      stays served, and the next good rotation must clear last_error.
#   6. Every SAMPLE_EVERY one CSV line into bench/results/soak-<date>.csv:
#        time, elapsed_s, rss_kib (VmRSS), fds (/proc/PID/fd), threads, cpu_s (user+system),
#        generation (/status), rotations (good ones written), broken (broken ones written),
#        ok, failed, refused (cumulative request counts), active_conns (/status listener)
#   7. A summary, bench/results/soak-<date>.svg (bench/soak_plot.py), and the exit status.
#
# Exit status 1 when any of these happened (else 0):
#   - an unexpected failure: a request with the client cert that did not get 200 and the expected
#     body, a connection error or timeout, or a client without a cert that got an HTTP answer;
#   - a good rotation not served within 5 s, a broken update not refused as key_mismatch (or served),
#     or last_error not cleared by the next good rotation; the sidecar dying or not exiting 0 on SIGTERM;
#   - unbounded growth (leak rule): the samples after a warm-up (the first 10 % of the run, at most
#     120 s) are split in quarters; RSS fails when the last quarter's mean is over 1.5x the first
#     quarter's AND at least GROW_RSS_MIB (8) MiB higher; fds likewise with GROW_FDS (20) more fds.
#     The absolute floors keep small baselines (tens of fds that vary with connections in flight)
#     from tripping the ratio.
#
# Knobs (environment):
#   DURATION=30m        how long the load runs: 90, 90s, 30m, 2h
#   ROTATE_EVERY=5s     server cert rotation period       BROKEN_EVERY=60s  broken update period
#   SAMPLE_EVERY=5s     CSV sampling period               REFUSED_PAUSE=0.2 seconds between refused clients
#   KA_CONNS=4 NEW_CONNS=2 H2_WORKERS=1                   load workers (see 4.)
#   PAUSE=0             seconds each load worker sleeps between requests (lower the load)
#   SIDECAR_BIN=path    use this binary instead of `cargo build --release`
#   KEEP_TMP=1          keep the temp dir (PKI, volume, logs); kept anyway when the run fails
#   OUT=path.csv        CSV path (the SVG goes next to it)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/peers.sh
. "$HERE/lib/peers.sh"

log() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# "90" "90s" "30m" "2h" -> seconds (integer); "0.5" stays as is only where a float is allowed
secs() {
    case $1 in
        *h) echo $((${1%h} * 3600)) ;;
        *m) echo $((${1%m} * 60)) ;;
        *s) echo $((${1%s})) ;;
        *) echo $(($1)) ;;
    esac
}
DURATION_S=$(secs "${DURATION:-30m}")
ROTATE_S=$(secs "${ROTATE_EVERY:-5s}")
BROKEN_S=$(secs "${BROKEN_EVERY:-60s}")
SAMPLE_S=$(secs "${SAMPLE_EVERY:-5s}")
KA_CONNS=${KA_CONNS:-4}
NEW_CONNS=${NEW_CONNS:-2}
H2_WORKERS=${H2_WORKERS:-1}
REFUSED_PAUSE=${REFUSED_PAUSE:-0.2}
PAUSE=${PAUSE:-0}
GROW_RSS_MIB=${GROW_RSS_MIB:-8}
GROW_FDS=${GROW_FDS:-20}
((DURATION_S > 0 && ROTATE_S > 0 && BROKEN_S > 0 && SAMPLE_S > 0)) || die "durations must be > 0"

for tool in openssl curl jq python3; do command -v "$tool" >/dev/null || die "needs $tool"; done
curl --version | grep -qw HTTP2 || die "curl lacks HTTP/2 support"
PY=$(python3 -c 'import sys; print(sys.executable)')

if [[ -n ${SIDECAR_BIN:-} ]]; then
    SIDECAR=$SIDECAR_BIN
else
    log "cargo build --release in $REPO"
    (cd "$REPO" && cargo build --release --quiet)
    SIDECAR="$REPO/target/release/mtls-sidecar"
fi
[[ -x $SIDECAR ]] || die "no sidecar binary at $SIDECAR"

STAMP=$(date +%Y%m%d-%H%M%S)
CSV=${OUT:-$HERE/results/soak-$STAMP.csv}
SVG=${CSV%.csv}.svg
mkdir -p "$(dirname "$CSV")"

# pick_port: bench/lib/peers.sh.
PORT='' APORT='' UPORT=''
pick_port PORT
pick_port APORT
pick_port UPORT

# ---------------------------------------------------------------- processes + cleanup
TMP=$(mktemp -d /tmp/mtls-soak.XXXXXX)
PIDS=()
KEEP=${KEEP_TMP:-0}
cleanup() {
    local rc=$?
    stop_pids "${PIDS[@]}"
    if [[ $KEEP == 1 || $rc != 0 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- PKI (openssl CLI, ECDSA P-256)
PKI="$TMP/pki"
mkdir -p "$PKI"
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$PKI/server.ext"
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth" >"$PKI/client.ext"
# issue NAME SUBJECT EXTFILE: NAME.key + NAME.crt signed by the CA
issue() {
    newkey "$PKI/$1.key"
    openssl req -new -key "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -CAserial "$PKI/ca.srl" -days 2 -sha256 -extfile "$3" -out "$PKI/$1.crt" 2>/dev/null
}
# A fresh server certificate and key in $PKI/server.{crt,key}
issue_server() { issue server "/O=Example Org/CN=localhost" "$PKI/server.ext"; }
# SHA-256 of a certificate's DER, as /status shows it
cert_sha256() { openssl x509 -in "$1" -outform DER | sha256sum | cut -d' ' -f1; }

newkey "$PKI/ca.key"
openssl req -x509 -new -key "$PKI/ca.key" -sha256 -days 2 -out "$PKI/ca.crt" \
    -subj "/O=Example Org/OU=Security/CN=mTLS Soak Root CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
issue client "/O=Example Org/OU=Web Services/CN=soak-client" "$PKI/client.ext"
issue_server
openssl verify -CAfile "$PKI/ca.crt" "$PKI/server.crt" "$PKI/client.crt" >/dev/null

# ---------------------------------------------------------------- kubelet-style volume
VOL="$TMP/vol"
mkdir -p "$VOL"
# kubelet_write DIR CRT KEY CA: what kubelet's atomic writer does for a Secret update: a new
# ..<timestamp> dir with the files, a ..data_tmp symlink to it renamed onto ..data (the commit
# point), top-level symlinks for new keys, then the previous generation removed.
kubelet_write() {
    local dir=$1 crt=$2 key=$3 ca=$4 ts old f
    ts="..$(date -u +%Y_%m_%d_%H_%M_%S).$RANDOM$RANDOM"
    old=$(readlink "$dir/..data" || true)
    mkdir -m 755 "$dir/$ts"
    install -m 644 "$crt" "$dir/$ts/tls.crt"
    install -m 644 "$key" "$dir/$ts/tls.key"
    install -m 644 "$ca" "$dir/$ts/ca.crt"
    ln -sfn "$ts" "$dir/..data_tmp"
    mv -T "$dir/..data_tmp" "$dir/..data"
    for f in tls.crt tls.key ca.crt; do
        [[ -L $dir/$f ]] || ln -s "..data/$f" "$dir/$f"
    done
    if [[ $old == ..* && $old != */* && $old != "$ts" ]]; then rm -rf "${dir:?}/$old"; fi
}
kubelet_write "$VOL" "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt"
SERVED_SHA=$(cert_sha256 "$PKI/server.crt")

# ---------------------------------------------------------------- upstream (plaintext, python3)
cat >"$TMP/upstream.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sidecar's pool expects

    def do_GET(self):
        body = ("ok %s\n" % self.headers.get("X-Client-DN", "-")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
"$PY" "$TMP/upstream.py" "$UPORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UPORT/" || true) == 200 ]] && break
    sleep 0.1
done
[[ $(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UPORT/") == 200 ]] || die "upstream down"

"$SIDECAR" server --protocol http --allow-all --cert-dir "$VOL" \
    --listen "127.0.0.1:$PORT" --target "127.0.0.1:$UPORT" --admin-listen "127.0.0.1:$APORT" \
    >"$TMP/sidecar.log" 2>&1 &
SIDECAR_PID=$!
PIDS+=("$SIDECAR_PID")
log "sidecar $("$SIDECAR" --version) pid $SIDECAR_PID on 127.0.0.1:$PORT (admin :$APORT), upstream :$UPORT"

CURL=(curl -sS --max-time 5 --cacert "$PKI/ca.crt" --resolve "localhost:$PORT:127.0.0.1")
CLIENT=(--cert "$PKI/client.crt" --key "$PKI/client.key")
EXPECTED_BODY="ok CN=soak-client,OU=Web Services,O=Example Org"
for _ in $(seq 100); do
    [[ $("${CURL[@]}" "${CLIENT[@]}" "https://localhost:$PORT/" 2>/dev/null || true) == "$EXPECTED_BODY" ]] && break
    sleep 0.1
done
body=$("${CURL[@]}" "${CLIENT[@]}" "https://localhost:$PORT/" 2>&1 || true)
[[ $body == "$EXPECTED_BODY" ]] || { tail -n 20 "$TMP/sidecar.log" >&2; die "sidecar answered '$body', expected '$EXPECTED_BODY'"; }
[[ $("${CURL[@]}" --http2 "${CLIENT[@]}" -o /dev/null -w '%{http_version}' "https://localhost:$PORT/") == 2 ]] ||
    die "no HTTP/2 through the sidecar"
if "${CURL[@]}" -o /dev/null "https://localhost:$PORT/" 2>/dev/null; then die "a client without a certificate got an answer"; fi

status() { curl -sS --max-time 2 "http://127.0.0.1:$APORT/status"; }
# status_field JQ_EXPR: one field of the first credential set
status_field() { status | jq -r ".sets[0].$1 // \"\""; }
[[ $(status_field sha256) == "$SERVED_SHA" ]] || die "/status does not show the initial certificate"

# ---------------------------------------------------------------- load generator (python3 + curl)
cat >"$TMP/load.py" <<'EOF'
# Mixed mTLS load; writes cumulative counts "ok failed refused" to STATS twice a second and one line
# per unexpected failure to FAILURES. Stops on SIGTERM after the requests in flight.
import http.client, os, signal, ssl, subprocess, sys, threading, time
from datetime import datetime, timezone

(port, ca, cert, key, stats, failures, h2conf, expected, ka, new, h2, refused_pause, pause) = sys.argv[1:]
port, expected = int(port), (expected + "\n").encode()
refused_pause, pause = float(refused_pause), float(pause)
with_cert = ssl.create_default_context(cafile=ca)
with_cert.load_cert_chain(cert, key)
no_cert = ssl.create_default_context(cafile=ca)
stop = threading.Event()
lock = threading.Lock()
counts = {"ok": 0, "failed": 0, "refused": 0}
kinds = {}  # per worker kind / refusal reason, for the summary
fail_log = open(failures, "a", buffering=1)

def count(what, kind, n=1, detail=None):
    with lock:
        counts[what] += n
        kinds[f"{what}:{kind}"] = kinds.get(f"{what}:{kind}", 0) + n
        if detail is not None:
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            fail_log.write(f"{stamp} {kind} {detail}\n")

def check(kind, resp):
    body = resp.read()
    if resp.status == 200 and body == expected:
        count("ok", kind)
    else:
        count("failed", kind, detail=f"status {resp.status} body {body[:100]!r}")

def keepalive(i):  # one connection, reopened every 20 s (client side, between requests)
    conn, born = None, 0.0
    while not stop.is_set():
        if conn is None:
            conn, born = http.client.HTTPSConnection("127.0.0.1", port, context=with_cert, timeout=10), time.monotonic()
        try:
            conn.request("GET", f"/ka/{i}")
            check("keepalive", conn.getresponse())
        except Exception as e:
            count("failed", "keepalive", detail=f"conn age {time.monotonic() - born:.1f}s: {e!r}")
            conn.close()
            conn = None
        if conn is not None and time.monotonic() - born > 20:
            conn.close()
            conn = None
        stop.wait(pause)

def new_conn(i):  # a new TLS connection (full handshake) per request
    while not stop.is_set():
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=with_cert, timeout=10)
        try:
            conn.request("GET", f"/new/{i}", headers={"Connection": "close"})
            check("newconn", conn.getresponse())
        except Exception as e:
            count("failed", "newconn", detail=repr(e))
        finally:
            conn.close()
        stop.wait(pause)

def http2(i):  # curl --http2 --parallel: 1000 streams, 10 at a time, on one connection (a few s)
    n = sum(1 for line in open(h2conf) if line.startswith("url"))
    want = f"200 2 {len(expected)}"
    while not stop.is_set():
        # results on stderr (unbuffered, so they are counted as they complete), with curl's errors
        p = subprocess.Popen(["curl", "-sS", "--no-progress-meter", "--http2", "--parallel", "--parallel-max", "10",
                              "-K", h2conf, "-w", "%{stderr}%{http_code} %{http_version} %{size_download}\n"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        good, other = 0, []
        for line in p.stderr:
            if line.rstrip("\n") == want:
                good += 1
                count("ok", "http2")
            else:
                other.append(line.strip())
        rc = p.wait()
        if good != n or rc != 0:
            count("failed", "http2", n - good, detail=f"curl exit {rc}, {good}/{n} ok, other output {other[:8]}")
        stop.wait(pause)

def refused():  # no client certificate: the handshake must fail, no HTTP answer
    while not stop.is_set():
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=no_cert, timeout=10)
        try:
            conn.request("GET", "/refused")
            resp = conn.getresponse()
            count("failed", "refused", detail=f"no client cert, yet answered {resp.status}")
        except ssl.SSLError as e:
            count("refused", e.reason or type(e).__name__)
        except (ConnectionResetError, BrokenPipeError) as e:
            count("refused", type(e).__name__)
        except Exception as e:
            count("failed", "refused", detail=f"no client cert: {e!r}")
        finally:
            conn.close()
        stop.wait(refused_pause)

def write_stats():
    with lock:
        line = f"{counts['ok']} {counts['failed']} {counts['refused']}\n"
    with open(stats + ".tmp", "w") as f:
        f.write(line)
    os.replace(stats + ".tmp", stats)

signal.signal(signal.SIGTERM, lambda *_: stop.set())
threads = [threading.Thread(target=keepalive, args=(i,)) for i in range(int(ka))]
threads += [threading.Thread(target=new_conn, args=(i,)) for i in range(int(new))]
threads += [threading.Thread(target=http2, args=(i,)) for i in range(int(h2))]
threads += [threading.Thread(target=refused)]
for t in threads:
    t.start()
while not stop.wait(0.5):
    write_stats()
for t in threads:
    t.join(30)
write_stats()
print(" ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
EOF
{
    for i in $(seq 1000); do
        printf 'url = "https://localhost:%s/h2/%s"\noutput = "/dev/null"\n' "$PORT" "$i"
    done
    printf 'cacert = "%s"\ncert = "%s"\nkey = "%s"\nresolve = "localhost:%s:127.0.0.1"\nmax-time = 10\n' \
        "$PKI/ca.crt" "$PKI/client.crt" "$PKI/client.key" "$PORT"
} >"$TMP/h2.curlrc"
: >"$TMP/failures.log"
echo "0 0 0" >"$TMP/load.stats"
"$PY" "$TMP/load.py" "$PORT" "$PKI/ca.crt" "$PKI/client.crt" "$PKI/client.key" "$TMP/load.stats" \
    "$TMP/failures.log" "$TMP/h2.curlrc" "$EXPECTED_BODY" "$KA_CONNS" "$NEW_CONNS" "$H2_WORKERS" \
    "$REFUSED_PAUSE" "$PAUSE" >"$TMP/load.log" 2>&1 &
LOAD_PID=$!
PIDS+=("$LOAD_PID")

# ---------------------------------------------------------------- rotation, checks, sampling
PROBLEMS=()
problem() { PROBLEMS+=("$(printf '%(%H:%M:%S)T' -1) $*"); log "PROBLEM: $*"; }
now_ms() { NOW=$((${EPOCHREALTIME//[.,]/} / 1000)); }
ROTATIONS=0 APPLIED=0 BROKEN=0 REFUSED_BROKEN=0 CLEARED=0 PENDING_CLEAR=0

# wait_status COND_JQ SECONDS: poll /status until the jq condition on the first set holds
wait_status() {
    local deadline=$((${EPOCHREALTIME//[.,]/} / 1000 + $2 * 1000))
    while ((${EPOCHREALTIME//[.,]/} / 1000 < deadline)); do
        [[ $(status | jq -r ".sets[0] | $1" 2>/dev/null) == true ]] && return 0
        sleep 0.05
    done
    return 1
}
rotate_good() {
    issue_server
    local sha
    sha=$(cert_sha256 "$PKI/server.crt")
    kubelet_write "$VOL" "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt"
    ROTATIONS=$((ROTATIONS + 1))
    if wait_status ".sha256 == \"$sha\"" 5; then
        APPLIED=$((APPLIED + 1))
        SERVED_SHA=$sha
    else
        problem "rotation $ROTATIONS (sha256 ${sha:0:12}) not served within 5 s: $(status | jq -c .sets[0])"
    fi
    if ((PENDING_CLEAR)); then
        if wait_status '.last_error == null' 1; then
            CLEARED=$((CLEARED + 1))
        else
            problem "last_error not cleared by the good rotation after a broken update: $(status | jq -c .sets[0])"
        fi
        PENDING_CLEAR=0
    fi
}
rotate_broken() {
    # A new certificate with a key from another issuance.
    issue_server
    newkey "$TMP/wrong.key"
    kubelet_write "$VOL" "$PKI/server.crt" "$TMP/wrong.key" "$PKI/ca.crt"
    BROKEN=$((BROKEN + 1))
    if wait_status '.last_error.reason == "key_mismatch"' 5; then
        REFUSED_BROKEN=$((REFUSED_BROKEN + 1))
    else
        problem "broken update $BROKEN not refused as key_mismatch within 5 s: $(status | jq -c .sets[0])"
    fi
    local served
    served=$(status_field sha256)
    [[ $served == "$SERVED_SHA" ]] || problem "broken update $BROKEN: the served certificate changed to $served"
    PENDING_CLEAR=1
}

TICK=$(getconf CLK_TCK)
echo "time,elapsed_s,rss_kib,fds,threads,cpu_s,generation,rotations,broken,ok,failed,refused,active_conns" >"$CSV"
sample() {
    local rss thr cpu fds st gen act ok failed refused
    rss=$(awk '/^VmRSS:/{print $2}' "/proc/$SIDECAR_PID/status")
    thr=$(awk '/^Threads:/{print $2}' "/proc/$SIDECAR_PID/status")
    cpu=$(sed 's/.*) //' "/proc/$SIDECAR_PID/stat" | awk -v hz="$TICK" '{printf "%.2f", ($12 + $13) / hz}')
    fds=$(find "/proc/$SIDECAR_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    st=$(status || echo '{}')
    gen=$(jq -r '.sets[0].generation // ""' <<<"$st")
    act=$(jq -r '.listeners[0].active_connections // ""' <<<"$st")
    read -r ok failed refused <"$TMP/load.stats"
    printf '%(%Y-%m-%dT%H:%M:%S)T,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' -1 $(((NOW - START) / 1000)) \
        "$rss" "$fds" "$thr" "$cpu" "$gen" "$ROTATIONS" "$BROKEN" "$ok" "$failed" "$refused" "$act" >>"$CSV"
    LAST_FAILED=$failed
}

GEN0=$(status_field generation)
now_ms
START=$NOW
END=$((START + DURATION_S * 1000))
NEXT_SAMPLE=$START NEXT_ROTATE=$((START + ROTATE_S * 1000)) NEXT_BROKEN=$((START + BROKEN_S * 1000))
LAST_FAILED=0
log "load running for ${DURATION_S}s: rotation every ${ROTATE_S}s, broken update every ${BROKEN_S}s, CSV $CSV"
while now_ms && ((NOW < END)); do
    kill -0 "$SIDECAR_PID" 2>/dev/null || { tail -n 30 "$TMP/sidecar.log" >&2; die "the sidecar died"; }
    kill -0 "$LOAD_PID" 2>/dev/null || { cat "$TMP/load.log" >&2; die "the load generator died"; }
    if ((NOW >= NEXT_ROTATE)); then
        if ((NOW >= NEXT_BROKEN)); then
            rotate_broken
            NEXT_BROKEN=$((NEXT_BROKEN + BROKEN_S * 1000))
        else
            rotate_good
        fi
        NEXT_ROTATE=$((NEXT_ROTATE + ROTATE_S * 1000))
        now_ms
    fi
    if ((NOW >= NEXT_SAMPLE)); then
        prev_failed=$LAST_FAILED
        sample
        ((LAST_FAILED == prev_failed)) || log "$((LAST_FAILED - prev_failed)) unexpected failure(s), see below"
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE_S * 1000))
        if ((SECONDS % 60 < SAMPLE_S)); then log "$(tail -n 1 "$CSV")"; fi
    fi
    sleep 0.1
done

# ---------------------------------------------------------------- stop, final sample, verdict
kill -TERM "$LOAD_PID"
wait "$LOAD_PID" || problem "load generator exited $?"
now_ms
sample
GEN1=$(status_field generation)
METRICS=$(curl -sS --max-time 2 "http://127.0.0.1:$APORT/metrics" || true)
t0=$SECONDS
kill -TERM "$SIDECAR_PID"
rc=0
wait "$SIDECAR_PID" || rc=$?
((rc == 0)) || problem "sidecar exited $rc on SIGTERM"
log "sidecar stopped in $((SECONDS - t0)) s (exit $rc)"

read -r OK FAILED REFUSED <"$TMP/load.stats"
# stats over the CSV: min/max/last of a column; leak rule over the samples after the warm-up
col_stats() { awk -F, -v c="$1" 'NR > 1 {v = $c; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; last = v; n++}
    END {printf "%s %s %s", lo, hi, last}' "$CSV"; }
WARM=$((DURATION_S / 10 < 120 ? DURATION_S / 10 : 120))
# growth COL: "first_quarter_mean last_quarter_mean"
growth() { awk -F, -v c="$1" -v w="$WARM" 'NR > 1 && $2 >= w {v[n++] = $c}
    END {q = int(n / 4); if (q < 1) {print "0 0"; exit}
         for (i = 0; i < q; i++) {a += v[i]; b += v[n - 1 - i]}; printf "%.1f %.1f", a / q, b / q}' "$CSV"; }
read -r rss_lo rss_hi rss_last <<<"$(col_stats 3)"
read -r fd_lo fd_hi fd_last <<<"$(col_stats 4)"
read -r rss_a rss_b <<<"$(growth 3)"
read -r fd_a fd_b <<<"$(growth 4)"
if awk -v a="$rss_a" -v b="$rss_b" -v f="$GROW_RSS_MIB" 'BEGIN {exit !(b > 1.5 * a && b - a > f * 1024)}'; then
    problem "RSS grew: first-quarter mean ${rss_a} KiB, last-quarter mean ${rss_b} KiB"
fi
if awk -v a="$fd_a" -v b="$fd_b" -v f="$GROW_FDS" 'BEGIN {exit !(b > 1.5 * a && b - a > f)}'; then
    problem "open fds grew: first-quarter mean ${fd_a}, last-quarter mean ${fd_b}"
fi
((FAILED == 0)) || problem "$FAILED unexpected request failures"
((APPLIED == ROTATIONS)) || problem "$APPLIED of $ROTATIONS rotations served"
((REFUSED_BROKEN == BROKEN)) || problem "$REFUSED_BROKEN of $BROKEN broken updates refused as key_mismatch"
publishes=$((GEN1 - GEN0))
((publishes == APPLIED)) || problem "generation went from $GEN0 to $GEN1 ($publishes publishes) for $APPLIED good rotations"

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
echo
echo "mtls-sidecar soak: ${DURATION_S}s, $("$SIDECAR" --version), $(nproc) CPUs"
echo "  requests ok:        $OK ($(awk -v n="$OK" -v d="$DURATION_S" 'BEGIN {printf "%.0f", n / d}')/s)"
echo "  by kind:            $(sed -n '$p' "$TMP/load.log")"
echo "  unexpected failures: $FAILED"
echo "  refused (no cert):  $REFUSED (expected)"
echo "  rotations:          $ROTATIONS performed, $APPLIED served within 5 s; generation $GEN0 -> $GEN1"
echo "  broken updates:     $BROKEN written, $REFUSED_BROKEN refused as key_mismatch, $CLEARED cleared by the next rotation"
echo "  RSS MiB:            min $(mib "$rss_lo"), max $(mib "$rss_hi"), last $(mib "$rss_last");" \
    "mean after warm-up: first quarter $(mib "$rss_a"), last quarter $(mib "$rss_b")"
echo "  open fds:           min $fd_lo, max $fd_hi, last $fd_last; mean after warm-up: first quarter $fd_a, last quarter $fd_b"
echo "  sidecar CPU:        $(tail -n 1 "$CSV" | cut -d, -f6) s; threads $(tail -n 1 "$CSV" | cut -d, -f5)"
echo "  metrics at the end:"
grep -E '^mtls_sidecar_(reloads_total|reload_failures_total\{[^}]*key_mismatch|upstream_failures_total|connections_total)' \
    <<<"$METRICS" | sed 's/^mtls_sidecar_/    /' || true
OTHER_LOG=$(grep -E ' (WARN|ERROR) ' "$TMP/sidecar.log" | grep -v 'credentials refused; keeping the last good ones' || true)
echo "  sidecar log:        $(grep -c 'credentials refused; keeping the last good ones.*key_mismatch' "$TMP/sidecar.log" || true)" \
    "'credentials refused ... key_mismatch' lines, $(grep -c . <<<"$OTHER_LOG" || true) other WARN/ERROR lines"
[[ -z $OTHER_LOG ]] || head -n 10 <<<"$OTHER_LOG" | cut -c1-300 | sed 's/^/    /'
echo "  CSV:                $CSV"
if "$PY" "$HERE/soak_plot.py" "$CSV" "$SVG"; then echo "  SVG:                $SVG"; else log "plot failed"; fi
if ((${#PROBLEMS[@]})); then
    KEEP=1
    echo
    echo "FAILED: ${#PROBLEMS[@]} problem(s)"
    printf '  %s\n' "${PROBLEMS[@]}"
    if [[ -s $TMP/failures.log ]]; then
        echo "first unexpected failures ($TMP/failures.log):"
        head -n 20 "$TMP/failures.log" | sed 's/^/  /'
        echo "sidecar log around the first one ($TMP/sidecar.log, without the refused clients' lines):"
        first=$(head -n 1 "$TMP/failures.log" | cut -c1-23) # both logs start with a UTC ISO 8601 time
        grep -v 'reason="no_client_cert"' "$TMP/sidecar.log" >"$TMP/sidecar-filtered.log" || true
        n=$(awk -v t="$first" 'substr($0, 1, 23) >= t {print NR; exit}' "$TMP/sidecar-filtered.log")
        [[ -z $n ]] || sed -n "$((n > 10 ? n - 10 : 1)),$((n + 10))p" "$TMP/sidecar-filtered.log" | cut -c1-300 | sed 's/^/  /'
    fi
    exit 1
fi
echo "OK: no unexpected failures, every rotation served, every broken update refused, no unbounded growth"
echo "command: DURATION=${DURATION:-30m} ROTATE_EVERY=${ROTATE_S}s BROKEN_EVERY=${BROKEN_S}s bash bench/soak.sh"
