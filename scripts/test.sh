#!/usr/bin/env bash
# The test command: installs what the tests need when missing, then runs every test:
# unit tests, end-to-end tests against a real etcd (ETCD_BIN or etcd on PATH), and the
# Kubernetes packaging tests (Helm's own engine via helm-python-sdk, in a virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
echo "== cargo test (etcd: $("${ETCD_BIN:-etcd}" --version | head -1))"
cargo test --locked
echo "== chart, manifests and Dockerfile"
bash tests/chart/run.sh
