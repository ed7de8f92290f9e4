#!/usr/bin/env bash
# Install OpenStack's etcd3gw (the Python client for etcd's gRPC-gateway JSON API) from PyPI
# into target/etcd3gw-venv (a virtualenv) when missing, and print the venv's python path.
# The interop test tests/etcd3gw.rs runs tests/interop/etcd3gw_locker.py with that python.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.7.0
venv=target/etcd3gw-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('etcd3gw') != '$version')" 2>/dev/null ||
  "$venv/bin/pip" install -q "etcd3gw==$version" >&2
echo "$PWD/$venv/bin/python"
