#!/usr/bin/env bash
# Clearing inside PostgreSQL, end to end: loads a CSV `debtor,creditor,amount` (header line
# skipped) as open tallies into a fresh site on a private cluster, then runs the real pass,
# `chips.clearing_run`: read every tally, solve, and write every lift and both lift
# chits of every step, chained. Prints, last, one line:
#
#   file=F tallies=N total_debt=D cleared=C lifts=L chits=K solve_ms=S end_to_end_ms=E
#
# solve_ms is `chips.clearing_plan()` alone (read through SPI + solve + rows out), measured on
# the same data just before the pass; end_to_end_ms is the executing pass (`CALL
# chips.clearing_run()`, committing every 100 lifts, as automatic clearing runs it). With REPS > 1 the
# site is reloaded and both are measured REPS times; medians are printed. Then, as a baseline
# measured in the same run, the same chit rows are COPYed into a plain unindexed table
# (copy_ms, and the ratio end_to_end / copy).
#
#   bash scripts/bench-clearing-db.sh FILE.csv            # REPS=3
#   bash scripts/bench-clearing-db.sh --greedy [N_USERS N_TALLIES]
#
# --greedy compares with the original system's approach on a small generated network: a
# recursive CTE enumerates the simple circles (up to MAXLEN=8 tallies), the circle clearing the
# most (length x smallest debt) is lifted, and again until none is left; plain SQL, in the same
# database, against chips.clear on the same tallies.
#
# The loader writes tally rows directly (triggers off, placeholder signatures): loading 284,739
# tallies through the signed protocol would take hours and is not what is measured. Everything
# timed runs the product's own functions.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO"
REPS=${REPS:-3}
PORT=${CHIPS_BENCH_PORT:-54370}
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-clearing
cluster_fresh "$DIR" "$PORT"
WORK=$(mktemp -d)
chmod 755 "$WORK"       # the server reads the COPY file from here
trap 'cluster_stop "$DIR"; rm -rf "$DIR" "$WORK"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

# load CSV: a fresh database `bench` with the CSV as open local tallies.
load() {
    local csv=$1
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
    tail -n +2 "$csv" > "$WORK/rows.csv"
    "${PSQL[@]}" -d bench <<SQL
CREATE EXTENSION chips;
CREATE TEMP TABLE obl (debtor text, creditor text, amount bigint);
\copy obl FROM '$WORK/rows.csv' WITH (FORMAT csv)
DELETE FROM obl WHERE debtor = creditor OR amount <= 0;
SET session_replication_role = replica;
INSERT INTO chips.agents (agent, local) VALUES (repeat('A', 43), true);
INSERT INTO chips.users (ent, cuid, agent, name, username)
SELECT 'u' || x, 'u' || x, repeat('A', 43), 'u' || x, 'bench_u' || x
FROM (SELECT debtor FROM obl UNION SELECT creditor FROM obl) n(x);
CREATE TEMP TABLE t AS
SELECT gen_random_uuid() AS u, 'u' || debtor AS d, 'u' || creditor AS c, amount FROM obl;
INSERT INTO chips.tallies (ent, part_ent, tally_uuid, side, status, contract, hold_cert,
    part_cert, hold_sig, part_sig, digest, chain_tip, hold_terms, net_good, net_pend)
SELECT c, d, u, 'stock', 'open', 'bench', '{}'::jsonb, '{}'::jsonb, 'x', 'x', sha256(u::text::bytea),
       sha256(u::text::bytea), jsonb_build_object('limit', amount), amount, amount FROM t
UNION ALL
SELECT d, c, u, 'foil', 'open', 'bench', '{}'::jsonb, '{}'::jsonb, 'x', 'x', sha256(u::text::bytea),
       sha256(u::text::bytea), '{}'::jsonb, -amount, -amount FROM t;
RESET session_replication_role;
ANALYZE chips.users, chips.tallies;
SQL
}

ms() { "${PSQL[@]}" -d bench -At -c "\\timing on" -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }

