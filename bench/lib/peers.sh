# shellcheck shell=bash
# What the bench scripts share, sourced (not run) by bench/vs_nginx.sh, bench/memory.sh and
# bench/soak.sh as `. "$HERE/lib/peers.sh"`; it defines functions (and TAKEN) only, starts nothing.
#   - the configs of the sidecar's peers in front of the same upstream, so that vs_nginx.sh and
#     memory.sh measure the very same proxies: nginx (ssl_verify_client on + proxy_pass with the six
#     identity headers), haproxy (`mode http`, `verify required`, the same six headers) and stunnel
#     (TCP only); what differs between the two scripts (ports, cert paths, threads, maxconn, extra
#     lines) is a parameter. Why each setting is what it is: the header of bench/vs_nginx.sh.
#   - free loopback ports (in_use, pick_port) and stopping the processes a script started
#     (stop_pids), for its cleanup trap.
# The caller defines die MESSAGE (log and exit 1), used by pick_port.

# ---------------------------------------------------------------- processes and ports
# stop_pids PID...: SIGTERM to all, then up to 5 s each to exit, then SIGKILL; each is waited for.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# in_use PORT: something listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port VAR: sets VAR to a free port in 20000-39999, none of those in TAKEN (" 1 2 3 ", the
# ports given or picked so far; not called in $(...), so that TAKEN keeps what it picks).
TAKEN=" "
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 20000))
        if [[ $TAKEN != *" $p "* ]] && ! in_use "$p"; then
            TAKEN+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
    die "no free port found"
}

# ---------------------------------------------------------------- nginx
# nginx_temp_paths DIR: the http-level *_temp_path lines, all under DIR (nginx's defaults are
# under its build prefix, not writable by every user).
nginx_temp_paths() {
    local d=$1
    printf '  client_body_temp_path %s/client_body;\n  proxy_temp_path %s/proxy;\n' "$d" "$d"
    printf '  fastcgi_temp_path %s/fastcgi;\n  uwsgi_temp_path %s/uwsgi;\n  scgi_temp_path %s/scgi;\n' "$d" "$d" "$d"
}

# nginx_upstream_backend PORT: the pool the server blocks proxy to, kept-alive connections to
# 127.0.0.1:PORT.
nginx_upstream_backend() {
    cat <<EOF
  upstream backend {
    server 127.0.0.1:$1;
    keepalive 64;
  }
EOF
}

# nginx_mtls_server_block PORT CRT KEY CA [AFTER_NAME [AFTER_PROTOCOLS]]: the users' guide's server
# block with the identity headers (see bench/vs_nginx.sh), listening on 127.0.0.1:PORT. AFTER_NAME
# and AFTER_PROTOCOLS, when given (even empty), are each one more line after server_name and after
# ssl_protocols.
nginx_mtls_server_block() {
    local port=$1 crt=$2 key=$3 ca=$4
    printf '  server {\n    listen 127.0.0.1:%s ssl;\n    server_name localhost;\n' "$port"
    if (($# >= 5)); then printf '    %s\n' "$5"; fi
    cat <<EOF
    ssl_certificate $crt;
    ssl_certificate_key $key;
    ssl_client_certificate $ca;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.2 TLSv1.3;
EOF
    if (($# >= 6)); then printf '    %s\n' "$6"; fi
    cat <<EOF
    if (\$ssl_client_verify != SUCCESS) { return 403; }
    location / {
      proxy_set_header X-Client-Cert \$ssl_client_escaped_cert;
      proxy_set_header X-Client-DN \$ssl_client_s_dn;
      proxy_set_header X-Client-Verify \$ssl_client_verify;
      proxy_set_header X-Forwarded-Client-Cert "Hash=\$ssl_client_fingerprint;Subject=\\"\$ssl_client_s_dn\\"";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }
  }
EOF
}

# ---------------------------------------------------------------- haproxy
# write_haproxy_mtls DIR GLOBAL_LINE MAXCONN PORT CRT KEY CA UPSTREAM_PORT: DIR/tls.pem (CRT then
# KEY, haproxy's form) and DIR/haproxy.cfg: `mode http` on 127.0.0.1:PORT, `verify required`
# against CA, the six identity headers as nginx sends them (see bench/vs_nginx.sh), to
# 127.0.0.1:UPSTREAM_PORT with `http-reuse always`. GLOBAL_LINE is the first line of `global`
# (nbthread); DIR must be absolute (the config names its files). The X-Client-Cert expression
# rebuilds nginx's $ssl_client_escaped_cert (URL-encoded PEM) from the DER: base64, a newline after
# every 64 characters except at the end, the BEGIN/END lines ("%%" is a literal "%" here).
write_haproxy_mtls() {
    local dir=$1 global_line=$2 maxconn=$3 port=$4 crt=$5 key=$6 ca=$7 upstream=$8
    mkdir -p "$dir"
    cat "$crt" "$key" >"$dir/tls.pem"
    chmod 600 "$dir/tls.pem"
    cat >"$dir/haproxy.cfg" <<EOF
global
  $global_line
  maxconn $maxconn
  pidfile $dir/haproxy.pid

defaults
  mode http
  maxconn $maxconn
  option http-keep-alive
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 300s
  timeout http-keep-alive 300s

frontend mtls
  bind 127.0.0.1:$port ssl crt $dir/tls.pem ca-file $ca verify required ssl-min-ver TLSv1.2
  http-request deny deny_status 403 unless { ssl_c_verify 0 }
  http-request set-header X-Client-Cert "-----BEGIN%%20CERTIFICATE-----%%0A%[ssl_c_der,base64,regsub('(.{64})(?=.)','\\1\\n','g'),url_enc]%%0A-----END%%20CERTIFICATE-----%%0A"
  http-request set-header X-Client-DN "%[ssl_c_s_dn(,0,rfc2253)]"
  http-request set-header X-Client-Verify SUCCESS
  http-request set-header X-Forwarded-Client-Cert "Hash=%[ssl_c_der,sha1,hex,lower];Subject=\\"%[ssl_c_s_dn(,0,rfc2253)]\\""
  http-request set-header X-Forwarded-For "%[src]"
  http-request set-header X-Forwarded-Proto https
  default_backend app

backend app
  http-reuse always
  server app 127.0.0.1:$upstream
EOF
}

# ---------------------------------------------------------------- stunnel
# write_stunnel_mtls DIR PORT UPSTREAM_PORT CRT KEY CA: DIR/stunnel.conf, a TCP relay from
# 127.0.0.1:PORT to 127.0.0.1:UPSTREAM_PORT that requires a client cert chaining to CA; its pid
# file and log in DIR (absolute).
write_stunnel_mtls() {
    local dir=$1 port=$2 upstream=$3 crt=$4 key=$5 ca=$6
    mkdir -p "$dir"
    cat >"$dir/stunnel.conf" <<EOF
foreground = quiet
pid = $dir/stunnel.pid
output = $dir/stunnel.log
syslog = no
debug = warning

[mtls]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$upstream
cert = $crt
key = $key
CAfile = $ca
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.2
EOF
}
