#!/usr/bin/env bash
# Upload benchmark (docs/BENCHMARKS.md, "Uploads"): in one run, on one
# machine and one disk,
#   - Drover: one driver (release build, behind nothing: devices connect to
#     it directly), with its vendor-bridge and Redis, and `controller-sim
#     --scenario upload` at 1, 100 and 1,000 concurrent devices, each
#     uploading 4,000 BLOCKs of 1,004 bytes;
#   - the two limits: raw loopback TCP into a discarding sink with the same
#     number of connections and bytes (`bench-limits network`), and
#     sequential 256 KiB write + fdatasync into the same directory
#     (`bench-limits storage`; also with 100 parallel streams, for context),
#     both measured right before each Drover run;
#   - the naive baseline (bench/baselines/naive_upload_server.py) with the
#     same clients, and Drover again with the same client settings (the
#     baseline acknowledges nothing before the end, so those runs use a
#     device window larger than the upload);
#   - peak RSS of the server during each run, and `strace -c -f` of the
#     driver during a one-device upload.
#
# Usage: bench/uploads.sh            (from anywhere; builds what it needs)
# Environment:
#   BENCH_DIR      where uploads, logs and results go (default /var/tmp/drover-bench-uploads);
#                  it must be on the disk to measure
#   DEVICE_COUNTS  default "1 100 1000"
#   UPLOAD_BYTES   per device, default 4016000 (4,000 x 1,004)
#   STORAGE_BYTES  bytes for each storage limit measurement, default 134217728
#   CARGO_TARGET_DIR as for cargo (default ./target)
#   BIN_DIR        take the binaries from here instead of building them (e.g.
#                  another commit's driver and vendor-bridge beside links to
#                  this build's controller-sim and bench-limits, so that only
#                  the servers differ)
# Results: $BENCH_DIR/results.jsonl (one JSON object per measurement) and a
# summary table on stdout ($BENCH_DIR/results.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/drover-bench-uploads}
DEVICE_COUNTS=${DEVICE_COUNTS:-"1 100 1000"}
UPLOAD_BYTES=${UPLOAD_BYTES:-4016000}
BLOCK_SIZE=1004
STORAGE_BYTES=${STORAGE_BYTES:-134217728}
KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
BIG_WINDOW=$((UPLOAD_BYTES + BLOCK_SIZE))
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN_DIR:-$TARGET_DIR/release}
RESULTS=$BENCH_DIR/results.jsonl

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

