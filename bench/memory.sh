#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called indirectly: the trap, "start_$name", wait_for
# Memory per connection of `mtls-sidecar server --protocol http` (not run in CI), and in the same
# run, by the same method, of nginx, haproxy and stunnel in front of the same app: the resident
# set (VmRSS) of a freshly started proxy at rest, with N kept-alive mTLS connections open (each has
# completed one request), and 5 s after they all closed. The sidecar's numbers size a pod:
# `limits.memory` must hold `--max-connections` connections (README "Sizing").
#
# Usage:  bash bench/memory.sh                       # sidecar nginx haproxy; 0 100 500 1000 2000
#         STEPS="0 1000" SIDECAR_BIN=path bash bench/memory.sh
#         PEERS=sidecar bash bench/memory.sh         # the sidecar alone: no root needed
#         PEERS="sidecar nginx haproxy stunnel" bash bench/memory.sh
# Knobs (environment):
#   STEPS="0 100 500 1000 2000"  kept-alive connections per step, run in this order on one process
#   PEERS="sidecar nginx haproxy" which proxies, in this order. stunnel only when asked: it relays
#                    TCP (no HTTP, no identity headers), a different kind of proxy than the others
#                    (and a thread per connection, in stunnel and in the app behind it).
#   SIDECAR_BIN=...  use this binary instead of `cargo build --release` in the repo
#   MIMALLOC_ARENA_EAGER_COMMIT, MIMALLOC_PURGE_DELAY  passed to the sidecar; unless the caller set
#                    them, 0 and 0, the image's values (its Dockerfile ENV); the output says which
#   KEEP_TMP=1       keep the temp dir (PKI, configs, logs)
# Needs bash, openssl, curl, python3 (stdlib), procps (pgrep); loopback only. Root only if nginx,
# haproxy or stunnel4 is missing: then it is installed with apt-get (not part of any measurement).
# The sidecar part (PEERS=sidecar) never needs root.
#
# Method, the same for every proxy, one proxy at a time (each is started fresh, measured at rest,
# taken through all STEPS, stopped, before the next one starts, so they never share the machine):
#   - one PKI (ECDSA P-256 CA, server cert for DNS:localhost, client cert), one plaintext upstream
#     app (python3 http.server, HTTP/1.1 keep-alive, serving "ok\n"), one client (the python3
#     loader below); 127.0.0.1 only, free ports.
#   - rest: 1 s after the proxy listens (the sidecar: and its /readyz answers), no connection yet.
#   - step N: the loader opens N TLS connections (4 threads), each sends one GET and reads the
#     app's "ok\n" (200) through the proxy, and keeps them all open. Once the kernel shows N
#     established connections on the proxy's port, wait 1 s and read the RSS ("open"); the loader
#     closes them all; once the proxy has closed its ends too (none left established or in
#     CLOSE_WAIT on its port), wait 5 s and read it again ("5 s after close").
#   - RSS = sum of VmRSS over the proxy's process and its children (nginx: master + its worker;
#     every other proxy is one process), threads included. Pages the nginx master and worker share
#     are counted in both, as VmRSS sums do; the master and the worker alone are printed below the
#     table.
#   - per connection: (RSS open at the largest step - RSS open at the smallest nonzero step) /
#     (difference in connections), in KiB; with a single nonzero step, from rest to it. The first
#     connections cost more (first-use allocations), so use at least two nonzero steps.
# The proxies (configs written below):
#   sidecar  `server --protocol http --allow-all` with --cert/--key/--ca and an admin listener, its
#            defaults otherwise (one tokio worker per CPU). An idle connection stays open for
#            --idle-timeout (5 min), like the peers' 300 s; a step that took over 250 s is flagged.
#   nginx    `worker_processes 1` (one worker, like a one-CPU sidecar) + its master process;
#            `ssl_verify_client on` + proxy_pass with the six identity headers of bench/vs_nginx.sh,
#            upstream keepalive 64; keepalive_timeout 300s (the sidecar's --idle-timeout); one
#            request per connection never reaches keepalive_requests (1000); worker_connections and
#            worker_rlimit_nofile 2 x the largest step + 1024. nginx allocates its connection and
#            event arrays for all worker_connections at start, so its RSS at rest grows with the
#            largest step (about 0.4 KiB per slot here).
#   haproxy  `mode http`, `nbthread 1`, one process (-db), `verify required`, the same six headers
#            as in bench/vs_nginx.sh, `http-reuse always`; client/keep-alive timeouts 300s; maxconn
#            sized for the largest step.
#   stunnel  TCP only: `verifyChain = yes`, one upstream connection and one thread per client
#            connection (Debian's pthread build), idle timeout its default (12 h).
# Prints progress on stderr and one Markdown table (MiB, one decimal) plus a line per proxy on stdout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/peers.sh
. "$HERE/lib/peers.sh"
STEPS="${STEPS:-0 100 500 1000 2000}"
PEERS="${PEERS:-sidecar nginx haproxy}"

