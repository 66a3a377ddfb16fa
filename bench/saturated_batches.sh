#!/bin/bash
# bench/saturated_batches.sh BIN_DIR LABEL
#
# One driver and one vendor-bridge from BIN_DIR (another build's binaries,
# to compare two commits; controller-sim is always this tree's release
# build), Redis with appendfsync always, and 1,000 simulated devices
# offering far more than the fleet can store for 15 s. Prints the events
# acknowledged, the EventBatches the driver sent (its round-trip
# histogram's count), events per batch, and the simulator's acknowledged
# events/s. Loopback only, fixed ports 46001/46002/46051/46052/46379.
#
#   for i in 1 2 3; do bench/saturated_batches.sh /tmp/before-bin before
#                      bench/saturated_batches.sh target/release after; done
set -u
bin=$1; label=$2
dir=$(mktemp -d); key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
redis-server --port 46379 --bind 127.0.0.1 --dir $dir --appendonly yes --appendfsync always --save "" --daemonize yes --logfile $dir/redis.log
sleep 0.5
BRIDGE_LISTEN=127.0.0.1:46051 BRIDGE_METRICS_LISTEN=127.0.0.1:46052 REDIS_URL=redis://127.0.0.1:46379 RUST_LOG=warn $bin/vendor-bridge > $dir/bridge.log 2>&1 &
bp=$!
sleep 1
DRIVER_LISTEN=127.0.0.1:46001 DRIVER_ADMIN_LISTEN=127.0.0.1:46002 VENDOR_BRIDGE_URL=http://127.0.0.1:46051 REDIS_URL=redis://127.0.0.1:46379 CWP_MASTER_KEY=$key UPLOAD_DIR=$dir/up RUST_LOG=warn $bin/driver > $dir/driver.log 2>&1 &
dp=$!
sleep 1.5
CWP_MASTER_KEY=$key "$(dirname "$0")/../target/release/controller-sim" --target 127.0.0.1:46001 --devices 1000 --rate 400000 --event-size 64 --duration 15s --burst-interval 50ms --source-ips 127.0.0.2-127.0.0.9 --serial-prefix EVB- --connect-rate 2000 --json > $dir/sim.json 2>/dev/null
m=$(curl -s http://127.0.0.1:46002/metrics)
acked=$(echo "$m" | grep -E '^drover_driver_events_acked_total ' | awk '{print $2}')
batches=$(echo "$m" | grep -E '^drover_driver_bridge_round_trip_seconds_count ' | awk '{print $2}')
rate=$(python3 -c "import json;print(json.load(open('$dir/sim.json'))['acked_per_s'])" 2>/dev/null)
echo "$label: acked $acked batches $batches per-batch $(python3 -c "print(round($acked/$batches,1))") acked/s $rate"
kill $dp $bp; wait $dp $bp 2>/dev/null
redis-cli -p 46379 shutdown nosave >/dev/null 2>&1
rm -rf $dir
