#!/usr/bin/env bash
# A/B of two builds of the server in the same run: each round runs the chosen benchmarks once
# with the BEFORE server and once with the AFTER one (order alternating between rounds), with
# the same simulator, load tester and hello-world binaries (those of CARGO_TARGET_DIR), so a
# slow spell of this shared machine hits both sides alike.
#
# Usage: BEFORE=/path/to/old/learning-chat [AFTER=/path/to/new/learning-chat] [ROUNDS=2] \
#        bench/ab.sh 3 12
# BEFORE is a release binary of the older commit, e.g. built with
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release -p learning-chat)
# Results: bench/out/<run>/<round>-<side>/ (each with its facts.tsv), and a table on stdout.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BEFORE=${BEFORE:?set BEFORE to the older release binary of learning-chat}
AFTER=${AFTER:-$TARGET_DIR/release/learning-chat}
ROUNDS=${ROUNDS:-2}
[ $# -gt 0 ] || { echo "usage: BEFORE=... bench/ab.sh BENCHMARK_NUMBER..." >&2; exit 2; }
for bin in "$BEFORE" "$AFTER"; do
    [ -x "$bin" ] || { echo "no executable $bin" >&2; exit 1; }
done
RUN="$ROOT/bench/out/ab-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
echo "before: $BEFORE" | tee "$RUN/sides.txt"
echo "after:  $AFTER" | tee -a "$RUN/sides.txt"
(cd "$ROOT" && cargo build --release -p gemini-sim -p hello-ceiling -p learning-chat-loadtest -p learning-chat 2>&1 | tail -1)

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then sides="before after"; else sides="after before"; fi
    for side in $sides; do
        bin=$BEFORE
        [ "$side" = after ] && bin=$AFTER
        for n in "$@"; do
            script=$(ls "$BENCH_DIR"/$(printf '%02d' "$n")-*.sh)
            echo "== round $round, $side: $(basename "$script")" >&2
            BENCH_SKIP_BUILD=1 SVC_BIN="$bin" BENCH_OUT="$RUN/$round-$side" bash "$script" >/dev/null
        done
    done
done

python3 - "$RUN" <<'PY'
import collections, pathlib, sys
run = pathlib.Path(sys.argv[1])
facts = collections.defaultdict(dict)
for tsv in sorted(run.glob("*/facts.tsv")):
    column = tsv.parent.name
    for line in tsv.read_text().splitlines():
        name, _, value = line.partition("\t")
        facts[name][column] = value
columns = sorted({c for row in facts.values() for c in row}, key=lambda c: (int(c.split("-")[0]), c))
print("| figure | " + " | ".join(columns) + " |")
print("| --- |" + " --- |" * len(columns))
for name in sorted(facts):
    print(f"| {name} | " + " | ".join(facts[name].get(c, "") for c in columns) + " |")
PY
