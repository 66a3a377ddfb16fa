#!/usr/bin/env python3
"""What one stored event costs Redis: the bridge's store script against a raw
XADD of the same entry, and against the least any script could cost.

    /usr/bin/python3 bench/redis_script_cost.py [--rounds 3] [--events 300000]

Starts its own redis-server (appendonly yes, appendfsync always, as the
fleet runs it) on a free loopback port and, each round, measures:

- raw: redis-benchmark appending the events benchmark's entry (seven fields,
  a 64-byte body) with 16 connections pipelining 500 each, the events
  benchmark's ceiling;
- script: vendor-bridge/src/scripts/store_events.lua, as the bridge calls it
  (one partition, the events of up to 2 x 1,000 serials per call, 64-byte
  bodies), at several events per call;
- floor: a script that only does the XADDs of the same call (no high-water
  marks: not exactly-once), the least one script call per batch can cost
  Redis on this version.

Each figure is redis-server's CPU (user + system, all threads, from
/proc/PID/stat) per stored entry, and, from INFO commandstats, the time
inside the command itself (EVALSHA's includes its XADDs). Needs python3-redis
and redis-server/redis-benchmark on PATH. Loopback only.
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
STORE_SCRIPT = os.path.join(HERE, "..", "vendor-bridge", "src", "scripts", "store_events.lua")

# The XADDs alone, with the store script's arguments (see its header).
FLOOR_SCRIPT = """
local events, driver = KEYS[1], ARGV[1]
local nserials, batches = tonumber(ARGV[3]), tonumber(ARGV[2])
local i = 5 + nserials + batches
local stored = 0
for b = 1, batches do
  for _ = 1, tonumber(ARGV[4 + nserials + b]) do
    redis.call('XADD', events, '*', 'serial', ARGV[4 + tonumber(ARGV[i])], 'event_id', ARGV[i + 1],
      'time_ms', ARGV[i + 2], 'kind', ARGV[i + 3], 'body', ARGV[i + 4], 'driver', driver,
      'received_ms', ARGV[i + 5])
    i = i + 6
    stored = stored + 1
  end
end
return {{stored}, {}, 0}
"""

BODY = "x" * 64
TIME_MS = "1767225600000"
SERIALS = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="redis-script-cost-")
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", os.path.join(self.dir, "redis.log")])
        self.client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

    def cpu_seconds(self):
        fields = open(f"/proc/{self.process.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def command_usec(self, name):
        stats = self.client.info("commandstats").get(f"cmdstat_{name}", {})
        return stats.get("usec", 0)

    def reset(self):
        # What the runs stored goes: each measurement starts on an empty stream.
        self.client.delete("cwp:events", "cwp:ceiling", "cwp:hwm")
        self.client.config_resetstat()

    def stop(self):
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Calls:
    """The store script's arguments for calls of `per_call` events, each
    serial's event ids increasing from call to call (every event new)."""

    def __init__(self, per_call):
        self.per_call = per_call
        self.ids = [0] * SERIALS
        self.next_serial = 0

    def make(self):
        # About 1.5 events per serial, as at saturation with 1,000 devices.
        nserials = min(SERIALS, max(1, (self.per_call * 2) // 3))
        chosen = [(self.next_serial + k) % SERIALS for k in range(nserials)]
        self.next_serial = (self.next_serial + nserials) % SERIALS
        argv = ["driver-1", 1, nserials, 0] + ["EVB-%06d" % c for c in chosen] + [self.per_call]
        for k in range(self.per_call):
            j = k % nserials
            self.ids[chosen[j]] += 1
            argv += [j + 1, self.ids[chosen[j]], TIME_MS, 7, BODY, TIME_MS]
        return argv


def measure_script(server, sha, per_call, events):
    calls = Calls(per_call)
    prepared = [calls.make() for _ in range(max(1, events // per_call))]
    stored = len(prepared) * per_call
    server.reset()
    before = server.cpu_seconds()
    for argv in prepared:
        server.client.evalsha(sha, 3, "cwp:events", "cwp:hwm", "cwp:outcomes", *argv)
    cpu = server.cpu_seconds() - before
    return cpu * 1e6 / stored, server.command_usec("evalsha") / stored, server.command_usec("xadd") / stored


def measure_raw(server, events):
    server.reset()
    before = server.cpu_seconds()
    subprocess.run(
        ["redis-benchmark", "-p", str(server.port), "-c", "16", "-P", "500", "-n", str(events),
         "-r", "1000000000", "-q", "XADD", "cwp:ceiling", "*", "serial", "EVB-000001",
         "event_id", "__rand_int__", "time_ms", TIME_MS, "kind", "7", "body", BODY,
         "driver", "driver-1", "received_ms", TIME_MS],
        check=True, stdout=subprocess.DEVNULL)
    cpu = server.cpu_seconds() - before
    return cpu * 1e6 / events, server.command_usec("xadd") / events


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=300_000, help="entries per measurement")
    parser.add_argument("--per-call", default="100,500,1500", help="events per script call, comma-separated")
    args = parser.parse_args()
    sizes = [int(n) for n in args.per_call.split(",")]

    server = Redis()
    try:
        store = server.client.script_load(open(STORE_SCRIPT).read())
        floor = server.client.script_load(FLOOR_SCRIPT)
        rows = []
        for round_ in range(1, args.rounds + 1):
            raw_cpu, raw_xadd = measure_raw(server, args.events)
            rows.append((round_, "raw XADD (redis-benchmark -c 16 -P 500)", raw_cpu, raw_xadd, raw_xadd, 1.0))
            for per_call in sizes:
                for name, sha in (("store script", store), ("floor script (XADDs only)", floor)):
                    cpu, inside, xadd = measure_script(server, sha, per_call, args.events)
                    rows.append((round_, f"{name}, {per_call} events per call", cpu, inside, xadd, cpu / raw_cpu))
            print(f"round {round_} done", file=sys.stderr)
    finally:
        server.stop()

    print("| round | what | Redis CPU per entry | inside the command (INFO commandstats) | of which the XADD | CPU × raw |")
    print("|---|---|---|---|---|---|")
    for round_, what, cpu, inside, xadd, ratio in rows:
        print(f"| {round_} | {what} | {cpu:.2f} µs | {inside:.2f} µs | {xadd:.2f} µs | {ratio:.2f}× |")


if __name__ == "__main__":
    random.seed(1)
    main()
