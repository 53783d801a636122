#!/usr/bin/env bash
# Clearing rounds across a federation: an MTCS network cut across SITES sites (8 by default),
# each its own database and chipsd, on a private cluster this script starts and stops. One round
# against the central optimum, its time per phase, messages and bytes per site and the
# coordinator's peak memory; then, loaded again, payment latency at a member (PAYERS payers, 4 by
# default, 0 skips it) for PAY_SECS seconds (10) with no round and then while a round runs;
# then route discovery on the same partition for the same wall time.
#
#   bash scripts/bench-rounds.sh [FILE.csv ...]   # default: MTCS network 01; SITES=8 PAYERS=4 PAY_SECS=10
#   STEPS=2 bash scripts/bench-rounds.sh          # the payments step alone (STEPS=1: the round alone)
#   MEMBER_CLUSTER=1 ...                          # the payers' site (site 1) on a cluster of its
#                                                 # own in the payments step (port 54386)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DATA=${CHIPS_DATA:-$REPO/../shared/data}
CLUSTER_OPTS=${CLUSTER_OPTS:-"-c shared_buffers=2GB -c max_connections=300"} \
    chipsd_bench bench-rounds 54385
WORK=$(mktemp -d)
export BENCH_LOG=$BENCH_DIR/server.log MEMBER_LOG=$BENCH_DIR-member/server.log
MEMBER_DIR=$BENCH_DIR-member
trap 'cluster_stop "$BENCH_DIR"; cluster_stop "$MEMBER_DIR"; rm -rf "$BENCH_DIR" "$MEMBER_DIR" "$WORK"' EXIT
if [ "${MEMBER_CLUSTER:-0}" = 1 ]; then
    CLUSTER_OPTS=${CLUSTER_OPTS:-"-c shared_buffers=2GB -c max_connections=300"} \
        cluster_fresh "$MEMBER_DIR" 54386
    export MEMBER_DSN="host=127.0.0.1 port=54386 user=postgres"
fi
if [ $# -eq 0 ]; then
    command -v unzip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
    unzip -q -o "$DATA/mtcs-synthetic/synthetic-networks.zip" -d "$WORK"
    set -- "$WORK/synthethic_network_01.csv"
fi
target/release/examples/bench_rounds "$BENCH_DSN" target/release/chipsd "${SITES:-8}" "$@"
