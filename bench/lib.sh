# What the upload benchmarks share (bench/uploads.sh, bench/http_uploads.sh);
# sourced, not run. Each needs ROOT and BENCH_DIR set first.

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A timestamped line on stderr.
log() { echo "[$(date +%T)] $*" >&2; }

# Fails the benchmark unless BENCH_DIR's filesystem has $1 KiB free.
need_free_kib() {
    local free_kib
    free_kib=$(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}')
    if (($1 > free_kib)); then
        echo "$(basename "$0"): $BENCH_DIR has $((free_kib / 1024)) MiB free, needs $(($1 / 1024)) MiB" >&2
        exit 1
    fi
}

# The machine, the disk under BENCH_DIR and the load, into machine.txt.
record_machine() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "cpu: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}'), $(nproc) cores"
        echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
        echo "disk: $(df -PT "$BENCH_DIR" | awk 'NR==2 {print $1" ("$2")"}') at $BENCH_DIR"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$BENCH_DIR/machine.txt" >&2
}

# The load at the end, beside the machine.
record_load_after() {
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$BENCH_DIR/machine.txt" >&2
}
