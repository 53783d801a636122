#!/usr/bin/env bash
# The user gateway under many subscribed websocket clients (release builds), on a private
# cluster this script starts and stops. CLIENTS=1000 PAYMENTS=2000 POLL_MS=50 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# 1,000 clients and 1,000 server sockets, plus the database's
ulimit -n "$(ulimit -Hn)"
chipsd_bench bench-gateway 54380
POLL_MS=${POLL_MS:-50} target/release/examples/bench_gateway "$BENCH_DSN" target/release/chipsd \
    "${CLIENTS:-1000}" "${PAYMENTS:-2000}"
