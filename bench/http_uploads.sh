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

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
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

rm -rf "${BENCH_DIR:?}"/{uploads,naive,tuspyserver,rustus,redis,limits,logs} "$RESULTS"
mkdir -p "$BENCH_DIR"/{uploads,naive,redis,limits,logs}
need_free_kib "$(((UPLOADS * UPLOAD_BYTES + 3 * BIG_BYTES) / 1024 * 12 / 10))"
ulimit -n "$(ulimit -Hn)"

record_machine

# --- the fleet: Redis, the bridge, one gateway, HAProxy -------------------
REDIS_PORT=$(port) BRIDGE_PORT=$(port) GW_PORT=$(port) GW_ADMIN=$(port) HTTP_PORT=$(port)
NAIVE_PORT=$(port) NAIVE_FRONT=$(port)
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
token=$(head -1 "$BENCH_DIR/tokens")

sync
log "Drover, curl, one PATCH"
start=$(now)
curl_upload "$token" "$BENCH_DIR/big.bin"
big drover curl "$(echo "$(now) - $start" | bc -l)"
rm -rf "${BENCH_DIR:?}"/uploads/completed/*

# tuspy uploads big.bin to a tus endpoint (16 MiB PATCHes with sha1),
# from a quiet disk; prints its seconds. Arguments: endpoint, then tuspy's
# own options.
tuspy_big() {
    sync
    "$TUS_PYTHON" "$ROOT/bench/baselines/tuspy_upload.py" "$1" "$BENCH_DIR/big.bin" 16M --checksum "${@:2}" |
        awk '$1 == "seconds" {print $2}'
}
# Waits until a server started in the background printed "ready" to its log.
wait_ready() {
    for _ in $(seq 200); do grep -q ready "$1" && return; sleep 0.1; done
    echo "bench/http_uploads.sh: no \"ready\" in $1" >&2
    exit 1
}

log "Drover, tuspy, 16 MiB PATCHes with sha1"
big drover tuspy-16M-sha1 "$(tuspy_big "$ENDPOINT" -H "Authorization: Bearer $token")"
rm -rf "${BENCH_DIR:?}"/uploads/completed/*

python3 "$ROOT/bench/baselines/naive_http_upload.py" --port "$NAIVE_PORT" --dir "$BENCH_DIR/naive" \
    >"$BENCH_DIR/logs/naive.log" 2>&1 &
NAIVE_PID=$!
PIDS+=($NAIVE_PID)
wait_ready "$BENCH_DIR/logs/naive.log"
sync
log "naive web app, curl -T, through HAProxy"
start=$(now)
curl -sS --fail-with-body -T "$BENCH_DIR/big.bin" "http://127.0.0.1:$NAIVE_FRONT/upload/big.bin" -H "Expect:" -o /dev/null
big naive-flask curl "$(echo "$(now) - $start" | bc -l)"
kill "$NAIVE_PID"
rm -rf "${BENCH_DIR:?}"/naive/*

# The existing tus servers (bench/baselines/tus_server.sh), the same client.
for server in tuspyserver rustus; do
    if [[ $server == rustus && ! -x /opt/rustus/bin/rustus ]]; then
        continue
    fi
    port=$(port)
    mkdir -p "$BENCH_DIR/$server"
    TUS_SERVER=$server TUS_VENV=$(dirname "$(dirname "$TUS_PYTHON")") \
        bash "$ROOT/bench/baselines/tus_server.sh" "$port" "$BENCH_DIR/$server" >"$BENCH_DIR/logs/$server.log" 2>&1 &
    server_pid=$!
    PIDS+=($server_pid)
    wait_ready "$BENCH_DIR/logs/$server.log"
    log "$server, tuspy, 16 MiB PATCHes with sha1"
    big "$server" tuspy-16M-sha1 "$(tuspy_big "http://127.0.0.1:$port/files/")"
    kill "$server_pid" 2>/dev/null || true
    rm -rf "${BENCH_DIR:?}/$server"
done

record_load_after
python3 "$ROOT/bench/http_uploads_report.py" "$RESULTS" "$BENCH_DIR/machine.txt" "$UPLOAD_BYTES" |
    tee "$BENCH_DIR/results.md"
