#!/bin/sh
# Assembles the image's root filesystem in ROOT from the release binary BIN, on a Debian build
# machine (the CI machine, or the Dockerfile's build stage):
#
#   /mtls-sidecar                      BIN, stripped
#   /lib/..., /lib64/ld-linux-...      the shared libraries BIN needs (glibc, libm, libgcc_s), as
#                                      `ldd` finds them, at the same paths: the loader and the
#                                      libraries the binary was linked against, nothing else
#   /etc/ssl/certs/ca-certificates.crt the CA certificates (for an https:// --webhook)
#   /etc/nsswitch.conf                 `hosts: files dns`, as Debian and distroless have it
#   /tmp                               1777, owned by 65532 (the image's user)
#
# That is what distroless's `cc` image holds, without a package database or anything to pull.
# glibc 2.34+ has its `files` and `dns` name services built in, so kubelet's /etc/hosts and
# /etc/resolv.conf are all it needs to resolve host names. nsswitch.conf puts /etc/hosts first:
# without it glibc asks DNS first and reads /etc/hosts only when DNS is unreachable, so
# `localhost` would depend on the cluster's DNS answering for it.
#
#   sh image/rootfs.sh BIN ROOT
set -eu
BIN="$1"
ROOT="$2"

mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
install -m 0755 "$BIN" "$ROOT/mtls-sidecar"
strip "$ROOT/mtls-sidecar"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"

# Every library `ldd` resolves ("name => /path (addr)") and the loader ("/path (addr)"), copied
# with symlinks resolved to the path the binary asks for.
found=0
for lib in $(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
  found=$((found + 1))
done
if ldd "$BIN" | grep -q "not found"; then
  echo "rootfs.sh: $BIN needs a library this machine does not have:" >&2
  ldd "$BIN" >&2
  exit 1
fi
echo "rootfs.sh: $ROOT holds $BIN and $found shared libraries"
