#!/usr/bin/env bash
# Install what building and testing etcd-elector needs, when missing, from Debian's packages:
# etcd-server and etcd-client (a real etcd for the tests and the demo), protobuf-compiler
# (etcd-client's build runs protoc), and for the interop test Go with etcd's client sources.
# Usage: scripts/deps.sh [demo|test]
set -euo pipefail
mode=${1:-test}

if ! command -v cargo >/dev/null; then
  echo "etcd-elector: Rust is needed (cargo 1.85 or newer): install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ -z "${ETCD_BIN:-}" ]; then
  command -v etcd >/dev/null || need+=(etcd-server)
fi
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v curl >/dev/null || need+=(curl)
if [ "$mode" = test ]; then
  command -v go >/dev/null || need+=(golang-go)
  [ -d /usr/share/gocode/src/go.etcd.io/etcd ] || need+=(golang-etcd-server-dev)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "etcd-elector: installing ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null; then
  SUDO="sudo"
else
  echo "etcd-elector: please install these Debian packages first: ${need[*]}" >&2
  exit 1
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
