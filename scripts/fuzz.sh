#!/usr/bin/env bash
# Fuzz the byte-level parsers with libFuzzer (cargo fuzz): the frame decoder, the Noise layer,
# the peer message parser and canonical JSON, FUZZ_SECS seconds each (default 60). Installs
# cargo-fuzz if it is missing. Findings stop the run (exit 1) and are kept in fuzz/artifacts/.
# Runs on the stable toolchain (RUSTC_BOOTSTRAP allows cargo fuzz's flags), without a sanitizer:
# the targets are safe Rust, and what they look for is panics and broken round trips.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked
fi
SECS=${FUZZ_SECS:-60}
for t in frame noise envelope canonical; do
    say "fuzzing $t for ${SECS} s"
    mkdir -p "fuzz/corpus/$t"
    log=fuzz/$t.log
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz target $t failed (status $status; the input is in fuzz/artifacts/$t)"
        exit 1
    fi
done
