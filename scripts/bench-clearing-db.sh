#!/usr/bin/env bash
# Clearing inside PostgreSQL, end to end: loads an obligation network as open tallies into a
# fresh site on a private cluster, then runs the real pass, `CALL chips.clearing_run()`: read
# every tally, solve, lock and re-check the tallies it moves, and write the lift, its circles
# and one lift chit on both halves of every moved tally, chained (set-based). Measured in the
# same run:
#
#   solve_ms        `chips.clearing_plan()` alone (read through SPI + solve + rows out)
#   end_to_end_ms   the executing pass
#   copy_ms         COPY of every row the pass wrote (chits, circles, lift, events, and the
#                   moved tally rows) into plain unindexed tables: the bulk-write baseline
#   floor_ms        the same lift chits inserted again into chips.chits and the moved tally rows
#                   updated once, with the tables' keys and indexes but no product trigger
#                   (rolled back): what the schema asks of any writer of this pass
#   phases          the pass's own timing of its phases (read, solve, lock and re-check,
#                   chits chained, write: the last includes the chaining), from its DEBUG1 lines
#   cleared         debt before - debt after, checked against the optimum that core's
#                   solver finds on the CSV outside the database (the script fails otherwise)
#
# With PAYERS > 0 (default 4) it then, REPS times, reloads the network and measures payment latency
# (p50/p99, pgbench, each client a custodial creditor of a tally the pass moves, paying 1 unit
# back on it) for PAY_SECS seconds with no pass, then while a pass runs, in the same run; that
# pass commits pieces of at most PIECE tallies (`clearing_run(piece => PIECE)`; 0: the whole
# pass in one transaction).
#
#   bash scripts/bench-clearing-db.sh FILE.csv       # REPS=3 PAYERS=4 PAY_SECS=10 PIECE=1000
#   bash scripts/bench-clearing-db.sh sardex:80000:400000   # a generated dense network
#   bash scripts/bench-clearing-db.sh --greedy [N_USERS N_TALLIES]
#
# FILE.csv: `debtor,creditor,amount` (header skipped). `sardex:USERS:TALLIES[:SEED]` generates a
# clustered network with core/examples/gen_network.rs --sardex (seed 42 unless given).
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
PAYERS=${PAYERS:-4}
PAY_SECS=${PAY_SECS:-10}
PIECE=${PIECE:-1000}
PORT=${CHIPS_BENCH_PORT:-54370}
ensure_deps
install_extension --release
cargo build -q --release -p chips-core --examples
DIR=$(cluster_base)/bench-clearing
# The default shared_buffers (128 MB) holds a third of network 03's tallies; a DBA gives a
# site's database more (a quarter of this machine's memory would be 6 GB).
CLUSTER_OPTS=${CLUSTER_OPTS:-"-c shared_buffers=2GB"} cluster_fresh "$DIR" "$PORT"
WORK=$(mktemp -d)
chmod 755 "$WORK"       # the server reads the COPY files from here
trap 'cluster_stop "$DIR"; rm -rf "$DIR" "$WORK"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

ms() { "${PSQL[@]}" -d bench -At -c "\\timing on" -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }
debt() { "${PSQL[@]}" -d bench -At -c "SELECT sum(abs(net_good)) FROM chips.tallies WHERE side = 'stock'"; }

if [ "${1:-}" = "--greedy" ]; then
    USERS=${2:-40}; TALLIES=${3:-120}; MAXLEN=${MAXLEN:-8}
    target/release/examples/gen_network "$USERS" "$TALLIES" 7 > "$WORK/small.csv"
    load_network "$WORK/small.csv"
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
    before=$(debt)
    greedy=$("${PSQL[@]}" -d bench -At -c "SELECT $before - sum(amount) FROM debt")
    ours_ms=$(ms "SELECT count(*) FROM chips.clear(execute => true)")
    ours=$((before - $(debt)))
    echo "network users=$USERS tallies=$TALLIES total_debt=$before"
    echo "greedy (recursive CTE, max length $MAXLEN): cleared=$greedy time_ms=$greedy_ms"
    echo "chips.clear (optimum, executed):            cleared=$ours time_ms=$ours_ms"
    echo "greedy_share=$(echo "scale=4; $greedy / $ours" | bc) time_ratio_greedy_to_ours=$(echo "scale=2; $greedy_ms / $ours_ms" | bc)"
    exit 0
