#!/usr/bin/env bash
# Sustained throughput of the whole service pipeline (watch → group → compute → save → FTP →
# RabbitMQ → delete) with a real FTP server (pyftpdlib) and the local RabbitMQ on loopback:
# `run --once` on a backlog, the watching `run` on the same backlog renamed in, `run --once`
# again, the delivery alone on saved sets, then a plain FTP client uploading the same results
# (the server's own limit).
# Usage: benches/pipeline.sh [SETS] [THREADS]   (defaults 200, all cores)
# Needs what .ci/service-setup.sh installs. Prints sets per second; asserts nothing.
set -euo pipefail
# A failure inside $(...) stops the bench too, not only the substitution.
shopt -s inherit_errexit

SETS=${1:-200}
THREADS=${2:-$(nproc)}
BENCH_NAME=bench
# shellcheck source=benches/servers.sh
source "$(dirname "$0")/servers.sh"
mkdir -p "$WORK/site/data_mentah"

cd "$WORK/site"
export RABBITMQ_QUEUE=bench_queue FILE_SETTLE_SECONDS=0 RUST_LOG=warn

# A fresh backlog of the same sets in data_mentah/ (or renamed in by the caller from sim/).
backlog() {
    rm -rf "$WORK/ftp/result" temp_data hasil_proses_lokal "$WORK/sim"
    "$BIN" simulate --sets "$SETS" --seed 5 --out "$WORK/sim" >/dev/null
    rm "$WORK/sim/truth.json"
    # Every run publishes into an empty queue.
    rabbitmqctl -q purge_queue -p "$VHOST" bench_queue >/dev/null 2>&1 || true
}
# The backlog into data_mentah/ in a few renames: a glob of every file overflows the argument
# list beyond about 3000 sets (24 000 files).
move_in() { find "$WORK/sim" -maxdepth 1 -name '*.json' -exec mv -t data_mentah/ {} +; }
queued() { rabbitmqctl -q list_queues -p "$VHOST" name messages | awk '$1=="bench_queue"{print $2}'; }

# 1. and 3. run --once on the backlog, before and after the watching run: a run after many
#    files were created and deleted can be slower on the same disk, so the watching run is
#    compared with the mean of the two.
run_once() {
    backlog
    move_in
    local start end
    start=$(now)
    "$BIN" run --once --threads "$THREADS"
    end=$(now)
    left=$(find data_mentah -maxdepth 1 -name '*.json' | wc -l)
    uploaded=$(find "$WORK/ftp" -name 'result_*.json' | wc -l)
    echo "run --once: uploaded $uploaded, sources left $left, messages $(queued)" >&2
    python3 -c "print($SETS / ($end - $start))"
}
once_before=$(run_once)

# 2. The watching service: started on an empty folder, the same backlog renamed in at once;
#    timed until every source is deleted (every set saved, uploaded, published, confirmed).
backlog
"$BIN" run --threads "$THREADS" &
RUN_PID=$!
# Stopped by the clean-up on exit too, should the bench fail while it runs.
PIDS+=("$RUN_PID")
sleep 2
start=$(now)
move_in
end=$(until_done empty data_mentah)
kill "$RUN_PID"; wait "$RUN_PID" || true
watch=$(python3 -c "print($SETS / ($end - $start))")
echo "run (watching): messages $(queued)" >&2

once_after=$(run_once)

# 4. Delivery alone: the backlog saved by a run whose FTP server is unreachable (each set
#    given up at its upload, the journal keeps it), then a run that only uploads, publishes
#    and deletes: what the delivery threads sustain without the engine.
delivery_only() {
    backlog
    move_in
    FTP_PORT=1 "$BIN" run --once --threads "$THREADS" 2>/dev/null || true
    local start end
    start=$(now)
    "$BIN" run --once --threads "$THREADS"
    end=$(now)
    left=$(find data_mentah -maxdepth 1 -name '*.json' | wc -l)
    echo "delivery alone: sources left $left, messages $(queued)" >&2
    python3 -c "print($SETS / ($end - $start))"
}
delivery=$(delivery_only)
# 5. The FTP server's own limit: a plain client uploading the same results over one
#    connection, as the service does (STOR to a temporary name, then RNFR/RNTO).
ftp_rate=$(python3 - "$FTP_PORT" hasil_proses_lokal <<'PY'
import ftplib, io, os, sys, time
port, folder = int(sys.argv[1]), sys.argv[2]
names = sorted(n for n in os.listdir(folder) if n.startswith("result_") and n.endswith(".json")
               and not n.endswith(".report.json"))
blobs = [(n, open(os.path.join(folder, n), "rb").read()) for n in names]
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", port)
ftp.login("bench", "bench")
ftp.mkd("plain") if "plain" not in ftp.nlst() else None
ftp.cwd("plain")
t0 = time.perf_counter()
for n, b in blobs:
    ftp.storbinary(f"STOR .{n}.part", io.BytesIO(b))
    ftp.rename(f".{n}.part", n)
print(len(blobs) / (time.perf_counter() - t0))
PY
)

echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
echo "sets: $SETS, engine threads: $THREADS"
python3 - "$once_before" "$once_after" "$watch" "$ftp_rate" "$delivery" <<'PY'
import sys
before, after, watch, ftp, delivery = map(float, sys.argv[1:])
once = (before + after) / 2
print(f"run --once          {once:7.1f} sets/s  (mean of {before:.1f} before and {after:.1f} after)")
print(f"run (watching)      {watch:7.1f} sets/s  ({watch / once:.0%} of --once)")
print(f"delivery alone      {delivery:7.1f} sets/s  (saved sets resumed: upload, publish, delete)")
print(f"plain FTP client    {ftp:7.1f} uploads/s over one connection (the server's own limit)")
PY
