#!/usr/bin/env python3
"""Redis CPU per stored event of the bridge's store_events.lua, at two
revisions, in one run on one Redis: the A/B check for a change to the
script, the fleet's hot path (each stored event costs one Redis core this
much, and one Redis is the fleet's ceiling).

    bench/store_events_ab.py OLD_REV NEW_REV [--port 6379] [--calls 2000] [--rounds 4]

Starts nothing: point it at a scratch Redis (it writes keys under
`bench:ab:`). Each call stores one batch of 200 plain events of 50 serials
(ids always above the marks, so every event is appended), as a driver's
batch would; rounds alternate A and B so that the machine's noise falls on
both alike. Redis's own accounting (`INFO commandstats`, usec per EVALSHA)
gives the CPU; divided by the events per call, µs per event.

The script's argument layout changed between revisions (issue 21 added an
outcomes stream key and the count of registry entries to refresh); the
layout is read from the script's header: a script whose header names
`ARGV[4]      r` takes the newer one.

Needs /usr/bin/python3 with the redis module (Debian: python3-redis).
"""

import argparse
import subprocess
import time

import redis

EVENTS_PER_CALL = 200
SERIALS_PER_CALL = 50
BODY = b"x" * 64


def script_at(rev):
    return subprocess.run(
        ["git", "show", f"{rev}:vendor-bridge/src/scripts/store_events.lua"],
        check=True,
        capture_output=True,
    ).stdout


def call_args(newer, prefix, next_id):
    serials = [f"AB-{j:06d}".encode() for j in range(SERIALS_PER_CALL)]
    keys = [f"{prefix}events".encode(), f"{prefix}hwm".encode()]
    if newer:
        keys.append(f"{prefix}outcomes".encode())
    argv = [b"driver-1", b"1", str(SERIALS_PER_CALL).encode()]
    if newer:
        argv.append(b"0")  # r: no registry entry to refresh
    argv += serials
    argv.append(str(EVENTS_PER_CALL).encode())
    now = str(int(time.time() * 1000)).encode()
    for e in range(EVENTS_PER_CALL):
        j = e % SERIALS_PER_CALL
        argv += [str(j + 1).encode(), str(next_id + e // SERIALS_PER_CALL).encode(), now, b"7", BODY, now]
    return keys, argv


def usec_of(r, sha):
    stats = r.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return entry.get("usec", 0), entry.get("calls", 0)


def run(r, sha, newer, prefix, calls, first_id):
    before, n_before = usec_of(r, sha)
    next_id = first_id
    pipe = r.pipeline(transaction=False)
    for c in range(calls):
        keys, argv = call_args(newer, prefix, next_id)
        next_id += EVENTS_PER_CALL // SERIALS_PER_CALL
        pipe.evalsha(sha, len(keys), *keys, *argv)
        if c % 50 == 49:
            pipe.execute()
    pipe.execute()
    after, n_after = usec_of(r, sha)
    r.delete(f"{prefix}events")  # keep memory flat; the marks stay
    return (after - before) / ((n_after - n_before) * EVENTS_PER_CALL), next_id


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    r = redis.Redis(port=args.port)
    versions = []
    for label, rev in (("A", args.old), ("B", args.new)):
        source = script_at(rev)
        newer = b"ARGV[4]      r" in source
        versions.append((label, rev, r.script_load(source), newer))
    results = {label: [] for label, *_ in versions}
    next_ids = {label: 1 for label, *_ in versions}
    for _ in range(args.rounds):
        for label, rev, sha, newer in versions:
            # CONFIG RESETSTAT would reset the other's counters too; deltas instead.
            per_event, next_ids[label] = run(r, sha, newer, f"bench:ab:{label}:", args.calls, next_ids[label])
            results[label].append(per_event)
    for label, rev, _, _ in versions:
        values = sorted(results[label])
        median = values[len(values) // 2]
        print(f"{label} {rev}: {median:.2f} µs per event (median of {len(values)} rounds: "
              + ", ".join(f"{v:.2f}" for v in results[label]) + ")")
    a = sorted(results["A"])[len(results["A"]) // 2]
    b = sorted(results["B"])[len(results["B"]) // 2]
    print(f"B / A = {b / a:.3f}")


if __name__ == "__main__":
    main()
