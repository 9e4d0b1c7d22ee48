#!/usr/bin/env bash
# Runs every learning-chat benchmark on this machine, loopback only, against release builds:
#   bench/run-all.sh            (about 30 minutes after the build; ONLY="13" adds the 15-minute
#                                memory-budget benchmark, which is not in the default list)
# Results: bench/out/<run>/ (raw outputs, facts.tsv, summary.md); bench/RESULTS.md records a run.
# Env: CARGO_TARGET_DIR, BENCH_OUT, LOAD_WAIT_MAX (s to wait for a quieter machine, default 180),
#      ONLY="1 3" (run some benchmarks only), and each script's own knobs (see their headers).
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_OUT="${BENCH_OUT:-$PWD/bench/out/run-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$BENCH_OUT"
ONLY=${ONLY:-"1 2 3 4 5 6 7 8 9 10 11 12 14 15 16"}
LOAD_WAIT_MAX=${LOAD_WAIT_MAX:-180}

echo "== cargo build --release --workspace"
cargo build --release --workspace 2>&1 | tail -1
export BENCH_SKIP_BUILD=1
# wrk drives benchmarks 3 and 6 (installed here, before the machine facts are recorded).
(source bench/common.sh && need_wrk)

# Benchmarks on a shared machine: wait (bounded) for the 1-minute load to drop below the core
# count, and record it either way.
cores=$(nproc)
waited=0
while [ "$waited" -lt "$LOAD_WAIT_MAX" ]; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    python3 -c "import sys; sys.exit(0 if float('$load') < $cores else 1)" && break
    echo "load average $load on $cores cores: waiting for a quieter machine ($waited/$LOAD_WAIT_MAX s)"
    sleep 15
    waited=$((waited + 15))
done

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc -V)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "uptime before: $(uptime)"
} | tee "$BENCH_OUT/machine.txt"

for n in $ONLY; do
    script=$(ls bench/"$(printf '%02d' "$n")"-*.sh)
    echo
    echo "##### $script   (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    printf 'load.%s\t%s\n' "$n" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$BENCH_OUT/facts.tsv"
    bash "$script" 2>&1 | tee "$BENCH_OUT/$(basename "$script" .sh).log"
done
echo "uptime after: $(uptime)" | tee -a "$BENCH_OUT/machine.txt"
python3 bench/summarize.py "$BENCH_OUT" | tee "$BENCH_OUT/summary.md"