fi

SPEC=${1:?usage: bench-clearing-db.sh FILE.csv | sardex:USERS:TALLIES[:SEED] | --greedy}
case "$SPEC" in
    sardex:*)
        IFS=: read -r _ users tallies seed <<<"$SPEC"
        CSV=$WORK/sardex-$users-$tallies.csv
        say "generating a clustered network: $users firms, $tallies obligations"
        target/release/examples/gen_network --sardex "$users" "$tallies" "${seed:-42}" > "$CSV" ;;
    *) CSV=$SPEC ;;
esac
optimum=$(target/release/examples/clear "$CSV" 1 | tr ' ' '\n' | sed -n 's/^cleared=//p')

# Every row the pass wrote, COPYed out and then into plain unindexed tables: the baseline.
copy_baseline() {
    "${PSQL[@]}" -d bench <<SQL
CREATE TEMP TABLE pass AS SELECT id FROM chips.lifts WHERE kind = 'local';
\copy (SELECT c.* FROM chips.chits c WHERE c.lift_id IN (SELECT id FROM pass)) TO '$WORK/chits.copy'
\copy (SELECT t.* FROM chips.tallies t WHERE t.id IN (SELECT c.tally_id FROM chips.chits c WHERE c.lift_id IN (SELECT id FROM pass))) TO '$WORK/tallies.copy'
\copy (SELECT k.* FROM chips.pass_circles k WHERE k.lift_id IN (SELECT id FROM pass)) TO '$WORK/circles.copy'
\copy (SELECT l.* FROM chips.lifts l WHERE l.id IN (SELECT id FROM pass)) TO '$WORK/lifts.copy'
\copy (SELECT e.* FROM chips.events e WHERE e.kind = 'lift') TO '$WORK/events.copy'
CREATE TABLE plain_chits (LIKE chips.chits); CREATE TABLE plain_tallies (LIKE chips.tallies);
CREATE TABLE plain_circles (LIKE chips.pass_circles); CREATE TABLE plain_lifts (LIKE chips.lifts);
CREATE TABLE plain_events (LIKE chips.events);
CHECKPOINT;
SQL
    "${PSQL[@]}" -d bench -At -c "\\timing on" \
        -c "COPY plain_chits FROM '$WORK/chits.copy'" -c "COPY plain_tallies FROM '$WORK/tallies.copy'" \
        -c "COPY plain_circles FROM '$WORK/circles.copy'" -c "COPY plain_lifts FROM '$WORK/lifts.copy'" \
        -c "COPY plain_events FROM '$WORK/events.copy'" |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{s += $1} END {printf "%.1f", s}'
}

# What the schema itself asks of any writer of the same pass: its lift chits inserted again into
# chips.chits (new uuids and chain places, so as not to collide with the pass's own) with the
# table's indexes and foreign keys but none of the product's triggers, and each moved tally row
# updated once (the columns a chit moves), in a transaction rolled back. The floor under the
# pass's write, whatever its code.
floor_baseline() {
    "${PSQL[@]}" -d bench -At <<'SQL' | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -2 | awk '{s += $1} END {printf "%.1f", s}'
BEGIN;
CREATE TEMP TABLE floor_chits AS
    SELECT tally_id, gen_random_uuid() AS chit_uuid, chit_type, issuer, units, reference, chit_date,
           status, value, chain_idx + 1000000 AS chain_idx, chain_prev, chain_hash, lift_id
    FROM chips.chits WHERE lift_id IS NOT NULL;
ALTER TABLE chips.chits DISABLE TRIGGER USER;
ALTER TABLE chips.tallies DISABLE TRIGGER USER;
\timing on
INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, chit_date,
                         status, value, chain_idx, chain_prev, chain_hash, lift_id)
    SELECT * FROM floor_chits;
