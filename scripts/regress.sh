#!/usr/bin/env bash
# The SQL-native test tier: golden SQL files (test/sql/*.sql, their expected output in
# test/expected/*.out, run by PostgreSQL's pg_regress, each in a fresh database) and
# isolation specs (test/specs/*.spec, expected output in test/expected/, run by
# pg_isolation_regress: concurrent sessions whose steps interleave as the spec says), against
# a running cluster with chips installed. Differences are printed and fail the run.
#
#   bash scripts/regress.sh 127.0.0.1 54330            # every test
#   bash scripts/regress.sh 127.0.0.1 54330 payments   # one golden file (or spec) by name
#   REGRESS_ACCEPT=1 bash scripts/regress.sh ...       # write the output as the new expected
set -euo pipefail
source "$(dirname "$0")/lib.sh"
HOST=${1:?host}
PORT=${2:?port}
shift 2
PGXS=$("$PG_BIN/pg_config" --pgxs 2>/dev/null || /usr/lib/postgresql/15/bin/pg_config --pgxs)
PGXS_DIR=$(dirname "$(dirname "$PGXS")")   # .../pgxs/src
OUT=$REPO/target/regress
rm -rf "$OUT"
mkdir -p "$OUT"
cd "$REPO/test"
shopt -s nullglob
names() { # DIR EXT [only]
    local f
    for f in "$1"/*."$2"; do
        f=$(basename "$f" ".$2")
        if [ $# -lt 3 ] || [ "$3" = "$f" ]; then echo "$f"; fi
    done
}
if [ "${REGRESS_ACCEPT:-}" = 1 ]; then   # pg_regress stops at a test with no expected file
    for f in sql/*.sql specs/*.spec; do
        f=${f#*/}
        [ -f "expected/${f%.*}.out" ] || : > "expected/${f%.*}.out"
    done
fi
COMMON=(--host="$HOST" --port="$PORT" --user=postgres --inputdir=. --outputdir="$OUT")
status=0
sql=$(names sql sql "$@")
if [ -n "$sql" ]; then
    say "golden SQL tests: $(echo $sql)"
    # files that show values made at random (a line "-- shaped" in them) print them as
    # placeholders, through scripts/regress-shape.sh; the others print exactly what psql does
    exact=() shaped=()
    for f in $sql; do
        if grep -qx -- '-- shaped' "sql/$f.sql"; then shaped+=("$f"); else exact+=("$f"); fi
    done
    if [ ${#exact[@]} -gt 0 ]; then
        "$PGXS_DIR/test/regress/pg_regress" "${COMMON[@]}" --dbname=chips_regress "${exact[@]}" || status=$?
        mv "$OUT/regression.diffs" "$OUT/exact.diffs" 2>/dev/null || true
    fi
    if [ ${#shaped[@]} -gt 0 ]; then
        "$PGXS_DIR/test/regress/pg_regress" "${COMMON[@]}" --dbname=chips_regress \
            --launcher="$REPO/scripts/regress-shape.sh" "${shaped[@]}" || status=$?
    fi
    cat "$OUT/exact.diffs" >> "$OUT/regression.diffs" 2>/dev/null || true
fi
specs=$(names specs spec "$@")
if [ -n "$specs" ]; then
    say "isolation specs: $(echo $specs)"
    mkdir -p "$OUT/isolation"
    # shellcheck disable=SC2086
    "$PGXS_DIR/test/isolation/pg_isolation_regress" "${COMMON[@]}" --outputdir="$OUT/isolation" \
        --dbname=chips_isolation --load-extension=chips $specs || status=$?
fi
if [ "${REGRESS_ACCEPT:-}" = 1 ]; then
    for f in "$OUT"/results/*.out "$OUT"/isolation/results/*.out; do
        [ -f "$f" ] && cp "$f" "$REPO/test/expected/"
    done
    say "expected output written to test/expected/ (read it before committing)"
    exit 0
fi
if [ "$status" -ne 0 ]; then
    cat "$OUT"/regression.diffs "$OUT"/isolation/regression.diffs 2>/dev/null || true
fi
exit "$status"
