#!/usr/bin/env python3
"""The naive upload server of issue 6, as a baseline for bench/uploads.sh.

What the first version of an upload server did, and what Drover avoids:
one thread per connection doing blocking recv()s, a fresh allocation for
every header and every block, every block appended to a list, and the whole
upload joined and written with one write (and one fsync) at UPLOAD_END.
Memory grows with every concurrent upload; nothing is durable, and nothing
can resume, until the end.

It speaks just enough CWP/1 for `controller-sim --scenario upload`:
HELLO/CHALLENGE/AUTH/WELCOME (keys derived from --master-key like the
driver's), sealed frames both ways (incoming tags are verified with HMAC;
the incoming CRC-32C is not checked, which only makes this baseline
faster), UPLOAD_BEGIN answered with UPLOAD_STATUS 0 (it cannot resume),
BLOCKs kept in a list, UPLOAD_END checked (size, SHA-256) and answered
with UPLOAD_DONE, PING/PONG and BYE. It sends no UPLOAD_STATUS before the
end: run the devices with --upload-window larger than the upload.

Standard library only. Usage:
  naive_upload_server.py --listen 127.0.0.1:7100 --dir /tmp/naive --master-key HEX
"""

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys
import threading

MAGIC_VERSION = b"CW\x01"
HEADER_LEN = 12
TAG_LEN = 8
HEARTBEAT_S = 600  # the devices must not give up while this server is slow

HELLO, AUTH, UPLOAD_BEGIN, BLOCK, UPLOAD_END, PING, BYE = 0x01, 0x02, 0x04, 0x05, 0x06, 0x0A, 0x0C
CHALLENGE, WELCOME, UPLOAD_STATUS, UPLOAD_DONE, PONG, SERVER_BYE = 0x81, 0x82, 0x84, 0x85, 0x8B, 0x8D


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def hmac_sha256(key, *parts):
    return hmac.digest(key, b"".join(parts), "sha256")


def recv_exact(sock, n):
    """A fresh bytes object of exactly n bytes (the naive way: allocate, join)."""
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Session:
    def __init__(self, sock, master_key, out_dir):
        self.sock = sock
        self.master_key = master_key
        self.out_dir = out_dir
        self.key = None
        self.tx_seq = 0
        self.rx_seq = 0

    def send(self, frame_type, body):
        tag_len = TAG_LEN if self.key else 0
        header8 = MAGIC_VERSION + bytes([frame_type]) + struct.pack(">I", len(body) + tag_len)
        payload = body
        if self.key:
            tag = hmac_sha256(self.key, b"\x02", struct.pack(">Q", self.tx_seq), header8, body)[:TAG_LEN]
            self.tx_seq += 1
            payload = body + tag
        crc = crc32c(payload, crc32c(header8))
        self.sock.sendall(header8 + struct.pack(">I", crc) + payload)

    def recv(self):
        header = recv_exact(self.sock, HEADER_LEN)
        if header[:3] != MAGIC_VERSION:
            raise ConnectionError("not CWP/1")
        frame_type = header[3]
        (length,) = struct.unpack(">I", header[4:8])
        payload = recv_exact(self.sock, length)
        if not self.key:
            return frame_type, payload
        body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
        expected = hmac_sha256(self.key, b"\x01", struct.pack(">Q", self.rx_seq), header[:8], body)[:TAG_LEN]
        if not hmac.compare_digest(tag, expected):
            raise ConnectionError("bad tag")
        self.rx_seq += 1
        return frame_type, body

    def handshake(self):
        frame_type, body = self.recv()
        if frame_type != HELLO:
            raise ConnectionError("expected HELLO")
        serial = body[1 : 1 + body[0]]
        rest = body[1 + body[0] :]
        nonce_d = rest[1 + rest[0] : 1 + rest[0] + 16]
        nonce_s = os.urandom(16)
        self.send(CHALLENGE, nonce_s)
        frame_type, mac = self.recv()
        device_key = hmac_sha256(self.master_key, b"CWP1 device key", serial)
        if frame_type != AUTH or not hmac.compare_digest(mac, hmac_sha256(device_key, b"CWP1", serial, nonce_d, nonce_s)):
            raise ConnectionError("unauthorized")
        self.key = hmac_sha256(device_key, b"CWP1 session", nonce_d, nonce_s)
        server = b"naive"
        welcome = os.urandom(16) + struct.pack(">HIHQ", HEARTBEAT_S, 65536, 256, 0) + bytes([len(server)]) + server
        self.send(WELCOME, welcome)
        return serial.decode()

    def serve(self):
        serial = self.handshake()
        upload_id, blocks = None, []
        while True:
            frame_type, body = self.recv()
            if frame_type == UPLOAD_BEGIN:
                upload_id, blocks = body[:16], []
                self.send(UPLOAD_STATUS, upload_id + struct.pack(">Q", 0))
            elif frame_type == BLOCK:
                blocks.append(body)
            elif frame_type == UPLOAD_END:
                (total,) = struct.unpack(">Q", body[16:24])
                data = b"".join(blocks)
                blocks = []
                status = 2 if len(data) != total else 1 if hashlib.sha256(data).digest() != body[24:56] else 0
                if status == 0:
                    path = os.path.join(self.out_dir, f"{serial}-{upload_id.hex()}")
                    with open(path, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fdatasync(f.fileno())
                    self.send(UPLOAD_STATUS, upload_id + struct.pack(">Q", len(data)))
                self.send(UPLOAD_DONE, upload_id + struct.pack(">QB", len(data), status))
                data = None
            elif frame_type == PING:
                self.send(PONG, body)
            elif frame_type == BYE:
                self.send(SERVER_BYE, struct.pack(">BI", 0, 0))
                return


def handle(sock, master_key, out_dir):
    try:
        Session(sock, master_key, out_dir).serve()
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:7100")
    parser.add_argument("--dir", required=True, help="where completed uploads are written")
    parser.add_argument("--master-key", required=True, help="64 hex digits, as CWP_MASTER_KEY")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    os.makedirs(args.dir, exist_ok=True)
    master_key = bytes.fromhex(args.master_key)
    threading.stack_size(256 * 1024)
    listener = socket.create_server((host, int(port)), backlog=4096, reuse_port=False)
    print(f"naive upload server on {args.listen}", file=sys.stderr, flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock, master_key, args.dir), daemon=True).start()


if __name__ == "__main__":
    main()
