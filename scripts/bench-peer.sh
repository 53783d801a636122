#!/usr/bin/env bash
# End-to-end payments between two sites, each with its own database and chipsd (release builds),
# on a private cluster this script starts and stops. PAYMENTS=500 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
chipsd_bench bench-peer 54360
target/release/examples/bench_peer "$BENCH_DSN" target/release/chipsd "${PAYMENTS:-500}"
