#!/usr/bin/env bash
# HTTP upload benchmark (docs/BENCHMARKS.md, "Uploads over HTTP (tus)";
# issue 20), in one run, on one machine and one disk:
#   - Drover: one http-gateway (release) behind HAProxy (mode http, PROXY
#     v2), with its vendor-bridge and Redis (appendfsync always);
#   - 100 concurrent tus uploads of 40 MB (UPLOADS, UPLOAD_BYTES), each a
#     POST then one PATCH streamed by curl (-T: Content-Length, no buffering
#     in the client), every one a different serial with its bearer token;
#     aggregate MB/s and the gateway's peak RSS beside
#   - the limits, measured right before: raw loopback TCP into a
#     discarding sink with the same connections and bytes (`bench-limits
#     network`), and 256 KiB write + fdatasync into the same directory
#     (`bench-limits storage`) in the uploads' shape (100 streams of 40 MB
#     at once), and as one stream (the CWP/1 benchmark's limit);
#   - one 1 GiB upload (BIG_BYTES), time per GB: Drover with curl (one
#     PATCH) and with tuspy (16 MiB PATCHes with sha1 checksums), beside the
#     naive stream-to-disk web app (bench/baselines/naive_http_upload.py,
#     curl -T, behind the same HAProxy) and an existing tus server
#     (bench/baselines/tus_server.sh: tuspyserver; rustus too when
#     /opt/rustus/bin/rustus exists) with the same tuspy client.
#
# Needs: redis-server, haproxy, curl, jq, python3-flask, and the tus venv
# (bench/baselines/install-tus.sh --server).
# Usage: bench/http_uploads.sh
# Environment: BENCH_DIR (default /var/tmp/drover-bench-http-uploads, on the
# disk to measure), UPLOADS (100), UPLOAD_BYTES (40000000), BIG_BYTES
# (1073741824), BIN_DIR (binaries; default: build them), TUS_PYTHON.
# Results: $BENCH_DIR/results.jsonl and a table ($BENCH_DIR/results.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/drover-bench-http-uploads}
UPLOADS=${UPLOADS:-100}
UPLOAD_BYTES=${UPLOAD_BYTES:-40000000}
BIG_BYTES=${BIG_BYTES:-1073741824}
KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN_DIR:-$TARGET_DIR/release}
TUS_PYTHON=${TUS_PYTHON:-/opt/drover-tus-venv/bin/python}
RESULTS=$BENCH_DIR/results.jsonl

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "[$(date +%T)] $*" >&2; }
now() { date +%s.%N; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

if [[ -z ${BIN_DIR:-} ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q -p http-gateway -p vendor-bridge -p drover-cli -p fleet)
fi
"$TUS_PYTHON" -c 'import tusclient, tuspyserver' 2>/dev/null ||
    { echo "bench/http_uploads.sh: run bench/baselines/install-tus.sh --server first" >&2; exit 1; }
python3 -c 'import flask' 2>/dev/null ||
    { echo "bench/http_uploads.sh: apt-get install python3-flask" >&2; exit 1; }

rm -rf "${BENCH_DIR:?}"/{uploads,naive,tus,rustus,redis,limits,logs} "$RESULTS"
mkdir -p "$BENCH_DIR"/{uploads,naive,tus,rustus,redis,limits,logs}
need_kib=$(((UPLOADS * UPLOAD_BYTES + 3 * BIG_BYTES) / 1024 * 12 / 10))
free_kib=$(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}')
if ((free_kib < need_kib)); then
    echo "bench/http_uploads.sh: $BENCH_DIR has $((free_kib / 1024)) MiB free, needs $((need_kib / 1024)) MiB" >&2
    exit 1
fi
ulimit -n "$(ulimit -Hn)"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cpu: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}'), $(nproc) cores"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
    echo "disk: $(df -PT "$BENCH_DIR" | awk 'NR==2 {print $1" ("$2")"}') at $BENCH_DIR"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$BENCH_DIR/machine.txt" >&2

# --- the fleet: Redis, the bridge, one gateway, HAProxy -------------------
REDIS_PORT=$(port) BRIDGE_PORT=$(port) GW_PORT=$(port) GW_ADMIN=$(port) HTTP_PORT=$(port)
NAIVE_PORT=$(port) NAIVE_FRONT=$(port) TUS_PORT=$(port) RUSTUS_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$BENCH_DIR/redis" --appendonly yes \
    --appendfsync always --save "" --logfile redis.log >/dev/null &
PIDS+=($!)
sleep 0.5
BRIDGE_LISTEN=127.0.0.1:$BRIDGE_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT RUST_LOG=warn \
    "$BIN/vendor-bridge" >"$BENCH_DIR/logs/vendor-bridge.log" 2>&1 &
PIDS+=($!)
HTTP_LISTEN=127.0.0.1:$GW_PORT HTTP_ADMIN_LISTEN=127.0.0.1:$GW_ADMIN HTTP_PROXY_PROTOCOL=true \
    HTTP_BEARER_REQUIRES_TLS=false VENDOR_BRIDGE_URL=http://127.0.0.1:$BRIDGE_PORT \
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT CWP_MASTER_KEY=$KEY UPLOAD_DIR="$BENCH_DIR/uploads" \
    UPLOAD_MAX_BYTES=$((BIG_BYTES > UPLOAD_BYTES ? BIG_BYTES : UPLOAD_BYTES)) UPLOAD_MIN_FREE_BYTES=0 RUST_LOG=warn \
    "$BIN/http-gateway" >"$BENCH_DIR/logs/http-gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
cat >"$BENCH_DIR/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend http
    bind 127.0.0.1:$HTTP_PORT
    default_backend gateways
backend gateways
    server gateway-1 127.0.0.1:$GW_PORT send-proxy-v2
# The naive web app behind the same proxy, as it would be deployed.
frontend naive
    bind 127.0.0.1:$NAIVE_FRONT
    default_backend naive
backend naive
    server naive-1 127.0.0.1:$NAIVE_PORT
EOF
haproxy -f "$BENCH_DIR/haproxy.cfg" >"$BENCH_DIR/logs/haproxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$GW_ADMIN/healthz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$GW_ADMIN/healthz" >/dev/null ||
    { echo "bench/http_uploads.sh: the gateway did not start (see $BENCH_DIR/logs)" >&2; exit 1; }
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
    sleep 0.1
done
ENDPOINT=http://127.0.0.1:$HTTP_PORT/v1/uploads/

log "tokens for $UPLOADS devices"
: >"$BENCH_DIR/tokens"
for i in $(seq "$UPLOADS"); do
    CWP_MASTER_KEY=$KEY HTTP_GATEWAY_URL=http://127.0.0.1:$HTTP_PORT "$BIN/drover" token "HTTP-UP-$i" \
        >>"$BENCH_DIR/tokens"
done
head -c "$UPLOAD_BYTES" /dev/urandom >"$BENCH_DIR/upload.bin"
head -c "$BIG_BYTES" /dev/urandom >"$BENCH_DIR/big.bin"

# One tus upload with curl: POST, then the whole file in one PATCH.
# Arguments: token, file. Prints the seconds of the two requests.
curl_upload() {
    local token=$1 file=$2 location
    location=$(curl -sS --fail-with-body -X POST "$ENDPOINT" -H "Authorization: Bearer $token" \
        -H "Tus-Resumable: 1.0.0" -H "Upload-Length: $(stat -c %s "$file")" -o /dev/null -D - |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    curl -sS --fail-with-body -X PATCH -T "$file" "http://127.0.0.1:$HTTP_PORT$location" \
        -H "Authorization: Bearer $token" -H "Tus-Resumable: 1.0.0" -H "Upload-Offset: 0" \
        -H "Content-Type: application/offset+octet-stream" -H "Expect:" -o /dev/null
}
export -f curl_upload
export ENDPOINT HTTP_PORT

# --- 100 concurrent uploads, right after their limits -----------------------
log "network limit: $UPLOADS connections x $UPLOAD_BYTES bytes"
"$BIN/bench-limits" network --connections "$UPLOADS" --bytes "$UPLOAD_BYTES" | tee -a "$RESULTS" >&2
log "storage limit, one stream"
sync
"$BIN/bench-limits" storage --dir "$BENCH_DIR/limits" --bytes 268435456 | tee -a "$RESULTS" >&2
log "storage limit, the uploads' shape: $UPLOADS streams x $UPLOAD_BYTES bytes"
sync
"$BIN/bench-limits" storage --dir "$BENCH_DIR/limits" --bytes "$UPLOAD_BYTES" --streams "$UPLOADS" |
    tee -a "$RESULTS" >&2
sync
echo 5 >"/proc/$GW_PID/clear_refs"
rss_before=$(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status")
log "Drover: $UPLOADS concurrent uploads"
start=$(now)
xargs -P "$UPLOADS" -I{} bash -c 'curl_upload "$1" "$2"' _ {} "$BENCH_DIR/upload.bin" <"$BENCH_DIR/tokens"
seconds=$(echo "$(now) - $start" | bc -l)
rss_peak=$(awk '/^VmHWM/ {print $2}' "/proc/$GW_PID/status")
recorded=$(redis-cli -p "$REDIS_PORT" XLEN cwp:uploads)
jq -nc --argjson uploads "$UPLOADS" --argjson bytes "$UPLOAD_BYTES" --argjson seconds "$seconds" \
    --argjson before "$rss_before" --argjson peak "$rss_peak" --argjson recorded "$recorded" \
    '{kind:"concurrent", server:"drover", uploads:$uploads, bytes_each:$bytes, seconds:$seconds,
      mb_per_s:($uploads * $bytes / $seconds / 1e6), recorded:$recorded,
      rss_before_kib:$before, rss_peak_kib:$peak}' | tee -a "$RESULTS" >&2
rm -rf "${BENCH_DIR:?}"/uploads/completed/*

# --- one 1 GiB upload, each server afresh on a quiet disk -------------------
big() {
    local server=$1 client=$2 seconds=$3
    jq -nc --arg server "$server" --arg client "$client" --argjson bytes "$BIG_BYTES" --argjson seconds "$seconds" \
        '{kind:"big", server:$server, client:$client, bytes:$bytes, seconds:$seconds,
          s_per_gb:($seconds / ($bytes / 1e9))}' | tee -a "$RESULTS" >&2
}
tuspy_seconds() { awk '$1 == "seconds" {print $2}'; }
token=$(head -1 "$BENCH_DIR/tokens")

sync
log "Drover, curl, one PATCH"
start=$(now)
curl_upload "$token" "$BENCH_DIR/big.bin"
big drover curl "$(echo "$(now) - $start" | bc -l)"
rm -rf "${BENCH_DIR:?}"/uploads/completed/*

sync
log "Drover, tuspy, 16 MiB PATCHes with sha1"
s=$("$TUS_PYTHON" "$ROOT/bench/baselines/tuspy_upload.py" "$ENDPOINT" "$BENCH_DIR/big.bin" 16M --checksum \
    -H "Authorization: Bearer $token" | tuspy_seconds)
big drover tuspy-16M-sha1 "$s"
rm -rf "${BENCH_DIR:?}"/uploads/completed/*

python3 "$ROOT/bench/baselines/naive_http_upload.py" --port "$NAIVE_PORT" --dir "$BENCH_DIR/naive" \
    >"$BENCH_DIR/logs/naive.log" 2>&1 &
NAIVE_PID=$!
PIDS+=($NAIVE_PID)
for _ in $(seq 100); do grep -q ready "$BENCH_DIR/logs/naive.log" && break; sleep 0.1; done
sync
log "naive web app, curl -T, through HAProxy"
start=$(now)
curl -sS --fail-with-body -T "$BENCH_DIR/big.bin" "http://127.0.0.1:$NAIVE_FRONT/upload/big.bin" -H "Expect:" -o /dev/null
big naive-flask curl "$(echo "$(now) - $start" | bc -l)"
kill "$NAIVE_PID"
rm -rf "${BENCH_DIR:?}"/naive/*

TUS_VENV=$(dirname "$(dirname "$TUS_PYTHON")") bash "$ROOT/bench/baselines/tus_server.sh" "$TUS_PORT" "$BENCH_DIR/tus" \
    >"$BENCH_DIR/logs/tuspyserver.log" 2>&1 &
TUS_PID=$!
PIDS+=($TUS_PID)
for _ in $(seq 200); do grep -q ready "$BENCH_DIR/logs/tuspyserver.log" && break; sleep 0.1; done
sync
log "tuspyserver, tuspy, 16 MiB PATCHes with sha1"
s=$("$TUS_PYTHON" "$ROOT/bench/baselines/tuspy_upload.py" "http://127.0.0.1:$TUS_PORT/files/" "$BENCH_DIR/big.bin" 16M \
    --checksum | tuspy_seconds)
big tuspyserver tuspy-16M-sha1 "$s"
kill "$TUS_PID" 2>/dev/null || true
rm -rf "${BENCH_DIR:?}"/tus/*

if [[ -x /opt/rustus/bin/rustus ]]; then
    TUS_SERVER=rustus bash "$ROOT/bench/baselines/tus_server.sh" "$RUSTUS_PORT" "$BENCH_DIR/rustus" \
        >"$BENCH_DIR/logs/rustus.log" 2>&1 &
    RUSTUS_PID=$!
    PIDS+=($RUSTUS_PID)
    for _ in $(seq 200); do grep -q ready "$BENCH_DIR/logs/rustus.log" && break; sleep 0.1; done
    sync
    log "rustus, tuspy, 16 MiB PATCHes with sha1"
    s=$("$TUS_PYTHON" "$ROOT/bench/baselines/tuspy_upload.py" "http://127.0.0.1:$RUSTUS_PORT/files/" \
        "$BENCH_DIR/big.bin" 16M --checksum | tuspy_seconds)
    big rustus tuspy-16M-sha1 "$s"
    kill "$RUSTUS_PID" 2>/dev/null || true
fi

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$BENCH_DIR/machine.txt" >&2
python3 "$ROOT/bench/http_uploads_report.py" "$RESULTS" "$BENCH_DIR/machine.txt" "$UPLOAD_BYTES" |
    tee "$BENCH_DIR/results.md"
