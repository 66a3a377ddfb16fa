#!/usr/bin/env python3
"""The table of bench/http_uploads.sh (docs/BENCHMARKS.md, "Uploads over
HTTP (tus)"), from its results.jsonl: the concurrent uploads against
min(loopback, fsync'd disk) measured right before them, the gateway's
memory per upload beyond its write buffer, and the 1 GiB upload's time per
GB beside the naive web app and the existing tus servers.

Usage: http_uploads_report.py results.jsonl machine.txt UPLOAD_BYTES
"""

import json
import sys

BUFFER_KIB = 256


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    machine = open(sys.argv[2]).read().strip().splitlines()
    network = next(r for r in rows if r.get("limit") == "network")
    one_stream = next(r for r in rows if r.get("limit") == "storage" and r["streams"] == 1)
    shaped = next(r for r in rows if r.get("limit") == "storage" and r["streams"] > 1)
    run = next(r for r in rows if r.get("kind") == "concurrent")
    limit = min(network["mb_per_s"], shaped["mb_per_s"])
    grown_kib = run["rss_peak_kib"] - run["rss_before_kib"]
    per_upload_kib = grown_kib / run["uploads"] - BUFFER_KIB
    print("Machine:", "; ".join(machine))
    print()
    print("| measurement | MB/s | Drover / it |")
    print("|---|---:|---:|")
    print(
        f"| **Drover: {run['uploads']} concurrent tus uploads of {run['bytes_each'] / 1e6:.0f} MB "
        f"through HAProxy** ({run['recorded']} recorded in `cwp:uploads`) | **{run['mb_per_s']:.0f}** | |"
    )
    print(f"| limit: loopback TCP, {network.get('connections', '?')} connections, same bytes | {network['mb_per_s']:.0f} | {run['mb_per_s'] / network['mb_per_s']:.2f} |")
    print(
        f"| limit: 256 KiB write + fdatasync, {shaped['streams']} streams of {shaped['bytes'] // shaped['streams'] / 1e6:.0f} MB at once "
        f"(the uploads' shape) | {shaped['mb_per_s']:.0f} | **{run['mb_per_s'] / shaped['mb_per_s']:.2f}** |"
    )
    print(
        f"| 256 KiB write + fdatasync, one stream of {one_stream['bytes'] / 1048576:.0f} MiB (context) | "
        f"{one_stream['mb_per_s']:.0f} | {run['mb_per_s'] / one_stream['mb_per_s']:.2f} |"
    )
    print()
    print(
        f"**Drover / min(loopback, disk in the uploads' shape) = {run['mb_per_s'] / limit:.2f}** (target ≥ 0.7)."
    )
    print()
    print(
        f"Gateway RSS: {run['rss_before_kib'] / 1024:.1f} MiB before, {run['rss_peak_kib'] / 1024:.1f} MiB at "
        f"its peak (VmHWM): {grown_kib / run['uploads']:.0f} KiB per upload, "
        f"**{per_upload_kib:.0f} KiB beyond its {BUFFER_KIB} KiB write buffer** (target ≤ 300)."
    )
    print()
    big = [r for r in rows if r.get("kind") == "big"]
    reference = next((r for r in big if r["server"] == "drover" and r["client"] == "curl"), None)
    print("One 1 GiB upload, each server fresh on a quiet disk:")
    print()
    print("| server | client | s | s per GB | vs Drover (same client) |")
    print("|---|---|---:|---:|---:|")
    tuspy = next((r for r in big if r["server"] == "drover" and r["client"].startswith("tuspy")), None)
    for r in big:
        same = reference if r["client"] == "curl" else tuspy
        ratio = f"{r['s_per_gb'] / same['s_per_gb']:.2f}×" if same else ""
        print(f"| {r['server']} | {r['client']} | {r['seconds']:.2f} | {r['s_per_gb']:.2f} | {ratio} |")
    print()
    print(
        "Drover's times include HAProxy, every byte fdatasync'd before the answer (256 KiB writes, "
        "a group commit beside them), SHA-256 of the whole file and the "
        "`cwp:uploads` record; the naive app (behind the same HAProxy) fsyncs once, at the end; "
        "tuspyserver and rustus never fsync (and ignore `Upload-Checksum`)."
    )


if __name__ == "__main__":
    main()
