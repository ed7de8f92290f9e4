#!/usr/bin/env bash
# Packaging tests (issue 7): the Helm chart rendered and linted by Helm's own
# engine (helm-python-sdk), every manifest checked by kubernetes-validate
# --strict, and the Dockerfile by hadolint. No cluster, Docker or helm binary
# needed.
#
#   bash tests/chart/run.sh [pytest args...]
#
# Creates (or reuses) a virtualenv in target/chart-venv and installs the
# pinned packages of tests/chart/requirements.txt when they changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$root/target/chart-venv"
requirements="$root/tests/chart/requirements.txt"
python=${PYTHON:-python3}

make_venv() {
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
}

if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    if ! make_venv 2>/dev/null; then
        # Debian ships venv and ensurepip separately from python3.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "tests/chart: installing python3-venv" >&2
            pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python${pyver}-venv" >/dev/null \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            make_venv
        else
            echo "tests/chart: '$python -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi

stamp="$venv/.requirements.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements"
    echo "$wanted" >"$stamp"
fi

cd "$root"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/chart "$@"
