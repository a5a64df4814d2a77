# Sourced by the service benches (pipeline.sh, scale.sh): builds the release binary, makes a
# work folder, a RabbitMQ vhost of its own on the local broker and a pyftpdlib FTP server on
# a free loopback port, exports the settings that point the service at them, and removes it
# all on exit. Set BENCH_NAME before sourcing; background processes to stop go in PIDS.
# TERAWANG_BIN: the binary to time (default: this tree's release build).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
VHOST="terawang-$BENCH_NAME-$$"
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
# TERAWANG_BIN times another build (an older one, to compare) instead of this tree's.
if [ -n "${TERAWANG_BIN:-}" ]; then
    BIN=$(realpath "$TERAWANG_BIN")
else
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/terawang"
fi
python3 -c "import pyftpdlib" 2>/dev/null || { echo "needs pyftpdlib: pip install pyftpdlib" >&2; exit 1; }

rabbitmqctl -q add_vhost "$VHOST" >/dev/null
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
mkdir -p "$WORK/ftp"
python3 -m pyftpdlib -i 127.0.0.1 -p "$FTP_PORT" -w -u bench -P bench -d "$WORK/ftp" \
    >"$WORK/ftp.log" 2>&1 &
FTP_PID=$!
sleep 1

export FTP_HOST=127.0.0.1 FTP_PORT=$FTP_PORT FTP_USER=bench FTP_PASSWORD=bench \
    RABBITMQ_HOST=127.0.0.1 RABBITMQ_VHOST="$VHOST"
now() { python3 -c 'import time; print(time.perf_counter())'; }
# Waits until DIR holds no *.json file (`until_done empty DIR`) or at least N files
# result_*.json under it (`until_done count DIR N`), and prints when (as `now` does). One
# Python process polls every 10 ms: a `find` started that often took a fifth of a core from
# the service being timed.
until_done() {
    python3 - "$@" <<'PY'
import fnmatch, os, sys, time
mode, folder = sys.argv[1], sys.argv[2]
def done():
    if mode == "empty":
        with os.scandir(folder) as entries:
            return not any(e.name.endswith(".json") for e in entries)
    found = sum(len(fnmatch.filter(files, "result_*.json")) for _, _, files in os.walk(folder))
    return found >= int(sys.argv[3])
while not done():
    time.sleep(0.01)
print(time.perf_counter())
PY
}
