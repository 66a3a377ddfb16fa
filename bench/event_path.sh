# The event path the shell benchmarks measure (bench/aof_rewrite_tail.sh,
# bench/flamegraphs.sh); sourced, not run.
#
#   start_event_path BIN DIR PREFIX KEEP [REDIS ARGUMENT ...]
#
# Starts, on loopback ports PREFIX001 (driver), PREFIX002 (its admin),
# PREFIX051 (bridge), PREFIX052 (its metrics) and PREFIX379 (Redis): Redis
# as the fleet runs it (appendonly, appendfsync always,
# auto-aof-rewrite-min-size 1gb, plus the extra arguments), a vendor-bridge
# and a driver from BIN, with their files and logs in DIR, and a consumer
# that trims the events stream to ~KEEP entries every half second (as the
# events benchmark does). Sets redis_port, bridge, driver and trimmer (the
# processes' ids) and event_path_key (the devices' master key); `cli` is
# redis-cli on that Redis. stop_event_path stops them all.

event_path_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f

cli() { redis-cli -p "$redis_port" "$@"; }

start_event_path() {
    local bin=$1 dir=$2 prefix=$3 keep=$4
    shift 4
    redis_port=${prefix}379
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always \
        --save "" --auto-aof-rewrite-min-size 1gb --daemonize yes --logfile "$dir/redis.log" "$@"
    sleep 0.5
    BRIDGE_LISTEN=127.0.0.1:${prefix}051 BRIDGE_METRICS_LISTEN=127.0.0.1:${prefix}052 \
        REDIS_URL=redis://127.0.0.1:$redis_port RUST_LOG=warn "$bin/vendor-bridge" > "$dir/bridge.log" 2>&1 &
    bridge=$!
    sleep 1
    DRIVER_LISTEN=127.0.0.1:${prefix}001 DRIVER_ADMIN_LISTEN=127.0.0.1:${prefix}002 \
        VENDOR_BRIDGE_URL=http://127.0.0.1:${prefix}051 REDIS_URL=redis://127.0.0.1:$redis_port \
        CWP_MASTER_KEY=$event_path_key UPLOAD_DIR="$dir/up" RUST_LOG=warn "$bin/driver" > "$dir/driver.log" 2>&1 &
    driver=$!
    sleep 1.5
    (while sleep 0.5; do cli XTRIM cwp:events MAXLEN '~' "$keep" > /dev/null; done) &
    trimmer=$!
}

stop_event_path() {
    kill "${trimmer:-}" "${driver:-}" "${bridge:-}" 2> /dev/null || true
    wait "${driver:-}" "${bridge:-}" 2> /dev/null || true
    cli shutdown nosave > /dev/null 2>&1 || true
}
