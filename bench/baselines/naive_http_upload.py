#!/usr/bin/python3
"""The naive stream-to-disk upload app of issue 20, as a baseline for the
gateway's tus uploads.

What an operator writes today to take large files over HTTP: a small Flask
app where `PUT` or `POST /upload/<name>` streams the request body from
`request.stream` to a file in fixed-size chunks, fsyncs the file once at
the end and answers 201 with the byte count. The whole file travels in one
request: there is no resume (a broken connection means starting again from
byte 0), no checksum, no size limit and no authentication. The issue's
figure for this kind of service is about 15 s per GB.

It runs on werkzeug's threaded development server (one thread per
request), the way such apps are usually started. Bodies may come with a
Content-Length or with `Transfer-Encoding: chunked` (werkzeug de-chunks
them and marks the input as terminated, so `request.stream` reads to the
end). A body cut short by the client leaves a short file and no answer.

Listens on loopback only by default. Prints "ready" on stdout once the
socket is listening.

Usage (Debian: apt-get install python3-flask):
  /usr/bin/python3 naive_http_upload.py --port 8091 --dir /tmp/naive-up
  curl -T /tmp/big http://127.0.0.1:8091/upload/big
  curl --data-binary @/tmp/big http://127.0.0.1:8091/upload/big
"""

import argparse
import logging
import os
import sys

from flask import Flask, abort, jsonify, request
from werkzeug.serving import make_server

app = Flask(__name__)
CONFIG = {"dir": ".", "chunk": 64 * 1024}


@app.route("/upload/<name>", methods=["PUT", "POST"])
def upload(name):
    # The only care taken: the name must stay inside the upload directory.
    if name in (".", "..") or "/" in name or "\0" in name:
        abort(400)
    path = os.path.join(CONFIG["dir"], name)
    chunk = CONFIG["chunk"]
    stream = request.stream
    written = 0
    with open(path, "wb") as f:
        while True:
            data = stream.read(chunk)
            if not data:
                break
            f.write(data)
            written += len(data)
        f.flush()
        os.fsync(f.fileno())
    return jsonify({"name": name, "bytes": written}), 201


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--dir", required=True, help="where uploads are written")
    parser.add_argument(
        "--chunk", type=int, default=64 * 1024, help="bytes per read/write (default 64 KiB)"
    )
    parser.add_argument("--log", action="store_true", help="log every request to stderr")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    CONFIG["dir"] = args.dir
    CONFIG["chunk"] = args.chunk
    if not args.log:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = make_server(args.host, args.port, app, threaded=True)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