if [[ -z ${BIN_DIR:-} ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q -p driver -p vendor-bridge -p controller-sim -p fleet)
fi

mkdir -p "$BENCH_DIR"
rm -rf "${BENCH_DIR:?}"/{uploads,naive,redis,limits} "$RESULTS"
mkdir -p "$BENCH_DIR"/{uploads,naive,redis,limits,logs}
max_devices=$(tr ' ' '\n' <<<"$DEVICE_COUNTS" | sort -n | tail -1)
need_free_kib "$((max_devices * UPLOAD_BYTES / 1024 * 11 / 10 + STORAGE_BYTES / 1024))"
ulimit -n "$(ulimit -Hn)"

record_machine

# --- the fleet -------------------------------------------------------------
REDIS_PORT=$(port)
BRIDGE_PORT=$(port)
DRIVER_PORT=$(port)
ADMIN_PORT=$(port)
NAIVE_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$BENCH_DIR/redis" --appendonly yes \
    --appendfsync always --save "" --logfile redis.log >/dev/null &
PIDS+=($!)
sleep 0.5
BRIDGE_LISTEN=127.0.0.1:$BRIDGE_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT RUST_LOG=warn \
    "$BIN/vendor-bridge" >"$BENCH_DIR/logs/vendor-bridge.log" 2>&1 &
PIDS+=($!)
# The servers are started afresh before each measured run, so that memory
# kept by an earlier run does not hide the growth of this one.
DRIVER_PID=
NAIVE_PID=
start_driver() {
    [[ -n $DRIVER_PID ]] && kill "$DRIVER_PID" && wait "$DRIVER_PID" 2>/dev/null || true
    DRIVER_LISTEN=127.0.0.1:$DRIVER_PORT DRIVER_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT DRIVER_ID=bench-driver \
        VENDOR_BRIDGE_URL=http://127.0.0.1:$BRIDGE_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
        CWP_MASTER_KEY=$KEY UPLOAD_DIR="$BENCH_DIR/uploads" RUST_LOG=warn \
        "$BIN/driver" >>"$BENCH_DIR/logs/driver.log" 2>&1 &
    DRIVER_PID=$!
    PIDS+=($DRIVER_PID)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null && return
        sleep 0.1
    done
    echo "bench/uploads.sh: the driver did not start (see $BENCH_DIR/logs/driver.log)" >&2
    exit 1
}
start_naive() {
    [[ -n $NAIVE_PID ]] && kill "$NAIVE_PID" && wait "$NAIVE_PID" 2>/dev/null || true
    python3 "$ROOT/bench/baselines/naive_upload_server.py" --listen "127.0.0.1:$NAIVE_PORT" \
        --dir "$BENCH_DIR/naive" --master-key "$KEY" 2>>"$BENCH_DIR/logs/naive.log" &
    NAIVE_PID=$!
    PIDS+=($NAIVE_PID)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$NAIVE_PORT") 2>/dev/null && return
        sleep 0.1
    done
    echo "bench/uploads.sh: the naive server did not start" >&2
    exit 1
}

# Peak RSS of process $1 while the command $2... runs: writes "peak_kib
# before_kib" to rss.tmp. The kernel's high-water mark is reset first
# (clear_refs 5), so the peak is exact, not sampled.
with_peak_rss() {
    local pid=$1
    shift
    echo 5 >"/proc/$pid/clear_refs"
    local before
    before=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    "$@"
    echo "$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status") $before" >"$BENCH_DIR/rss.tmp"
}

# Every 0.1 s until killed: the driver's RSS (KiB) and how many upload
# write buffers it holds (drover_driver_upload_buffers), one line each.
sample_driver() {
    while true; do
        echo "$(awk '/^VmRSS/ {print $2}' "/proc/$DRIVER_PID/status") $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
            awk '$1 == "drover_driver_upload_buffers" {print $2}')"
        sleep 0.1
    done
}