if [ "${1:-}" = "--greedy" ]; then
    USERS=${2:-40}; TALLIES=${3:-120}; MAXLEN=${MAXLEN:-8}
    cargo build -q --release -p chips-core --examples
    target/release/examples/gen_network "$USERS" "$TALLIES" 7 > "$WORK/small.csv"
    load "$WORK/small.csv"
    say "original approach: recursive-CTE circles + greedy lifting (max length $MAXLEN)"
    "${PSQL[@]}" -d bench -c "CREATE TABLE debt AS
        SELECT tally_uuid AS id, part_ent AS debtor, ent AS creditor, net_good AS amount
        FROM chips.tallies WHERE side = 'stock'"
    greedy_ms=$(ms "DO \$\$
DECLARE best record;
BEGIN
  LOOP
    WITH RECURSIVE p(start, last, ids, nodes, mn) AS (
        SELECT debtor, creditor, ARRAY[id], ARRAY[debtor, creditor], amount FROM debt WHERE amount > 0
      UNION ALL
        SELECT p.start, d.creditor, p.ids || d.id, p.nodes || d.creditor, least(p.mn, d.amount)
        FROM p JOIN debt d ON d.debtor = p.last AND d.amount > 0
        WHERE cardinality(p.ids) < $MAXLEN AND p.last <> p.start
          AND (d.creditor = p.start OR NOT d.creditor = ANY (p.nodes)))
    SELECT ids, mn INTO best FROM p WHERE last = start
    ORDER BY cardinality(ids) * mn DESC LIMIT 1;
    EXIT WHEN best IS NULL;
    UPDATE debt SET amount = amount - best.mn WHERE id = ANY (best.ids);
  END LOOP;
END \$\$")
    before=$("${PSQL[@]}" -d bench -At -c "SELECT sum(net_good) FROM chips.tallies WHERE side = 'stock'")
    greedy=$("${PSQL[@]}" -d bench -At -c "SELECT $before - sum(amount) FROM debt")
    ours_ms=$(ms "SELECT count(*) FROM chips.clear(execute => true)")
    after=$("${PSQL[@]}" -d bench -At -c "SELECT sum(abs(net_good)) FROM chips.tallies WHERE side = 'stock'")
    ours=$((before - after))
    echo "network users=$USERS tallies=$TALLIES total_debt=$before"
    echo "greedy (recursive CTE, max length $MAXLEN): cleared=$greedy time_ms=$greedy_ms"
    echo "chips.clear (optimum, executed):            cleared=$ours time_ms=$ours_ms"
    echo "greedy_share=$(echo "scale=4; $greedy / $ours" | bc) time_ratio_greedy_to_ours=$(echo "scale=2; $greedy_ms / $ours_ms" | bc)"
    exit 0
fi

CSV=${1:?usage: bench-clearing-db.sh FILE.csv | --greedy}
solve=(); e2e=(); copy=()
for r in $(seq "$REPS"); do
    say "run $r of $REPS: loading $CSV"
    load "$CSV"
    total=$("${PSQL[@]}" -d bench -At -c "SELECT sum(net_good) FROM chips.tallies WHERE side = 'stock'")
    tallies=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM chips.tallies WHERE side = 'stock'")
    "${PSQL[@]}" -d bench -c "CHECKPOINT"
    solve+=("$(ms "SELECT count(*) FROM chips.clearing_plan()")")
    e2e+=("$(ms "CALL chips.clearing_run(batch => 100)")")
    read -r lifts cleared <<<"$("${PSQL[@]}" -d bench -At -F ' ' -c "SELECT count(*), sum(units * cardinality(tallies)) FROM chips.lifts")"
    chits=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM chips.chits")
    # Baseline: the same chit rows COPYed into a plain table without indexes.
    "${PSQL[@]}" -d bench -c "\\copy (SELECT * FROM chips.chits) TO '$WORK/chits.copy'" \
        -c "CREATE TABLE plain (LIKE chips.chits)" -c "CHECKPOINT"
    copy+=("$(ms "COPY plain FROM '$WORK/chits.copy'")")
    echo "run $r: solve_ms=${solve[-1]} end_to_end_ms=${e2e[-1]} copy_ms=${copy[-1]}"
done
s=$(printf '%s\n' "${solve[@]}" | median); e=$(printf '%s\n' "${e2e[@]}" | median)
c=$(printf '%s\n' "${copy[@]}" | median)
echo "copy of the same $chits chit rows into a plain table: copy_ms=$c ratio_end_to_end_to_copy=$(echo "scale=1; $e / $c" | bc)"
echo "file=$(basename "$CSV") tallies=$tallies total_debt=$total cleared=$cleared lifts=$lifts chits=$chits solve_ms=$s end_to_end_ms=$e"
