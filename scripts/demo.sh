#!/usr/bin/env bash
# The main job: a chips network on a private PostgreSQL cluster that this script starts (and
# stops). Arguments go to the demo program (`scripts/demo.sh --help`).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_deps
install_extension
DIR=$(cluster_base)/demo
PORT=${CHIPS_DEMO_PORT:-54320}
say "starting a private cluster on 127.0.0.1:$PORT"
cluster_start "$DIR" "$PORT"
trap 'cluster_stop "$DIR"' EXIT
cd "$REPO"
say "building chipsd and the demo"
cargo build -q -p chipsd -p chips-demo
target/debug/chips-demo --dsn "host=127.0.0.1 port=$PORT user=postgres" \
    --chipsd target/debug/chipsd "$@"
