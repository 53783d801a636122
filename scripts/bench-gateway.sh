#!/usr/bin/env bash
# The user gateway under many subscribed websocket clients (release builds), on a private
# cluster this script starts and stops. CLIENTS=1000 PAYMENTS=2000 POLL_MS=50 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-gateway
PORT=${CHIPS_BENCH_PORT:-54380}
cluster_fresh "$DIR" "$PORT"
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
# 1,000 clients and 1,000 server sockets, plus the database's
ulimit -n "$(ulimit -Hn)"
cd "$REPO"
say "building chipsd and the benchmark (release)"
cargo build -q --release -p chipsd --examples --bins
POLL_MS=${POLL_MS:-50} target/release/examples/bench_gateway "host=127.0.0.1 port=$PORT user=postgres" \
    target/release/chipsd "${CLIENTS:-1000}" "${PAYMENTS:-2000}"