UPDATE chips.tallies t SET net_good = t.net_good + f.value, net_pend = t.net_pend + f.value,
       chain_len = f.chain_idx, chain_tip = f.chain_hash, updated = now()
    FROM floor_chits f WHERE t.id = f.tally_id;
\timing off
ROLLBACK;
SQL
}

solve=(); e2e=(); copy=(); floor=()
for r in $(seq "$REPS"); do
    say "run $r of $REPS: loading $(basename "$CSV")"
    load_network "$CSV"
    tallies=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM chips.tallies WHERE side = 'stock'")
    before=$(debt)
    "${PSQL[@]}" -d bench -c "CHECKPOINT"
    solve+=("$(ms "SELECT count(*) FROM chips.clearing_plan()")")
    "${PSQL[@]}" -d bench -c "CHECKPOINT"
    # the pass's own account of its phases (DEBUG1 lines "clearing: PHASE MS ms")
    e2e+=("$("${PSQL[@]}" -d bench -At -c "SET client_min_messages = debug1" -c "\\timing on" \
        -c "CALL chips.clearing_run()" 2>"$WORK/phases" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)")
    phases=$(sed -n 's/^DEBUG:  clearing: \(.*\) \([0-9.]*\) ms$/\1=\2/p' "$WORK/phases" | tr ' ' '_' | paste -sd ' ')
    cleared=$((before - $(debt)))
    [ "$cleared" = "$optimum" ] || { echo "cleared $cleared, but the optimum is $optimum" >&2; exit 1; }
    read -r lifts moved chits circles events <<<"$("${PSQL[@]}" -d bench -At -F ' ' -c "
        SELECT (SELECT count(*) FROM chips.lifts), (SELECT sum(cardinality(tallies)) FROM chips.lifts),
               (SELECT count(*) FROM chips.chits WHERE lift_id IS NOT NULL),
               (SELECT count(*) FROM chips.pass_circles), (SELECT count(*) FROM chips.events WHERE kind = 'lift')")"
    copy+=("$(copy_baseline)")
    floor+=("$(floor_baseline)")
    echo "run $r: solve_ms=${solve[-1]} end_to_end_ms=${e2e[-1]} copy_ms=${copy[-1]} floor_ms=${floor[-1]}"
    echo "run $r: the pass's phases (ms): $phases"
done
s=$(printf '%s\n' "${solve[@]}" | median); e=$(printf '%s\n' "${e2e[@]}" | median)
c=$(printf '%s\n' "${copy[@]}" | median); f=$(printf '%s\n' "${floor[@]}" | median)
echo "rows written by the pass: lifts=$lifts tallies_moved=$moved chits=$chits ($(echo "scale=2; $chits / (2 * $moved)" | bc) per tally half moved) circles=$circles lift_events=$events (and $((2 * moved)) tally rows updated)"
echo "file=$(basename "$CSV") tallies=$tallies total_debt=$before cleared=$cleared optimum=$optimum solve_ms=$s end_to_end_ms=$e copy_ms=$c end_to_end_over_copy=$(echo "scale=2; $e / $c" | bc) end_to_end_over_solve=$(echo "scale=2; $e / $s" | bc)"
echo "floor_ms=$f (the pass's rows into the real tables, keys and indexes, no product trigger) floor_over_copy=$(echo "scale=2; $f / $c" | bc) end_to_end_over_floor=$(echo "scale=2; $e / $f" | bc)"