# One controller-sim upload run against a freshly started server: label
# (drover, drover-big-window or naive), devices, window.
upload_run() {
    local server=$1 devices=$2 window=$3 pid target_port
    if [[ $server == naive ]]; then
        start_naive
        pid=$NAIVE_PID target_port=$NAIVE_PORT
    else
        start_driver
        pid=$DRIVER_PID target_port=$DRIVER_PORT
    fi
    sleep 1
    # Start from a quiet disk: no writeback of an earlier run in the way.
    sync
    log "$server: $devices devices, window $window"
    local sampler=
    if [[ $server != naive ]]; then
        sample_driver >"$BENCH_DIR/samples.txt" &
        sampler=$!
    fi
    with_peak_rss "$pid" "$BIN/controller-sim" --target "127.0.0.1:$target_port" --master-key "$KEY" \
        --scenario upload --devices "$devices" --upload-bytes "$UPLOAD_BYTES" --block-size "$BLOCK_SIZE" \
        --upload-window "$window" --duration 900s --grace 60s --json >"$BENCH_DIR/sim.json"
    read -r peak before <"$BENCH_DIR/rss.tmp"
    # The moment the most write buffers were held, and the RSS then.
    local buffers=0 rss_then=0
    if [[ -n $sampler ]]; then
        kill "$sampler"
        wait "$sampler" 2>/dev/null || true
        read -r buffers rss_then < <(awk 'NF == 2 && ($2 > b || ($2 == b && $1 > r)) {b = $2; r = $1} END {print b + 0, r + 0}' \
            "$BENCH_DIR/samples.txt")
    fi
    jq -c --arg server "$server" --argjson devices "$devices" --argjson window "$window" \
        --argjson peak "$peak" --argjson before "$before" \
        --argjson buffers "$buffers" --argjson rss_then "$rss_then" \
        '{kind:"upload", server:$server, devices:$devices, window:$window,
          completed:.uploads.completed, bytes:.uploads.bytes, seconds:.uploads.span_s,
          mb_per_s:.uploads.mb_per_s, errors:.errors, anomalies:.anomalies,
          rss_before_kib:$before, rss_peak_kib:$peak,
          buffers_max:$buffers, rss_at_buffers_max_kib:$rss_then}' "$BENCH_DIR/sim.json" | tee -a "$RESULTS" >&2
    # Keep the disk for the next run.
    rm -rf "${BENCH_DIR:?}"/uploads/completed/* "${BENCH_DIR:?}"/naive/*
}

# --- Drover, devices as firmware sends (default window), each run right
# after its two limits: this disk's speed varies from minute to minute.
for devices in $DEVICE_COUNTS; do
    log "network limit: $devices connections"
    "$BIN/bench-limits" network --connections "$devices" --bytes "$UPLOAD_BYTES" |
        jq -c --argjson devices "$devices" '. + {devices: $devices}' | tee -a "$RESULTS" >&2
    log "storage limit"
    sync
    "$BIN/bench-limits" storage --dir "$BENCH_DIR/limits" --bytes "$STORAGE_BYTES" |
        jq -c --argjson devices "$devices" '. + {devices: $devices}' | tee -a "$RESULTS" >&2
    upload_run drover "$devices" 2097152
done
log "storage limit, 100 parallel streams (context)"
sync
"$BIN/bench-limits" storage --dir "$BENCH_DIR/limits" --bytes $((STORAGE_BYTES / 100)) --streams 100 \
    | tee -a "$RESULTS" >&2

# --- syscalls: strace of the driver during a one-device upload ----------
if command -v strace >/dev/null; then
    log "strace -f on the driver, one device"
    start_driver
    # After its first expiry pass (at start), so only the upload is counted.
    sleep 2
    sync
    strace -f -qq -p "$DRIVER_PID" -o "$BENCH_DIR/strace.txt" &
    STRACE_PID=$!
    sleep 1
    "$BIN/controller-sim" --target "127.0.0.1:$DRIVER_PORT" --master-key "$KEY" --scenario upload --devices 1 \
        --upload-bytes "$UPLOAD_BYTES" --block-size "$BLOCK_SIZE" --duration 120s --json >/dev/null
    sleep 0.5
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" 2>/dev/null || true
    rm -rf "${BENCH_DIR:?}"/uploads/completed/*
    # Per syscall name; write(2)s of 4 KiB or more are the upload's data
    # (the others are 8-byte eventfd wake-ups of the runtime).
    python3 - "$BENCH_DIR/strace.txt" "$UPLOAD_BYTES" <<'PY' | tee -a "$RESULTS" >&2
import collections, json, re, sys
calls = collections.Counter()
for line in open(sys.argv[1]):
    # A call, finished on its line or "<unfinished ...>" and "resumed" on a later one.
    start = re.match(r"^\d+ +(\w+)\(", line)
    resumed = re.match(r"^\d+ +<\.\.\. (\w+) resumed>", line)
    if start:
        calls[start[1]] += 1
    name = (start or resumed)[1] if (start or resumed) else None
    result = re.search(r"\) += (-?\d+)", line)
    if name == "write" and result and int(result[1]) >= 4096:
        calls["write (upload data)"] += 1
mib = int(sys.argv[2]) / 1048576
for name, count in calls.most_common():
    print(json.dumps({"kind": "syscalls", "syscall": name, "calls": count, "per_mib": round(count / mib, 2)}))
PY
fi

# --- baseline, and Drover with the same client settings -------------------
for devices in $DEVICE_COUNTS; do
    upload_run naive "$devices" "$BIG_WINDOW"
    upload_run drover-big-window "$devices" "$BIG_WINDOW"
done

record_load_after
python3 "$ROOT/bench/uploads_report.py" "$RESULTS" "$BENCH_DIR/machine.txt" | tee "$BENCH_DIR/results.md"
