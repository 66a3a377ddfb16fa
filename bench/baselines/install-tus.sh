#!/usr/bin/env bash
# Installs the tus tools of the tests and benchmarks in a virtualenv
# (/opt/drover-tus-venv by default; the system Python is left alone):
#   tuspy, the stock Python tus client (module `tusclient`), which
#     e2e/tests/tus_clients.rs and `fleet bench --only http-uploads` drive;
#   with --server, also tuspyserver and uvicorn: the existing tus server the
#     upload benchmark compares the gateway with (bench/baselines/tus_server.sh).
# Needs python3 and python3-venv (Debian: apt-get install python3-venv).
set -euo pipefail
venv="${DROVER_TUS_VENV:-/opt/drover-tus-venv}"
packages=(tuspy)
if [[ "${1:-}" == "--server" ]]; then
    packages+=(tuspyserver uvicorn)
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "${packages[@]}"
"$venv/bin/python" -c 'import tusclient' && echo "tuspy ready in $venv"