log() { printf '[memory] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for n in $STEPS; do [[ $n =~ ^[0-9]+$ ]] || die "STEPS: '$n' is not a number"; done
[[ -n ${STEPS// /} ]] || die "STEPS is empty"
for p in $PEERS; do
  [[ $p == sidecar || $p == nginx || $p == haproxy || $p == stunnel ]] ||
    die "PEERS: unknown proxy '$p' (sidecar nginx haproxy stunnel)"
done
[[ -n ${PEERS// /} ]] || die "PEERS is empty"
wanted() { [[ " $PEERS " == *" $1 "* ]]; }
MAX=0
read -ra STEP_LIST <<<"$STEPS"
for n in "${STEP_LIST[@]}"; do if ((n > MAX)); then MAX=$n; fi; done

# ---------------------------------------------------------------- install (not measured)
need_apt=()
if wanted nginx; then command -v nginx >/dev/null || need_apt+=(nginx); fi
if wanted haproxy; then command -v haproxy >/dev/null || need_apt+=(haproxy); fi
if wanted stunnel; then
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_apt+=(stunnel4)
fi
if ((${#need_apt[@]})); then
  [[ $(id -u) -eq 0 ]] || die "PEERS=\"$PEERS\" needs ${need_apt[*]}: run as root (apt-get install), or install them, or PEERS=sidecar"
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's postinst may start a system nginx on :80 (or haproxy); not ours, left alone.
fi
for tool in openssl curl python3 pgrep; do command -v "$tool" >/dev/null || die "needs $tool"; done

if wanted sidecar; then
  if [ -z "${SIDECAR_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
    SIDECAR_BIN="$REPO/target/release/mtls-sidecar"
  fi
  SIDECAR_BIN=$(realpath "$SIDECAR_BIN")
  [[ -x $SIDECAR_BIN ]] || die "no sidecar binary at $SIDECAR_BIN"
  # The image's allocator settings (its Dockerfile ENV), unless the caller set them.
  MI_ENV=() mi_ours="" mi_theirs=""
  for v in MIMALLOC_ARENA_EAGER_COMMIT MIMALLOC_PURGE_DELAY; do
    if [[ -n ${!v+set} ]]; then
      MI_ENV+=("$v=${!v}") mi_theirs+=" $v=${!v}"
    else
      MI_ENV+=("$v=0") mi_ours+=" $v=0"
    fi
  done
  MI_NOTE=""
  if [[ -n $mi_ours ]]; then MI_NOTE+="$mi_ours (the image's values, set by this script)"; fi
  if [[ -n $mi_theirs ]]; then MI_NOTE+="$mi_theirs (from the caller's environment)"; fi
fi

# ---------------------------------------------------------------- processes + cleanup
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# forget PID: it has exited and was waited for; cleanup must not signal its number again.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do if [[ $p != "$1" ]]; then keep+=("$p"); fi; done
  PIDS=("${keep[@]}")
}
# stop PID: SIGTERM, up to 10 s, then SIGKILL.
stop() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}
cd "$TMP"
# Every proxy and the loader hold one descriptor per client connection (stunnel: plus one upstream
# connection each). Root may raise the hard limit when the largest step needs more.
FDS=$((2 * MAX + 1024))
if [[ $(ulimit -Hn) != unlimited && $(ulimit -Hn) -lt $FDS && $(id -u) -eq 0 ]]; then ulimit -Hn "$FDS"; fi
ulimit -n "$(ulimit -Hn)"

# PKI: ECDSA P-256 CA, server (DNS:localhost), client; in a directory of its own, since the sidecar
# watches the directory of its --cert/--key/--ca files (nothing else is written there).
mkdir pki run
cd pki
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
cd "$TMP"
PKI=$TMP/pki

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The app: HTTP/1.1 keep-alive (the HTTP proxies pool their upstream connections; stunnel's client
# connections each live on one upstream connection, so the app must not close it), one thread per
# connection with small stacks.
mkdir app && echo ok >app/index.html
cat >upstream.py <<'PY'
import functools, http.server, sys, threading
threading.stack_size(256 * 1024)
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle's algorithm the body would wait for the proxy's
    # delayed ACK (40 ms) on every reused upstream connection.
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
Server(("127.0.0.1", int(sys.argv[1])), functools.partial(Handler, directory="app")).serve_forever()
PY
APP=$(port)
python3 upstream.py "$APP" >upstream.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  [[ $(curl -s "http://127.0.0.1:$APP/index.html" || true) == ok ]] && break
  sleep 0.1
done
[[ $(curl -s "http://127.0.0.1:$APP/index.html" || true) == ok ]] || { cat upstream.log >&2; die "the app did not start"; }

# The client: N connections, one request each, held until the file GO exists, then closed. Four
# threads open them (the handshakes release the GIL), so that even the largest step is open well
# within the proxies' idle limits (300 s), as the first connections idle while the rest open.
cat >loader.py <<'PY'
import os, socket, ssl, sys, threading, time
port, n, ready, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
THREADS = 4
ctx = ssl.create_default_context(cafile="pki/ca.crt")
ctx.load_cert_chain("pki/client.crt", "pki/client.key")
conns, errors, lock = [], [], threading.Lock()
def one():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                        server_hostname="localhost")
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"ok\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response, got %r" % data[:100])
        data += chunk
    if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise ConnectionError("not a 200: %r" % data[:100])
    return s
def worker(k):
    for i in range(k, n, THREADS):
        if errors:
            return
        try:
            s = one()
        except Exception as e:
            with lock:
                errors.append("connection %d of %d: %s" % (i + 1, n, e))
            return
        with lock:
            conns.append(s)
threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit(errors[0])
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
for s in conns:
    s.close()
PY

# Sockets with local port $1 in the TCP states matching $2 (hex codes of /proc/net/tcp: 01
# ESTABLISHED, 08 CLOSE_WAIT, 0A LISTEN).
sockets() {
  awk -v p="$(printf ':%04X' "$1")" -v re="$2" \
    'NR > 1 && substr($2, length($2) - 4) == p && $4 ~ re {c++} END {print c + 0}' /proc/net/tcp
}
rss_of() { awk '/^VmRSS:/ {print $2; found = 1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
# "TOTAL SELF": VmRSS (KiB) of process $1 plus its children, and of $1 alone.
tree_rss() {
  local self total c
  self=$(rss_of "$1")
  total=$self
  for c in $(pgrep -P "$1" || true); do total=$((total + $(rss_of "$c"))); done
  echo "$total $self"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# ---------------------------------------------------------------- the proxies
start_sidecar() {
  ADMIN=$(port)
  env "${MI_ENV[@]}" "$SIDECAR_BIN" server --cert "$PKI/server.crt" --key "$PKI/server.key" --ca "$PKI/ca.crt" \
    --listen "127.0.0.1:$1" --target "127.0.0.1:$APP" --protocol http --allow-all \
    --admin-listen "127.0.0.1:$ADMIN" >sidecar.log 2>&1 &
  PID=$!
  LOG=sidecar.log
}
ready_sidecar() { curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1; }

start_nginx() {
  mkdir -p nginx
  # The server block and its identity headers: bench/vs_nginx.sh's, from bench/lib/peers.sh.
  cat >nginx/nginx.conf <<EOF
worker_processes 1;
worker_rlimit_nofile $FDS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $FDS; }
http {
  access_log off;
$(nginx_temp_paths "$TMP/nginx")
  keepalive_timeout 300s;
$(nginx_upstream_backend "$APP")
$(nginx_mtls_server_block "$1" "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt")
}
EOF
  local nginx_cmd=(nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log")
  "${nginx_cmd[@]}" -t -q || die "nginx rejected $TMP/nginx/nginx.conf"
  "${nginx_cmd[@]}" -g 'daemon off;' >nginx/stdout.log 2>&1 &
  PID=$!
  LOG=nginx/error.log
}

start_haproxy() {
  # The config and its identity headers: bench/vs_nginx.sh's, from bench/lib/peers.sh.
  write_haproxy_mtls "$TMP/haproxy" "nbthread 1" "$((MAX + 512))" "$1" \
    "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt" "$APP"
  haproxy -q -c -f haproxy/haproxy.cfg || die "haproxy rejected $TMP/haproxy/haproxy.cfg"
  haproxy -db -f haproxy/haproxy.cfg >haproxy/stdout.log 2>&1 &
  PID=$!
  LOG=haproxy/stdout.log
}

start_stunnel() {
  write_stunnel_mtls "$TMP/stunnel" "$1" "$APP" "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt"
  "$(command -v stunnel4 || command -v stunnel)" stunnel/stunnel.conf >stunnel/stdout.log 2>&1 &
  PID=$!
  LOG=stunnel/stunnel.log
}

# ---------------------------------------------------------------- measurements
declare -A OPEN CLOSED NOTE IDLE SELF
declare -A MASTER_MIN MASTER_MAX
note_master() { # the main process's own VmRSS (nginx: the master), min and max over all readings
  local m=$1 name=$2
  [[ -z ${MASTER_MIN[$name]:-} || $m -lt ${MASTER_MIN[$name]} ]] && MASTER_MIN[$name]=$m
  [[ -z ${MASTER_MAX[$name]:-} || $m -gt ${MASTER_MAX[$name]} ]] && MASTER_MAX[$name]=$m
  return 0
}
# wait_for SECONDS COMMAND...: poll every 0.1 s until COMMAND succeeds; fails after SECONDS.
wait_for() {
  local tries=$(($1 * 10))
  shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.1; done
  return 1
}
alive() { kill -0 "$PID" 2>/dev/null; }
listening() { alive && [[ $(sockets "$P" '^0A$') -ge 1 ]]; }
held_by_proxy() { sockets "$P" '^(01|08)$'; }
all_open() { [[ $(sockets "$P" '^01$') -ge $1 ]]; }
all_closed() { [[ $(held_by_proxy) -eq 0 ]]; }
loader_done() { [[ -e $1 ]] || ! kill -0 "$2" 2>/dev/null; }

measure() {
  local name=$1 i n t0 load r total self est limit
  P=$(port)
  "start_$name" "$P"
  PIDS+=("$PID")
  if ! wait_for 20 listening || { [[ $name == sidecar ]] && ! wait_for 20 ready_sidecar; }; then
    tail -n 20 "$LOG" >&2 || true
    NOTE[$name]="did not start (see its log above)"
    log "$name did not start"
    stop "$PID"
    return 0
  fi
  sleep 1
  read -r total self < <(tree_rss "$PID")
  IDLE[$name]=$total
  SELF[$name]=$self
  note_master "$self" "$name"
  log "$name (pid $PID, port $P): $(mib "$total") MiB at rest"
  # Results are keyed NAME.INDEX (a step may repeat).
  for i in "${!STEP_LIST[@]}"; do
    n=${STEP_LIST[$i]}
    r="$name.$i"
    t0=$SECONDS
    python3 loader.py "$P" "$n" "run/ready.$r" "run/go.$r" 2>"run/loader.$r.log" &
    load=$!
    PIDS+=("$load")
    until loader_done "run/ready.$r" "$load"; do sleep 0.1; done
    if [[ ! -e run/ready.$r ]]; then
      wait "$load" 2>/dev/null || true
      forget "$load"
      OPEN[$r]="failed"
      NOTE[$r]="$name, $n connections: $(tail -n 1 "run/loader.$r.log")"
      log "${NOTE[$r]}"
    else
      wait_for 30 all_open "$n" || true
      sleep 1
      read -r total self < <(tree_rss "$PID")
      est=$(sockets "$P" '^01$')
      OPEN[$r]=$total
      SELF[$r]=$self
      note_master "$self" "$name"
      if ((est < n)); then
        NOTE[$r]="$name, $n connections: only $est established when measured"
        log "${NOTE[$r]}"
      fi
      log "$name: $n connections open after $((SECONDS - t0)) s, $(mib "$total") MiB"
      # Close to the proxy's idle limit (300 s for every proxy)?
      limit=300
      if ((SECONDS - t0 > limit * 5 / 6)); then
        NOTE[$r.t]="$name, $n connections: took $((SECONDS - t0)) s to open and measure, close to its $limit s idle limit"
      fi
      touch "run/go.$r"
      wait "$load" || log "$name: the loader failed while closing: $(tail -n 1 "run/loader.$r.log")"
      forget "$load"
    fi
    if ! wait_for 60 all_closed; then
      NOTE[$r.c]="$name, $n connections: $(held_by_proxy) still open on its side 60 s after the client closed them"
      log "${NOTE[$r.c]}"
    fi
    sleep 5
    read -r total self < <(tree_rss "$PID")
    CLOSED[$r]=$total
    note_master "$self" "$name"
    log "$name: 5 s after closing $n: $(mib "$total") MiB"
  done
  alive || NOTE[$name]="exited during the run (see $LOG)"
  stop "$PID"
}

log "steps: $STEPS; proxies, one after the other: $PEERS"
for name in $PEERS; do measure "$name"; done

# ---------------------------------------------------------------- report
cell() { # KEY ARRAY-NAME
  local -n arr=$2
  local v=${arr[$1]:-}
  if [[ -z $v ]]; then echo "-"; elif [[ $v =~ ^[0-9]+$ ]]; then mib "$v"; else echo "$v"; fi
}
header="| kept-alive connections |"
sep="|---:|"
for name in $PEERS; do
  header+=" $name open | $name 5 s after close |"
  sep+="---:|---:|"
done
echo
echo "RSS in MiB (VmRSS; nginx: master + worker). Each proxy ran alone, fresh, through all steps."
echo
echo "$header"
echo "$sep"
row="| at rest (just started) |"
for name in $PEERS; do row+=" $(cell "$name" IDLE) | |"; done
echo "$row"
for i in "${!STEP_LIST[@]}"; do
  row="| ${STEP_LIST[$i]} |"
  for name in $PEERS; do row+=" $(cell "$name.$i" OPEN) | $(cell "$name.$i" CLOSED) |"; done
  echo "$row"
done
echo
# Per-connection slope: between the smallest and the largest nonzero step that measured (the
# first run of the smallest, the last of the largest; with one nonzero step: from rest to it).
for name in $PEERS; do
  lo="" hi=""
  for i in "${!STEP_LIST[@]}"; do
    n=${STEP_LIST[$i]}
    if ((n == 0)) || [[ ! ${OPEN[$name.$i]:-} =~ ^[0-9]+$ ]]; then continue; fi
    if [[ -z $lo ]] || ((n < STEP_LIST[lo])); then lo=$i; fi
    if [[ -z $hi ]] || ((n >= STEP_LIST[hi])); then hi=$i; fi
  done
  line="- $name:"
  if [[ -n ${NOTE[$name]:-} ]]; then line+=" ${NOTE[$name]};"; fi
  if [[ -n $hi ]]; then
    hn=${STEP_LIST[$hi]}
    if ((STEP_LIST[lo] < hn)); then
      ln=${STEP_LIST[$lo]} low=${OPEN[$name.$lo]}
    else
      ln=0 low=${IDLE[$name]}
    fi
    line+=" $(awk -v a="$low" -v b="${OPEN[$name.$hi]}" -v n=$((hn - ln)) \
      'BEGIN {printf "%.1f", (b - a) / n}') KiB per connection"
    if ((ln > 0)); then line+=" ($ln to $hn open)"; else line+=" (rest to $hn open)"; fi
    if [[ ${CLOSED[$name.$hi]:-} =~ ^[0-9]+$ ]]; then
      line+="; 5 s after the $hn closed: $(mib $((${CLOSED[$name.$hi]} - ${IDLE[$name]}))) MiB above rest"
    fi
  else
    line+=" no per-connection figure (no nonzero step measured)"
  fi
  case $name in
    sidecar) line+=".$MI_NOTE" ;;
    nginx)
      line+=". worker_processes 1; the master alone: $(mib "${MASTER_MIN[nginx]:-0}")-$(mib "${MASTER_MAX[nginx]:-0}") MiB in every reading"
      if [[ -n ${IDLE[nginx]:-} ]]; then
        line+=", the worker alone $(mib $((IDLE[nginx] - SELF[nginx]))) MiB at rest"
        if [[ -n $hi ]]; then
          line+=", $(mib $((${OPEN[nginx.$hi]} - ${SELF[nginx.$hi]}))) MiB with $hn open"
        fi
      fi
      ;;
    haproxy) line+=". nbthread 1, one process" ;;
    stunnel) line+=". TCP only (no HTTP, no identity headers): one thread and one upstream connection per client connection" ;;
  esac
  echo "$line"
done
while read -r key; do
  if [[ $key == *.* ]]; then echo "- note: ${NOTE[$key]}"; fi
done < <(printf '%s\n' "${!NOTE[@]}" | sort -t. -k1,1 -k2,2n)
exit 0
