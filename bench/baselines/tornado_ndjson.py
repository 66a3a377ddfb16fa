#!/usr/bin/python3
"""The reference of issue 19: the NDJSON ingest service users know, as a
baseline for `fleet bench --only http-events`.

Written from the issue's description of it: a small Tornado service that
takes a POSTed NDJSON body, parses each line with `json.loads`, appends a
row per record to a file with the csv module and answers

    {"result": {"status": "ok",
                "stats": {"bytes": B, "records": {"valid": V, "invalid": I, "total": T}}}}

One process, one thread, one core (Tornado's single IOLoop). The file is
flushed at the end of every request, so each answer's rows have reached the
kernel; it is NOT fsynced (the reference does not fsync): a power cut may
lose rows that were acknowledged, unlike Drover, which answers only once
Redis has fsynced the events (`appendfsync always`).

A line is valid when it is a JSON object with `event_id`, `time_ms` and
`kind` and a `body` (the reference's rows are those four fields); blank
lines are skipped; anything else counts as invalid. It checks no signature
and ignores the Authorization header. Every path accepts the POST, so the
load generator can use the gateway's `/v1/events`.

Usage (python3-tornado; /usr/bin/python3 on Debian/Ubuntu):
  /usr/bin/python3 tornado_ndjson.py --listen 127.0.0.1:8090 --out /tmp/rows.csv
"""

import argparse
import csv
import json

import tornado.ioloop
import tornado.web

FIELDS = ("event_id", "time_ms", "kind", "body")


class Events(tornado.web.RequestHandler):
    def initialize(self, writer, out):
        self.writer = writer
        self.out = out

    def post(self, _path):
        body = self.request.body
        valid = invalid = 0
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                row = [record[field] for field in FIELDS]
            except (ValueError, KeyError, TypeError):
                invalid += 1
                continue
            self.writer.writerow(row)
            valid += 1
        self.out.flush()  # to the kernel; no fsync, as the reference
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"result": {"status": "ok", "stats": {
            "bytes": len(body),
            "records": {"valid": valid, "invalid": invalid, "total": valid + invalid},
        }}}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8090", help="address:port to listen on")
    parser.add_argument("--out", required=True, help="the file rows are appended to")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    out = open(args.out, "a", newline="")
    app = tornado.web.Application([(r"(/.*)", Events, {"writer": csv.writer(out), "out": out})])
    # Tornado refuses bodies above 100 MB by default; the benchmark's
    # largest are 16 MiB.
    app.listen(int(port), address=host, max_body_size=64 * 1024 * 1024)
    print(f"listening on {host}:{port}", flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
