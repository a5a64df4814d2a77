#!/usr/bin/env bash
# Times `terawang process --threads 1`, with its default outputs and with --no-tomogram,
# against the plain numpy GCC-PHAT script on the same simulated files, all in the same run,
# and prints the ratios against the goals of issue #17.
# Usage: benches/compare/run.sh [SETS]   (default 200; TMPDIR=/dev/shm for tmpfs)
set -euo pipefail

SETS=${1:-200}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ! python3 -c 'import numpy' 2>/dev/null; then
    echo "numpy is missing: install it with 'pip install numpy' and run again" >&2
    exit 1
fi

cd "$ROOT"
cargo build --release --quiet --bin terawang --example io_floor
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/terawang"
cargo run --release --quiet -- simulate --sets "$SETS" --out "$WORK/data" >/dev/null

# Bash's own clock (µs): starting a python just to read the clock would put its start-up
# (about 0.1-0.3 s on a small VM) inside the measured interval.
now() { echo "${EPOCHREALTIME//[!0-9]/}"; }
ms_since() {
    local t1
    t1=$(now)
    echo "$(((t1 - $1) / 1000)).$(((t1 - $1) % 1000 / 100))"
}

# Warm the page cache for both (the files were just written, but be explicit).
cat "$WORK"/data/*.json >/dev/null

# Peak memory of each terawang run, where GNU time is there.
TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -f "%M" -o "$WORK/rss")
# terawang with the default outputs (result, report with the tomogram grid, picture), then
# without the tomogram; TERAWANG_ARGS adds options to both.
rust() {
    local out=$1
    shift
    rm -rf "${WORK:?}/$out"
    "${TIME[@]}" "$BIN" process "$WORK/data" --out "$WORK/$out" --threads 1 "$@" ${TERAWANG_ARGS:-} >"$WORK/$out.log" 2>&1 || {
        # Exit code 2 means some files were rejected or left over (truth.json is not a tap file).
        [ $? -eq 2 ] || { cat "$WORK/$out.log" >&2; exit 1; }
    }
}
numpy() {
    rm -rf "${WORK:?}/numpy"
    python3 "$HERE/gcc_phat_numpy.py" "$WORK/data" --out "$WORK/numpy" >"$WORK/numpy.log"
}

# numpy before and after the two terawang runs: the machine's load drifts, and the mean of
# the two brackets the terawang runs.
t0=$(now); numpy; numpy1_ms=$(ms_since "$t0")
t0=$(now); rust rust; rust_ms=$(ms_since "$t0")
rust_rss=$(cat "$WORK/rss" 2>/dev/null || echo "?")
t0=$(now); rust rust_nt --no-tomogram; rust_nt_ms=$(ms_since "$t0")
rust_nt_rss=$(cat "$WORK/rss" 2>/dev/null || echo "?")
t0=$(now); numpy; numpy2_ms=$(ms_since "$t0")

# The file-system floor: the same reads and writes with no parsing and no computing.
t0=$(now)
"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/io_floor" "$WORK/data" "$WORK/floor" >"$WORK/floor.log"
floor_ms=$(ms_since "$t0")

n_rust=$(find "$WORK/rust" -name 'result_*.json' ! -name '*report*' | wc -l)
n_png=$(find "$WORK/rust" -name 'result_*.png' | wc -l)
n_numpy=$(find "$WORK/numpy" -name 'result_*.json' | wc -l)
echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sets: $SETS simulated in ${TMPDIR:-/tmp}; result files: terawang $n_rust ($n_png pictures), numpy $n_numpy"
head -1 "$WORK/rust.log"
cat "$WORK/numpy.log"
python3 - "$SETS" "$rust_ms" "$rust_nt_ms" "$numpy1_ms" "$numpy2_ms" "$floor_ms" "$rust_rss" "$rust_nt_rss" <<'PY'
import sys
sets = int(sys.argv[1])
rust_ms, rust_nt_ms, numpy1_ms, numpy2_ms, floor_ms = map(float, sys.argv[2:7])
rss, rss_nt = sys.argv[7:9]
numpy_ms = 0.5 * (numpy1_ms + numpy2_ms)
per = lambda ms: ms / sets
def line(name, ms, goal_ms=None, goal_x=None, rss=None):
    text = f"{name:38}: {ms:9.1f} ms total, {per(ms):7.3f} ms per set"
    if goal_ms is not None:
        ratio = numpy_ms / ms
        ok = per(ms) <= goal_ms and ratio >= goal_x
        text += f", {ratio:5.2f}x numpy (goal <= {goal_ms} ms and >= {goal_x}x: {'met' if ok else 'NOT met'})"
    if rss not in (None, "?"):
        text += f", peak {int(rss) / 1024:.0f} MB"
    print(text)
line("terawang process --threads 1", rust_ms, 1.0, 5, rss)
line("terawang process --threads 1 --no-tomogram", rust_nt_ms, 0.5, 10, rss_nt)
print(f"{'numpy GCC-PHAT (mean of before, after)':38}: {numpy_ms:9.1f} ms total, {per(numpy_ms):7.3f} ms per set"
      f"  (before {per(numpy1_ms):.3f}, after {per(numpy2_ms):.3f})")
line("file-system floor (io_floor)", floor_ms)
print(f"ceiling numpy / floor                 : {numpy_ms / floor_ms:.2f}x  (no reader of these files can beat it)")
PY
