#!/usr/bin/env bash
# Throughput of `run --role worker` processes on one backlog of jobs: `terawang enqueue` puts
# SETS simulated sets on the job queue, then N workers (one engine thread each) compute and
# deliver them (save, FTP upload, publish with a confirm) until every result is on the FTP
# server. Real FTP server (pyftpdlib) and the local RabbitMQ on loopback.
# Usage: benches/scale.sh [SETS] [WORKERS...]   (defaults 400, then 1 2 4)
# Prints sets per second per worker count; asserts nothing.
set -euo pipefail

SETS=${1:-400}
shift || true
COUNTS=("${@:-1 2 4}")
[ $# -eq 0 ] && COUNTS=(1 2 4)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
VHOST="terawang-scale-$$"
FTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${FTP_PID:-}" ] && kill "$FTP_PID" 2>/dev/null || true
    rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/terawang"
python3 -c "import pyftpdlib" 2>/dev/null || { echo "needs pyftpdlib: pip install pyftpdlib" >&2; exit 1; }

rabbitmqctl -q add_vhost "$VHOST" >/dev/null
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
mkdir -p "$WORK/ftp"
python3 -m pyftpdlib -i 127.0.0.1 -p "$FTP_PORT" -w -u bench -P bench -d "$WORK/ftp" \
    >"$WORK/ftp.log" 2>&1 &
FTP_PID=$!
sleep 1
"$BIN" simulate --sets "$SETS" --seed 7 --out "$WORK/sim" >/dev/null
rm "$WORK/sim/truth.json"

export FTP_HOST=127.0.0.1 FTP_PORT=$FTP_PORT FTP_USER=bench FTP_PASSWORD=bench \
    RABBITMQ_HOST=127.0.0.1 RABBITMQ_VHOST="$VHOST" RABBITMQ_QUEUE=bench_results \
    RABBITMQ_JOB_QUEUE=bench_jobs RUST_LOG=warn
now() { python3 -c 'import time; print(time.perf_counter())'; }
echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
for n in "${COUNTS[@]}"; do
    rm -rf "$WORK/ftp/result" "$WORK"/w*
    "$BIN" enqueue "$WORK/sim" >/dev/null
    start=$(now)
    PIDS=()
    for w in $(seq 1 "$n"); do
        mkdir -p "$WORK/w$w"
        (cd "$WORK/w$w" && exec "$BIN" run --role worker --threads 1) &
        PIDS+=($!)
    done
    while [ "$(find "$WORK/ftp/result" -name 'result_*.json' 2>/dev/null | wc -l)" -lt "$SETS" ]; do
        sleep 0.05
    done
    end=$(now)
    for p in "${PIDS[@]}"; do kill "$p"; wait "$p" || true; done
    python3 -c "print(f'{$n} worker(s): {$SETS} sets in {$end - $start:.2f} s, {$SETS / ($end - $start):.1f} sets/s')"
done
