#!/usr/bin/env bash
# End-to-end payments between two sites, each with its own database and chipsd (release builds),
# on a private cluster this script starts and stops. PAYMENTS=500 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-peer
PORT=${CHIPS_BENCH_PORT:-54360}
cluster_fresh "$DIR" "$PORT"
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
cd "$REPO"
say "building chipsd and the benchmark (release)"
cargo build -q --release -p chipsd --examples --bins
target/release/examples/bench_peer "host=127.0.0.1 port=$PORT user=postgres" target/release/chipsd "${PAYMENTS:-500}"
