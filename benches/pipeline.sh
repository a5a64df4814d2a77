#!/usr/bin/env bash
# Sustained throughput of the whole service pipeline (watch → group → compute → save → FTP →
# RabbitMQ → delete) with a real FTP server (pyftpdlib) and the local RabbitMQ on loopback.
# Usage: benches/pipeline.sh [SETS] [THREADS]   (defaults 200, all cores)
# Needs what .ci/service-setup.sh installs. Prints sets per second; asserts nothing.
set -euo pipefail

SETS=${1:-200}
THREADS=${2:-$(nproc)}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
VHOST="terawang-bench-$$"
FTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${FTP_PID:-}" ] && kill "$FTP_PID" 2>/dev/null || true
    rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/terawang"

rabbitmqctl -q add_vhost "$VHOST" >/dev/null
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
mkdir -p "$WORK/ftp" "$WORK/site/data_mentah"
python3 -m pyftpdlib -i 127.0.0.1 -p "$FTP_PORT" -w -u bench -P bench -d "$WORK/ftp" \
    >"$WORK/ftp.log" 2>&1 &
FTP_PID=$!
sleep 1

"$BIN" simulate --sets "$SETS" --seed 5 --out "$WORK/sim" >/dev/null
rm "$WORK/sim/truth.json"
mv "$WORK"/sim/*.json "$WORK/site/data_mentah/"

cd "$WORK/site"
start=$(python3 -c 'import time; print(time.perf_counter())')
FTP_HOST=127.0.0.1 FTP_PORT=$FTP_PORT FTP_USER=bench FTP_PASSWORD=bench \
    RABBITMQ_HOST=127.0.0.1 RABBITMQ_VHOST="$VHOST" RABBITMQ_QUEUE=bench_queue \
    FILE_SETTLE_SECONDS=0 RUST_LOG=warn \
    "$BIN" run --once --threads "$THREADS"
end=$(python3 -c 'import time; print(time.perf_counter())')

left=$(find data_mentah -maxdepth 1 -name '*.json' | wc -l)
queued=$(rabbitmqctl -q list_queues -p "$VHOST" name messages | awk '$1=="bench_queue"{print $2}')
uploaded=$(find "$WORK/ftp" -name 'result_*.json' | wc -l)
echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
echo "sets: $SETS, engine threads: $THREADS; uploaded $uploaded, messages $queued, sources left $left"
python3 - "$SETS" "$start" "$end" <<'PY'
import sys
sets, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"{sets} sets in {end - start:.2f} s: {sets / (end - start):.1f} sets/s through the whole pipeline")
PY
