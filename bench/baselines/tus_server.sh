#!/usr/bin/env bash
# An existing tus 1.0 server, to compare the gateway's tus uploads with.
#
#   tus_server.sh PORT DIR
#
# Listens on 127.0.0.1:PORT only, stores uploads in DIR, prints "ready" once
# an OPTIONS request to the endpoint is answered, and runs until killed
# (SIGTERM/SIGINT stop the server too). The creation endpoint is
#   http://127.0.0.1:PORT/files/
#
# TUS_SERVER picks the server (install steps: INSTALL-tus.md here):
#   tuspyserver (default)  tuspyserver (FastAPI router) under uvicorn, one
#                          process, from the venv /opt/drover-tus-venv.
#                          Extensions: creation, creation-defer-length,
#                          creation-with-upload, expiration, termination,
#                          concatenation; no checksum (Upload-Checksum is
#                          ignored). Each chunk is written and flushed to the
#                          kernel, never fsynced. HEAD answers 400 unless the
#                          upload's metadata has filename and filetype.
#   rustus                 /opt/rustus/bin/rustus, file storage, info files
#                          in DIR; PATCH bodies up to 64 MiB (its default of
#                          256 KiB would refuse tuspy's 16 MiB chunks).
#                          Never fsyncs (no --force-fsync). A plain
#                          `cargo install rustus` lacks the "hashers" feature:
#                          it still lists "checksum" in Tus-Extension but
#                          ignores Upload-Checksum (build with --features
#                          hashers to have it checked; a mismatch is a 417).
# TUS_VENV overrides the venv, RUSTUS_BIN the rustus binary.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 PORT DIR" >&2
    exit 2
fi
PORT=$1
DIR=$2
SERVER=${TUS_SERVER:-tuspyserver}
VENV=${TUS_VENV:-/opt/drover-tus-venv}
RUSTUS_BIN=${RUSTUS_BIN:-/opt/rustus/bin/rustus}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

case "$SERVER" in
tuspyserver)
    "$VENV/bin/python" - "$PORT" "$DIR" <<'EOF' &
import sys

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router

port, files_dir = int(sys.argv[1]), sys.argv[2]
app = FastAPI()
app.include_router(create_tus_router(prefix="files", files_dir=files_dir))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
EOF
    ;;
rustus)
    "$RUSTUS_BIN" --host 127.0.0.1 --port "$PORT" --url /files \
        --data-dir "$DIR" --info-dir "$DIR" \
        --max-body-size $((64 << 20)) --log-level WARN &
    ;;
*)
    echo "TUS_SERVER must be tuspyserver or rustus, not $SERVER" >&2
    exit 2
    ;;
esac
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$SERVER exited before answering" >&2
        exit 1
    fi
    if curl -s -o /dev/null --max-time 1 -X OPTIONS -H 'Tus-Resumable: 1.0.0' \
        "http://127.0.0.1:$PORT/files/"; then
        echo ready
        break
    fi
    sleep 0.1
done
wait "$pid"
