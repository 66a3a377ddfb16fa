#!/bin/bash
# bench/aof_rewrite_tail.sh [BIN_DIR] [RATE] [ROUNDS] [KEEP]
#
# What an append-only-file rewrite costs the ack latency's tail. One
# driver, one vendor-bridge and Redis as the fleet runs it (appendonly,
# appendfsync always, auto-aof-rewrite-min-size 1gb), a consumer trimming
# the events stream to ~KEEP entries every half second (default 100,000,
# as the events benchmark does: the retention decides the rewrite's size),
# and 1,000 controller-sim devices offering RATE events/s
# (default 40,000, about 25% of one driver's capacity on a 2-core machine).
# Each round runs two 20 s phases on the same fleet: one as it is, one
# with a BGREWRITEAOF started 8 s in (what Redis does by itself each time
# the file grows by auto-aof-rewrite-min-size). Prints, per phase, the
# simulator's ack p50/p99/p99.9 and Redis's own latency monitor (events
# of 1 ms or more: fork, aof-fsync-always, aof-write, rewrite-done, ...).
# REDIS_ARGS adds arguments to redis-server (e.g. "--rdbcompression no").
# Loopback only, ports 47001/47002/47051/47052/47379.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release}; rate=${2:-40000}; rounds=${3:-3}; keep=${4:-100000}
dir=$(mktemp -d)
# shellcheck source=bench/event_path.sh
. "$root/bench/event_path.sh"
# shellcheck disable=SC2086 # REDIS_ARGS is a list of arguments
start_event_path "$bin" "$dir" 47 "$keep" --latency-monitor-threshold 1 ${REDIS_ARGS:-}
key=$event_path_key

phase() {
    local label=$1 rewrite=$2
    cli LATENCY RESET > /dev/null
    local rewriter=""
    if [ "$rewrite" = yes ]; then ( sleep 8; cli BGREWRITEAOF > /dev/null ) & rewriter=$!; fi
    CWP_MASTER_KEY=$key "$root/target/release/controller-sim" --target 127.0.0.1:47001 --devices 1000 \
        --rate "$rate" --event-size 64 --duration 20s --burst-interval 50ms --source-ips 127.0.0.2-127.0.0.9 \
        --serial-prefix AOF- --connect-rate 2000 --json > "$dir/sim.json" 2> /dev/null
    [ -n "$rewriter" ] && wait "$rewriter"
    python3 - "$label" "$dir/sim.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
l = s["ack_latency_us"]
print(f"{sys.argv[1]}: acked/s {s['acked_per_s']:.0f}  ack p50 {l['p50']/1000:.1f} ms  p99 {l['p99']/1000:.1f} ms  p99.9 {l['p999']/1000:.1f} ms  max {l['max']/1000:.1f} ms")
PY
    cli LATENCY LATEST | paste -sd' ' | sed 's/^/  redis latency monitor (event, time, latest ms, max ms): /'
    grep -E "rewrit" "$dir/redis.log" | tail -4 | sed 's/^/  /'
}

for round in $(seq "$rounds"); do
    phase "round $round, no rewrite" no
    phase "round $round, BGREWRITEAOF at 8 s" yes
done
echo "keep $keep: $(cli INFO stats | grep -E 'latest_fork_usec' | tr -d '\r'); $(cli INFO persistence | grep -E 'aof_last_rewrite_time_sec|aof_base_size' | tr -d '\r' | paste -sd' '); redis rss: $(cli INFO memory | grep -E '^used_memory_rss_human' | tr -d '\r')"
stop_event_path
rm -rf "$dir"
