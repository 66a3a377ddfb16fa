#!/bin/bash
# bench/flamegraphs.sh [RATE] [OUT_DIR] [BIN_DIR]
#
# Flame graphs of the event path under a steady load: one driver, one
# vendor-bridge and Redis as the fleet runs it (appendonly, appendfsync
# always, auto-aof-rewrite-min-size 1gb), the events stream trimmed every
# half second, and 1,000 controller-sim devices offering RATE events/s
# (default 80,000: about half of one driver's capacity on a 2-core
# machine; take half of the events benchmark's capacity on yours). From 6 s
# into the 20 s run, `perf record` samples each of the three processes for
# 8 s at 299 Hz (DWARF call stacks for driver and bridge, which are built
# with debug info; frame pointers for Redis, whose Debian build has
# neither, so its graph is mostly flat) and draws
# OUT_DIR/{driver,vendor-bridge,redis-server}.svg (default
# docs/flamegraphs) with inferno (`cargo install inferno`). Prints the
# simulator's ack latencies and each process's CPU over the sampled span.
# Needs perf (Debian: linux-perf) and root or perf_event_paranoid <= 1.
# Loopback only, ports 48001/48002/48051/48052/48379.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
rate=${1:-80000}; out=${2:-$root/docs/flamegraphs}; bin=${3:-$root/target/release}
for tool in perf inferno-collapse-perf inferno-flamegraph redis-server; do
    command -v "$tool" > /dev/null || { echo "$(basename "$0"): $tool is not on PATH" >&2; exit 1; }
done
mkdir -p "$out"
dir=$(mktemp -d)
# shellcheck source=bench/event_path.sh
. "$root/bench/event_path.sh"
cleanup() {
    stop_event_path
    rm -rf "$dir"
}
trap cleanup EXIT
start_event_path "$bin" "$dir" 48 100000
key=$event_path_key
redis=$(cli INFO server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')

CWP_MASTER_KEY=$key "$bin/controller-sim" --target 127.0.0.1:48001 --devices 1000 --rate "$rate" --event-size 64 \
    --duration 20s --burst-interval 50ms --source-ips 127.0.0.2-127.0.0.9 --serial-prefix FLAME- \
    --connect-rate 2000 --json > "$dir/sim.json" 2> /dev/null &
sim=$!
sleep 6
# utime + stime, counted after the ')' that closes the process's name
# (the driver's and the bridge's names change with their titles).
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
declare -A before
for name in driver bridge redis; do before[$name]=$(ticks "${!name}"); done
perf record -q -F 299 --call-graph dwarf,16384 -p "$driver" -o "$dir/driver.perf" -- sleep 8 > /dev/null 2>&1 &
p1=$!
perf record -q -F 299 --call-graph dwarf,16384 -p "$bridge" -o "$dir/vendor-bridge.perf" -- sleep 8 > /dev/null 2>&1 &
p2=$!
perf record -q -F 299 -g -p "$redis" -o "$dir/redis-server.perf" -- sleep 8 > /dev/null 2>&1 &
p3=$!
wait $p1 $p2 $p3
hz=$(getconf CLK_TCK)
for name in driver bridge redis; do
    echo "$name: $(( ($(ticks "${!name}") - ${before[$name]}) * 100 / hz / 8 ))% of a core over the 8 s sampled"
done
wait $sim
python3 - "$dir/sim.json" "$rate" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["ack_latency_us"]
print(f"offered {sys.argv[2]}/s, acknowledged {s['acked_per_s']:.0f}/s (perf's sampling perturbs the latencies): ack p50 {l['p50']/1000:.1f} ms, p99 {l['p99']/1000:.1f} ms, p99.9 {l['p999']/1000:.1f} ms")
PY
for name in driver vendor-bridge redis-server; do
    perf script -i "$dir/$name.perf" 2> /dev/null | inferno-collapse-perf 2> /dev/null > "$dir/$name.folded"
    inferno-flamegraph --title "$name, $rate events/s offered by 1,000 devices" --width 1400 \
        < "$dir/$name.folded" > "$out/$name.svg"
    echo "$out/$name.svg; where its samples end (self time):"
    # The last frame of each stack, summed: the functions that burn the CPU.
    awk '{count = $NF; $NF = ""; n = split($0, frames, ";"); leaf = frames[n]; sub(/ +$/, "", leaf);
          self[leaf] += count; total += count}
         END {for (f in self) printf "%6.1f%%  %s\n", 100 * self[f] / total, substr(f, 1, 100)}' \
        "$dir/$name.folded" | sort -rn | head -12
done
