#!/usr/bin/env python3
"""How the main application consumes Drover's events: one consumer group per
event stream (partition), on one Redis or a Redis Cluster.

Drover appends every stored event, exactly once per (serial, event_id), to
the stream of the serial's partition. The streams are listed in the hash
`cwp:layout` (field `streams`); a Redis without it holds one stream,
`cwp:events`. Each stream gets a consumer group; a consumer reads new
entries with XREADGROUP, processes them, acknowledges them with XACK, and
trims what every consumer has acknowledged (XTRIM MINID), so that Redis's
memory does not grow without bound.

Delivery to the application is at least once: a consumer that dies between
processing and XACK gets the entry again (XAUTOCLAIM, below). Make the
processing idempotent by (serial, event_id): Drover never stores a pair
twice, so it is a key.

    # one Redis
    python3 examples/consumer.py --redis-url redis://127.0.0.1:6379
    # a cluster (any few nodes)
    python3 examples/consumer.py --cluster-nodes 127.0.0.1:7000,127.0.0.1:7001
    # to scale out: one process per partition (or per few), each its own name
    python3 examples/consumer.py --partitions 0,1 --consumer worker-a
    python3 examples/consumer.py --partitions 2,3 --consumer worker-b

Every partition must be read by some consumer: a partition nobody reads
keeps its events unread (and untrimmed).

Needs redis-py 4.1 or later (Debian/Ubuntu: apt-get install python3-redis).
Prints one JSON object per event; --until-idle N stops after N seconds
without a new event (for tests and batch jobs).
"""

import argparse
import json
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

LAYOUT = "cwp:layout"
SINGLE_STREAM = "cwp:events"


def connect(args):
    if args.cluster_nodes:
        nodes = [ClusterNode(*node.rsplit(":", 1)) for node in args.cluster_nodes.split(",")]
        return RedisCluster(startup_nodes=nodes)
    return redis.Redis.from_url(args.redis_url)


def event_streams(r):
    streams = r.hget(LAYOUT, "streams")
    return streams.decode().split(",") if streams else [SINGLE_STREAM]


def ensure_group(r, stream, group):
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def decoded(stream, entry_id, fields):
    body = fields[b"body"]
    try:
        text = {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        text = {"body_hex": body.hex()}
    return {
        "stream": stream,
        "id": entry_id.decode(),
        "serial": fields[b"serial"].decode(),
        "event_id": int(fields[b"event_id"]),
        "time_ms": int(fields[b"time_ms"]),
        "kind": int(fields[b"kind"]),
        "driver": fields[b"driver"].decode(),
        "received_ms": int(fields[b"received_ms"]),
        **text,
    }


def process(event):
    """The application's work; here, print it."""
    print(json.dumps(event), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--cluster-nodes", help="HOST:PORT,HOST:PORT of a Redis Cluster")
    parser.add_argument("--group", default="main-app")
    parser.add_argument("--consumer", default="consumer-1")
    parser.add_argument("--count", type=int, default=500, help="entries per read")
    parser.add_argument(
        "--partitions",
        help="read only these partitions (comma-separated indexes into the layout's streams); default all",
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        default=60_000,
        help="take over entries another consumer read and left unacknowledged this long (it died)",
    )
    parser.add_argument(
        "--no-ack",
        action="store_true",
        help="read and print without acknowledging (a dry run: the entries stay pending for another consumer)",
    )
    parser.add_argument("--until-idle", type=float, help="stop after this many seconds without an event")
    args = parser.parse_args()

    r = connect(args)
    streams = event_streams(r)
    if args.partitions:
        streams = [streams[int(index)] for index in args.partitions.split(",")]
    for stream in streams:
        ensure_group(r, stream, args.group)

    last_event = time.monotonic()
    while args.until_idle is None or time.monotonic() - last_event < args.until_idle:
        got = 0
        # One stream per call: on a cluster the streams live in different
        # slots, and a command's keys must share one.
        for stream in streams:
            # Entries another consumer read and never acknowledged (it died)
            # are taken over first.
            _, claimed, *_ = r.xautoclaim(
                stream, args.group, args.consumer, args.claim_idle_ms, "0-0", count=args.count
            )
            fresh = r.xreadgroup(args.group, args.consumer, {stream: ">"}, count=args.count, block=100)
            entries = claimed + [entry for _, batch in fresh for entry in batch]
            for entry_id, fields in entries:
                process(decoded(stream, entry_id, fields))
            if entries and not args.no_ack:
                r.xack(stream, args.group, *[entry_id for entry_id, _ in entries])
                trim(r, stream, args.group)
            got += len(entries)
        if got:
            last_event = time.monotonic()


def trim(r, stream, group):
    """Drops what the group has read and nobody still has pending.

    With one group per stream, as here. If several applications read the
    streams, each with its own group, trim below the slowest group instead
    (or by age, XTRIM MINID <ms>-0, if every application keeps up)."""
    info = next(g for g in r.xinfo_groups(stream) if g["name"].decode() == group)
    pending = r.xpending(stream, group)
    oldest = pending["min"] if pending["pending"] else None
    last = info["last-delivered-id"]
    minid = oldest if oldest is not None else last
    # MINID keeps entries at or above it: keep the oldest pending one, or
    # drop everything up to and including the last delivered.
    if oldest is None:
        ms, seq = last.decode().split("-")
        minid = f"{ms}-{int(seq) + 1}"
    r.xtrim(stream, minid=minid)


if __name__ == "__main__":
    main()
