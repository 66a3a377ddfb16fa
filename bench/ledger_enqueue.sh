#!/usr/bin/env bash
# The durable-command enqueue against Redis's own ceiling for the same
# writes, both measured by redis-benchmark on one scratch Redis configured
# like a deployment's (appendonly, appendfsync always), in alternating
# rounds (issue 21, docs/BENCHMARKS.md "Durable commands").
#
# The enqueue: EVALSHA of schema/src/scripts/ledger_enqueue.lua with a
# random device of 10,000 (serial and ledger) and a random id per call (the
# id's last group is redis-benchmark's __rand_int__, 12 digits: a valid
# UUID): 100,000 commands for 10,000 devices, as in the storm benchmark.
# The ceiling: what the script writes for one command, as plain commands
# (HINCRBY, HSET, PEXPIRE, ZADD, XADD), each timed alone; the time of one
# enqueue's writes is the sum of theirs, so the ceiling is
# 1 / sum(1 / rate).
#
#   bench/ledger_enqueue.sh [ROUNDS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
requests=${2:-100000}
port=${PORT:-6419}
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always \
    --save "" --daemonize yes --logfile "$dir/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
sha=$(redis-cli -p "$port" script load "$(cat schema/src/scripts/ledger_enqueue.lua)")
entry='{"name":"reboot","body_b64":"eyJkZWxheV9zIjo1fQ==","seq":1,"enqueued_ms":1,"expires_ms":2,"state":"QUEUED","attempts":0}'
bench() { # name, command...: requests per second
    redis-benchmark -p "$port" -c 4 -P 50 -n "$requests" -r 10000 -q "$@" 2>/dev/null |
        tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1
}
echo "round,enqueue_per_s,ceiling_per_s,ratio"
for round in $(seq "$rounds"); do
    redis-cli -p "$port" flushall >/dev/null
    enqueue=$(bench evalsha "$sha" 3 cwp:ledger:B-__rand_int__ cwp:cmd-outcomes cwp:ledger-due \
        B-__rand_int__ 00000000-0000-4000-8000-__rand_int__ reboot eyJkZWxheV9zIjo1fQ== 86400000 100000)
    redis-cli -p "$port" flushall >/dev/null
    inv=0
    for rate in \
        "$(bench hincrby raw:ledger:__rand_int__ seq 1)" \
        "$(bench hset raw:ledger:__rand_int__ 00000000-0000-4000-8000-__rand_int__ "$entry")" \
        "$(bench pexpire raw:ledger:__rand_int__ 90000000)" \
        "$(bench zadd raw:ledger-due LT 86400000 B-__rand_int__)" \
        "$(bench xadd raw:outcomes MAXLEN '~' 100000 '*' serial B-__rand_int__ id 00000000-0000-4000-8000-__rand_int__ status QUEUED time_ms 1 notice "$entry")"; do
        inv=$(python3 -c "print($inv + 1 / $rate)")
    done
    python3 -c "c = 1 / $inv; print(f'$round,$enqueue,{c:.0f},{$enqueue / c:.2f}')"
done
