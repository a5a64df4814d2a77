#!/usr/bin/env bash
# Prepares what tests/service.rs needs: OpenSSL headers (amiquip), pyftpdlib, a running
# RabbitMQ on 127.0.0.1:5672 with guest/guest. Idempotent; the tests make their own vhosts.
set -euo pipefail

need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
# The TLS test: a self-signed certificate and a TLS front for the broker.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v socat >/dev/null 2>&1 || need+=(socat)
# The tests signal the service with the kill binary.
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi

if ! python3 -c 'import pyftpdlib, OpenSSL' >/dev/null 2>&1; then
    python3 -m pip install -q pyftpdlib pyopenssl 2>/dev/null \
        || python3 -m pip install -q --break-system-packages pyftpdlib pyopenssl
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmq-server -detached
fi
for _ in $(seq 1 60); do
    if rabbitmqctl -q await_startup >/dev/null 2>&1; then
        break
    fi
    sleep 2
done
rabbitmqctl -q await_startup
# Default vhost for manual runs of `terawang run` with the defaults.
rabbitmqctl -q add_vhost /terawang >/dev/null 2>&1 || true
rabbitmqctl -q set_permissions -p /terawang guest '.*' '.*' '.*'
echo "service-setup: RabbitMQ and pyftpdlib ready"
