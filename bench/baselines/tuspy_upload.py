#!/opt/drover-tus-venv/bin/python
"""Upload one file to a tus 1.0 server with tuspy (the Python tus client),
for comparing servers and for checking that a server works with it.

tuspy creates the upload with a POST (Upload-Length and Upload-Metadata),
then sends the file in PATCH requests of CHUNK bytes each (each chunk read
into memory, sent with a Content-Length, on a new connection). With
--checksum every PATCH carries `Upload-Checksum: sha1 <base64>`.

With --state FILE the upload URL is kept in FILE (tuspy's FileStorage,
keyed by a fingerprint of the file: its size and the MD5 of its first
64 KiB), so running the same command again resumes: tuspy sends a HEAD to
the stored URL, takes Upload-Offset from the answer and PATCHes from there.
A stored URL that the server no longer knows (the HEAD has no
Upload-Offset) is forgotten and a new upload is created.

--stop-at N stops once the server has exactly N bytes (the last PATCH is short),
to leave an unfinished upload for a second run to resume.

Prints, one per line: `url URL`, `offset_start N`, `offset N` (the final
offset), `bytes N` (sent by this run) and `seconds S` (from before the
first request to the last answer).

Usage (the venv from bench/baselines/INSTALL-tus.md):
  /opt/drover-tus-venv/bin/python tuspy_upload.py http://127.0.0.1:8093/files/ /tmp/big 16M \
      [-H 'Authorization: Bearer X'] [--checksum] [--state /tmp/tus-state.json]
"""

import argparse
import os
import sys
import time

from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage import filestorage


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1:] if t[-1:] in units else ""
    return int(t[: len(t) - len(suffix)]) * units[suffix]


def parse_header(text):
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"not a header: {text!r}")
    return name.strip(), value.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="the server's creation URL, e.g. http://127.0.0.1:8093/files/")
    parser.add_argument("file")
    parser.add_argument("chunk", nargs="?", default="16M", help="bytes per PATCH, e.g. 16M (default)")
    parser.add_argument("-H", "--header", action="append", type=parse_header, default=[],
                        help="extra request header, e.g. 'Authorization: Bearer X' (repeatable)")
    parser.add_argument("--checksum", action="store_true", help="send Upload-Checksum (sha1) with every PATCH")
    parser.add_argument("--state", help="file that keeps the upload URL, so a second run resumes")
    parser.add_argument("--stop-at", type=parse_size, help="stop once the server has this many bytes")
    parser.add_argument("--retries", type=int, default=0, help="tuspy's retries of a failed PATCH (default 0)")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="seconds between retries (default 1)")
    parser.add_argument("--filetype", default="application/octet-stream",
                        help="Upload-Metadata filetype (tuspyserver's HEAD wants filename and filetype)")
    args = parser.parse_args()

    headers = dict(args.header)
    metadata = {"filename": os.path.basename(args.file), "filetype": args.filetype}
    client = tus_client.TusClient(args.endpoint, headers=headers)
    storage = filestorage.FileStorage(args.state) if args.state else None

    def make_uploader():
        return client.uploader(
            file_path=args.file,
            chunk_size=parse_size(args.chunk),
            metadata=metadata,
            upload_checksum=args.checksum,
            retries=args.retries,
            retry_delay=args.retry_delay,
            store_url=storage is not None,
            url_storage=storage,
        )

    start = time.monotonic()
    try:
        # With a stored URL this already sends the HEAD that finds the offset.
        uploader = make_uploader()
    except TusCommunicationError as err:
        if storage is None:
            raise
        print(f"stored upload URL not usable ({err.status_code}): starting a new upload",
              file=sys.stderr)
        storage.remove_item(uploader_key(args.file))
        uploader = make_uploader()
    offset_start = uploader.offset
    try:
        uploader.upload(stop_at=args.stop_at)
    except (TusUploadFailed, TusCommunicationError) as err:
        body = err.response_content[:200] if getattr(err, "response_content", None) else b""
        print(f"upload failed: status {err.status_code} {body!r} at offset {uploader.offset}",
              file=sys.stderr)
        print(f"url {uploader.url}")
        print(f"offset {uploader.offset}")
        return 1
    seconds = time.monotonic() - start
    if storage is not None:
        storage.close()
    print(f"url {uploader.url}")
    print(f"offset_start {offset_start}")
    print(f"offset {uploader.offset}")
    print(f"bytes {uploader.offset - offset_start}")
    print(f"seconds {seconds:.3f}")
    return 0


def uploader_key(path):
    from tusclient.fingerprint import fingerprint

    with open(path, "rb") as f:
        return fingerprint.Fingerprint().get_fingerprint(f)


if __name__ == "__main__":
    sys.exit(main())
