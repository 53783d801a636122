#!/usr/bin/env bash
# Distributed lifts: payments to a CHIP address across 2 and 4 sites, each its own database and
# chipsd (release builds), on a private cluster this script starts and stops. PAYMENTS=100 by default.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
chipsd_bench bench-lifts 54362
target/release/examples/bench_lifts "$BENCH_DSN" target/release/chipsd "${PAYMENTS:-100}"
