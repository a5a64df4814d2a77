#!/usr/bin/env bash
# Prepares what tests/service.rs needs beyond Rust and a C compiler: a running RabbitMQ on
# 127.0.0.1:5672 with guest/guest (the tests start an installed but stopped broker themselves,
# and make their own vhosts; the FTP servers, certificates and the TLS front run inside the
# tests). Also adds the /terawang vhost for manual runs. Idempotent.
set -euo pipefail

# RabbitMQ's tools live in sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

need=()
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
# The tests signal the service with the kill binary.
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
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
echo "service-setup: RabbitMQ ready"
