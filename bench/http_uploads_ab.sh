#!/usr/bin/env bash
# A/B of two http-gateway builds under bench/http_uploads.sh, pair by pair
# on the same machine (docs/BENCHMARKS.md, "Uploads over HTTP"): this
# disk's speed drifts from minute to minute, so each pair runs A then B
# back to back, and the ratios are taken within pairs.
#
# Usage: bench/http_uploads_ab.sh A_GATEWAY B_GATEWAY [PAIRS]
#   the two http-gateway binaries; everything else is this build's
#   (target/release: vendor-bridge, drover, bench-limits).
# Environment: as bench/http_uploads.sh (UPLOADS, UPLOAD_BYTES, BIG_BYTES);
#   OUT (default /var/tmp/drover-bench-http-uploads-ab).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2") PAIRS=${3:-3}
OUT=${OUT:-/var/tmp/drover-bench-http-uploads-ab}
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
rm -rf "$OUT"
for side in a b; do
    mkdir -p "$OUT/bin-$side"
    for tool in vendor-bridge drover bench-limits; do ln -s "$RELEASE/$tool" "$OUT/bin-$side/$tool"; done
done
ln -s "$A" "$OUT/bin-a/http-gateway"
ln -s "$B" "$OUT/bin-b/http-gateway"
for pair in $(seq "$PAIRS"); do
    for side in a b; do
        echo "== pair $pair, $side" >&2
        BIN_DIR=$OUT/bin-$side BENCH_DIR=$OUT/run-$pair-$side bash "$ROOT/bench/http_uploads.sh" >/dev/null
        jq -c --arg side "$side" --argjson pair "$pair" '. + {side: $side, pair: $pair}' \
            "$OUT/run-$pair-$side/results.jsonl" >>"$OUT/all.jsonl"
        rm -rf "$OUT/run-$pair-$side/uploads" "$OUT/run-$pair-$side"/*.bin
    done
done
python3 - "$OUT/all.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def pick(side, pair, pred):
    return next(r for r in rows if r["side"] == side and r["pair"] == pair and pred(r))
pairs = sorted({r["pair"] for r in rows})
measures = [
    ("100 concurrent uploads, MB/s", lambda r: r.get("kind") == "concurrent", "mb_per_s"),
    ("1 GiB, curl, s per GB", lambda r: r.get("kind") == "big" and r["server"] == "drover" and r["client"] == "curl", "s_per_gb"),
    ("1 GiB, tuspy 16 MiB, s per GB", lambda r: r.get("kind") == "big" and r["server"] == "drover" and r["client"] != "curl", "s_per_gb"),
    ("1 GiB, naive web app (control), s per GB", lambda r: r.get("kind") == "big" and r["server"] == "naive-flask", "s_per_gb"),
]
print("| measurement | A (each pair) | B (each pair) | B/A (each pair) | median B/A |")
print("|---|---|---|---|---:|")
for name, pred, field in measures:
    a = [pick("a", p, pred)[field] for p in pairs]
    b = [pick("b", p, pred)[field] for p in pairs]
    ratios = [y / x for x, y in zip(a, b)]
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(ratios)} | {statistics.median(ratios):.2f} |")
PY
