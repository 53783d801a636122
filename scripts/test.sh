#!/usr/bin/env bash
# Every test: formatting and lints, core unit and property tests, #[pg_test]s, golden SQL tests
# and isolation specs, and integration tests as real clients against a private cluster this
# script starts (and stops), a short fuzzing run, and the Debian packages (built, installed,
# used, removed).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_deps chromium postgresql-15-auto-failover pg-auto-failover-cli
cd "$REPO"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
cargo clippy -q -p chips --features pg_test --all-targets -- -D warnings

say "core: unit and property tests"
cargo test -q -p chips-core

say "extension: #[pg_test]s"
PGTEST_DIR=$(mktemp -d /tmp/chips-pgtest.XXXXXX)
chown postgres: "$PGTEST_DIR"
(cd extension && cargo pgrx test pg15 --runas postgres --pgdata "$PGTEST_DIR/data")
rm -rf "$PGTEST_DIR"

install_extension
# Clients not written by us: a Noise implementation for the interop test (PyPI noiseprotocol),
# and a websocket client for the gateway tests (PyPI websockets).
VENV=$REPO/target/test-venv
if ! "$VENV/bin/python" -c "import noise, websockets" 2>/dev/null; then
    say "installing the Python noiseprotocol and websockets packages into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q noiseprotocol websockets
fi
export CHIPS_PYTHON=$VENV/bin/python
DIR=$(cluster_base)/test
PORT=${CHIPS_TEST_PORT:-54330}
say "integration tests against a private cluster on 127.0.0.1:$PORT"
cluster_fresh "$DIR" "$PORT"
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
say "golden SQL tests and isolation specs (test/)"
bash "$REPO/scripts/regress.sh" 127.0.0.1 "$PORT"
CHIPS_TEST_DSN="host=127.0.0.1 port=$PORT user=postgres" PG_BIN="$PG_BIN" \
    cargo test -q -p chips-tests -p chipsd -p chips-demo -- --test-threads=4

say "fuzzing: each target briefly (bash scripts/fuzz.sh runs them longer)"
FUZZ_SECS=${FUZZ_SECS:-10} bash "$REPO/scripts/fuzz.sh"

say "Debian packages: built, the extension's installed into a fresh cluster and used"
bash "$REPO/scripts/package.sh" --test
