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
BENCH_NAME=scale
# shellcheck source=benches/servers.sh
source "$(dirname "$0")/servers.sh"
"$BIN" simulate --sets "$SETS" --seed 7 --out "$WORK/sim" >/dev/null
rm "$WORK/sim/truth.json"

export RABBITMQ_QUEUE=bench_results RABBITMQ_JOB_QUEUE=bench_jobs RUST_LOG=warn
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
    end=$(until_done count "$WORK/ftp/result" "$SETS")
    for p in "${PIDS[@]}"; do kill "$p"; wait "$p" || true; done
    python3 -c "print(f'{$n} worker(s): {$SETS} sets in {$end - $start:.2f} s, {$SETS / ($end - $start):.1f} sets/s')"
done
