#!/usr/bin/env bash
# Times `terawang process --threads 1` against the plain numpy GCC-PHAT script on the same
# simulated files, in the same run. Usage: benches/compare/run.sh [SETS]   (default 200)
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

t0=$(now)
"$BIN" process "$WORK/data" --out "$WORK/rust" --threads 1 ${TERAWANG_ARGS:-} >"$WORK/rust.log" 2>&1 || {
    # Exit code 2 means some files were rejected or left over (truth.json is not a tap file).
    [ $? -eq 2 ] || { cat "$WORK/rust.log" >&2; exit 1; }
}
rust_ms=$(ms_since "$t0")

t0=$(now)
python3 "$HERE/gcc_phat_numpy.py" "$WORK/data" --out "$WORK/numpy" >"$WORK/numpy.log"
numpy_ms=$(ms_since "$t0")

# The file-system floor: the same reads and writes with no parsing and no computing.
t0=$(now)
"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/io_floor" "$WORK/data" "$WORK/floor" >"$WORK/floor.log"
floor_ms=$(ms_since "$t0")

n_rust=$(find "$WORK/rust" -name 'result_*.json' ! -name '*report*' | wc -l)
n_numpy=$(find "$WORK/numpy" -name 'result_*.json' | wc -l)
echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
echo "sets: $SETS simulated; result files: terawang $n_rust, numpy $n_numpy"
head -1 "$WORK/rust.log"
cat "$WORK/numpy.log"
python3 - "$SETS" "$rust_ms" "$numpy_ms" "$floor_ms" <<'PY'
import sys
sets, rust_ms, numpy_ms, floor_ms = int(sys.argv[1]), *map(float, sys.argv[2:5])
print(f"terawang process --threads 1: {rust_ms:9.1f} ms total, {rust_ms / sets:7.3f} ms per set")
print(f"numpy GCC-PHAT              : {numpy_ms:9.1f} ms total, {numpy_ms / sets:7.3f} ms per set")
print(f"file-system floor (io_floor): {floor_ms:9.1f} ms total, {floor_ms / sets:7.3f} ms per set")
print(f"ratio numpy / terawang      : {numpy_ms / rust_ms:.2f}x")
print(f"ceiling numpy / floor       : {numpy_ms / floor_ms:.2f}x  (no reader of these files can beat it)")
PY
