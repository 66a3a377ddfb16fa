#!/usr/bin/env python3
"""Turns bench/uploads.sh's results.jsonl into the tables of
docs/BENCHMARKS.md, "Uploads". Usage: uploads_report.py results.jsonl machine.txt"""

import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print(open(sys.argv[2]).read().strip())
    print()
    network = {r["devices"]: r["mb_per_s"] for r in rows if r.get("limit") == "network"}
    storage = {r["devices"]: r["mb_per_s"] for r in rows if r.get("limit") == "storage" and "devices" in r}
    parallel = [r for r in rows if r.get("limit") == "storage" and r.get("streams", 1) > 1]
    runs = {(r["server"], r["devices"]): r for r in rows if r.get("kind") == "upload"}
    devices = sorted({d for (_, d) in runs})

    def per_conn(run):
        # Peak RSS growth over the idle driver, per write buffer at the
        # moment the most were held (uploads finish at different times:
        # fewer than `devices` may be open at once; freed buffers the
        # allocator keeps count too, so this errs high). A run too short
        # for a 0.1 s sample: "-".
        if not run.get("buffers_max"):
            return "-"
        return f"{(run['rss_peak_kib'] - run['rss_before_kib']) / run['buffers_max']:.0f} KiB"

    print("| concurrent devices | Drover MB/s | network limit MB/s | storage limit MB/s | Drover / lower limit "
          "| uploads open at once (max) | driver RSS per uploading connection |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in devices:
        run = runs.get(("drover", d))
        if not run:
            continue
        lower = min(network.get(d, float("inf")), storage.get(d, float("inf")))
        ok = run["completed"] == d and not run["anomalies"].get("upload_offset_regressions")
        print(f"| {d:,} | {run['mb_per_s']:.1f}{'' if ok else ' (INCOMPLETE)'} | {network.get(d, 0):.0f} "
              f"| {storage.get(d, 0):.1f} | {run['mb_per_s'] / lower:.2f} "
              f"| {run.get('buffers_max') or '-'} | {per_conn(run)} |")
    print("\nEach row's limits were measured just before its run: network with as many connections, "
          "storage as one stream of 256 KiB write + fdatasync.")
    for r in parallel:
        print(f"Storage with {r['streams']} parallel streams (context): {r['mb_per_s']:.1f} MB/s.")
    print()
    print("| concurrent devices | naive MB/s | Drover MB/s (same clients) | speed-up | naive RSS growth "
          "| Drover RSS growth | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in devices:
        naive, ours = runs.get(("naive", d)), runs.get(("drover-big-window", d))
        if not naive or not ours:
            continue
        naive_growth = naive["rss_peak_kib"] - naive["rss_before_kib"]
        our_growth = max(ours["rss_peak_kib"] - ours["rss_before_kib"], 1)
        speedup = ours["mb_per_s"] / naive["mb_per_s"] if naive["mb_per_s"] else float("inf")
        print(f"| {d:,} | {naive['mb_per_s']:.1f} | {ours['mb_per_s']:.1f} | {speedup:.1f}x "
              f"| {naive_growth / 1024:.1f} MiB | {our_growth / 1024:.1f} MiB | {naive_growth / our_growth:.1f}x |")
    calls = [r for r in rows if r.get("kind") == "syscalls"]
    if calls:
        print()
        print("| driver syscall (one device, strace -f) | calls | per MiB uploaded |")
        print("|---|---:|---:|")
        for r in sorted(calls, key=lambda r: -r["calls"]):
            print(f"| {r['syscall']} | {r['calls']} | {r['per_mib']:.2f} |")


if __name__ == "__main__":
    main()