[ "$PAYERS" -gt 0 ] || exit 0
# pgbench's per-transaction log: client, transaction, latency (us), script, epoch s, us.
payers() { # seconds log-prefix
    (cd "$WORK" && pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_client -D first=1 -c "$PAYERS" \
        -j "$(( PAYERS < 2 ? 1 : 2 ))" -T "$1" -f "$WORK/pay.sql" --log --log-prefix="$2" bench \
        > "$WORK/$2.out" 2>&1) || { cat "$WORK/$2.out" >&2; return 1; }
}
pct() { # p (0-100) < latencies in us -> ms
    sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.2f", a[i]/1000}'
}
now_us() { date +%s%6N; }
# REPS times, each on the network reloaded: the payers with no pass, then while a pass runs.
ratios=(); i99s=(); d99s=()
for r in $(seq "$REPS"); do
    say "payment latency, run $r of $REPS: $PAYERS payers, ${PAY_SECS}s with no pass, then while a pass runs"
    load_network "$CSV"
    # Payers: the creditors of tallies the pass will move.
    network_payers "$PAYERS" "SELECT DISTINCT ON (p.creditor) p.tally, p.creditor
                              FROM chips.clearing_plan() p ORDER BY p.creditor, random()"
    rm -f "$WORK"/idle.* "$WORK"/during.* "$WORK"/*.lat
    payers "$PAY_SECS" idle
    # pgbench's logs only (idle.PID, idle.PID.N): not its output (idle.out), nor the .lat file
    # this pipeline is writing, which a wider pattern could read back while it grows
    cat "$WORK"/idle.[0-9]* | awk '{print $3}' > "$WORK/idle.lat"
    # The pass runs while the payers pay (for longer than the passes above took); count the
    # payments that started while it ran.
    payers $(( ${e%.*} * 2 / 1000 + 5 )) during &
    pay_pid=$!
    sleep 2
    t0=$(now_us)
    pass_ms=$(ms "CALL chips.clearing_run(piece => $PIECE)")
    t1=$(now_us)
    wait "$pay_pid"
    read -r plifts pmoved pchits <<<"$("${PSQL[@]}" -d bench -At -F ' ' -c "
        SELECT count(*), sum(cardinality(tallies)), (SELECT count(*) FROM chips.chits WHERE lift_id IS NOT NULL)
        FROM chips.lifts")"
    cat "$WORK"/during.[0-9]* | awk -v a="$t0" -v b="$t1" '{t = $5 * 1000000 + $6 - $3; if (t >= a && t <= b) print $3}' > "$WORK/during.lat"
    n_idle=$(wc -l < "$WORK/idle.lat"); n_during=$(wc -l < "$WORK/during.lat")
    i50=$(pct 50 < "$WORK/idle.lat"); i99=$(pct 99 < "$WORK/idle.lat")
    d50=$(pct 50 < "$WORK/during.lat"); d99=$(pct 99 < "$WORK/during.lat")
    ratio=$(echo "scale=2; $d99 / $i99" | bc)
    ratios+=("$ratio"); i99s+=("$i99"); d99s+=("$d99")
    echo "run $r: payments with no pass: n=$n_idle p50_ms=$i50 p99_ms=$i99"
    echo "run $r: the pass in pieces of at most $PIECE tallies: lifts=$plifts tally_moves=$pmoved chits=$pchits end_to_end_ms=$pass_ms"
    echo "run $r: payments during a pass (${pass_ms} ms): n=$n_during p50_ms=$d50 p99_ms=$d99 p99_during_over_idle=$ratio"
    bad=$(payers_unsound)
    echo "run $r: chain or balance failures on the payers' tallies: $bad"
    [ "$bad" = 0 ]
done
echo "payments, medians of $REPS runs: p99 idle $(printf '%s\n' "${i99s[@]}" | median) ms, during a pass $(printf '%s\n' "${d99s[@]}" | median) ms; p99_during_over_idle ${ratios[*]}: median $(printf '%s\n' "${ratios[@]}" | median)"
