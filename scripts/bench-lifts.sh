#!/usr/bin/env bash
# Distributed lifts: payments to a CHIP address across 2 and 4 sites (each its own database and chipsd,
# release builds) on a private cluster this script starts and stops. PAYMENTS=100 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-lifts
PORT=${CHIPS_BENCH_PORT:-54362}
cluster_fresh "$DIR" "$PORT"
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
cd "$REPO"
say "building chipsd and the benchmark (release)"
cargo build -q --release -p chipsd --examples --bins
target/release/examples/bench_lifts "host=127.0.0.1 port=$PORT user=postgres" target/release/chipsd "${PAYMENTS:-100}"
