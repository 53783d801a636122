#!/usr/bin/env bash
# Chit throughput through the SQL API (chips.pay: a custodial payment, signed and verified in
# the database, balance, chain and both tally halves updated) against plain INSERTs of rows of
# the same width into an unindexed table, with pgbench, in the same run on the same private
# cluster. Prints median transactions per second over REPS runs for 1, 4 and 16 clients.
#
# Client n acts for payer n mod 16 and pays on that payer's tally with vendor n mod 16: as
# many people paying at once. A last line measures the contended case: the clients (as many as
# the last count) all acting for one payer, paying its 16 vendors (one user's payments commit one after the other, because
# each user's event feed is numbered in commit order: docs/benchmarks.md).
#
#   bash scripts/bench-chits.sh            # DURATION=10 REPS=3 by default
#   DURATION=30 REPS=5 bash scripts/bench-chits.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-"1 4 16"}
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench
PORT=${CHIPS_BENCH_PORT:-54350}
cluster_fresh "$DIR" "$PORT"
[ -n "${KEEP:-}" ] || trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"

say "setting up: 16 payers and 16 vendors (custodial keys), 31 open tallies"
"${PSQL[@]}" -d bench <<'SQL' >/dev/null
CREATE EXTENSION chips;
SELECT chips.agent_register('kHgBc9ZaNUEG1QKJRV3uM5yyZHv8yiVtGzxPwZJ6SLo', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Benchmark contract"}');
-- pgbench logs in as bench_client and acts for a payer with SET ROLE (a member of every payer)
CREATE ROLE bench_client LOGIN;
-- pair tallies: payer i with vendor i; one_payer: payer 0 with every vendor
CREATE TABLE public.bench_tallies (n int PRIMARY KEY, tally uuid NOT NULL);
CREATE TABLE public.bench_one_payer (n int PRIMARY KEY, tally uuid NOT NULL);
GRANT SELECT ON public.bench_tallies, public.bench_one_payer TO PUBLIC;
CREATE FUNCTION pg_temp.open_tally(p_vendor text, p_payer text) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_t uuid;
    v_ticket jsonb;
BEGIN
    EXECUTE format('SET ROLE %I', p_vendor);
    v_t := chips.tally_create('stock', hold_terms => '{"limit": 1000000000000000}');
    v_ticket := chips.ticket_create(v_t);
    EXECUTE format('SET ROLE %I', p_payer);
    PERFORM chips.ticket_redeem(v_ticket);
    EXECUTE format('SET ROLE %I', p_vendor);
    PERFORM chips.tally_offer(v_t);
    EXECUTE format('SET ROLE %I', p_payer);
    PERFORM chips.tally_accept(v_t);
    RESET ROLE;
    RETURN v_t;
END
$$;
DO $$
BEGIN
    FOR i IN 0..15 LOOP
        PERFORM chips.user_create('Payer ' || i, 'p' || i, custodial => true, username => 'bench_p' || i);
        PERFORM chips.user_create('Vendor ' || i, 'v' || i, custodial => true, username => 'bench_v' || i);
        EXECUTE format('GRANT %I TO bench_client', 'bench_p' || i);
    END LOOP;
    FOR i IN 0..15 LOOP
        INSERT INTO public.bench_tallies VALUES (i, pg_temp.open_tally('bench_v' || i, 'bench_p' || i));
        INSERT INTO public.bench_one_payer
        SELECT i, CASE WHEN i = 0 THEN (SELECT b.tally FROM public.bench_tallies b WHERE b.n = 0)
                       ELSE pg_temp.open_tally('bench_v' || i, 'bench_p0') END;
    END LOOP;
END
$$;
-- The baseline: rows as wide as a chit row, no index, no trigger.
CREATE TABLE public.raw_chits (LIKE chips.chits);
CREATE SEQUENCE public.raw_seq;
GRANT USAGE ON SEQUENCE public.raw_seq TO bench_client;
GRANT INSERT ON public.raw_chits TO bench_client;
SQL
"${PSQL[@]}" -d bench -c "SET ROLE bench_p0" -c "SELECT chips.pay(tally, 1) FROM public.bench_tallies WHERE n = 0" >/dev/null

WORK=$(mktemp -d)
# Each client takes its payer's role once, in its first transaction (pgbench -D first=1).
cat > "$WORK/api.sql" <<'SQL'
\set n :client_id % 16
\if :first
\set first 0
SET ROLE bench_p:n;
\endif
SELECT chips.pay(tally, 1, 'bench') FROM public.bench_tallies WHERE n = :n;
SQL
cat > "$WORK/one_payer.sql" <<'SQL'
\set n :client_id % 16
\if :first
\set first 0
SET ROLE bench_p0;
\endif
SELECT chips.pay(tally, 1, 'bench') FROM public.bench_one_payer WHERE n = :n;
SQL
cat > "$WORK/raw.sql" <<'SQL'
INSERT INTO public.raw_chits (id, tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
  chit_date, signature, status, value, chain_idx, chain_prev, chain_hash, created, updated)
VALUES (nextval('public.raw_seq'), :client_id + 1, gen_random_uuid(), 'tran', 'foil', 1, NULL, 'bench', now(),
  'q3HlVwQ0L6ZpRG0K7tXAAm0nVXm2ZQ2a5C8fB0l9qkUJiyAqiHPmvKD8ZZu3g9Q7sN0M6mX4wqkRDTgEcv7VCA', 'good', -1,
  :client_id + 1, decode('7f6d3a1c5b9e2f4a8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b', 'hex'),
  decode('1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b', 'hex'), now(), now());
SQL

lsn() { "${PSQL[@]}" -d bench -At -c "SELECT pg_current_wal_lsn()"; }
WAL_API=(); WAL_RAW=()
run() { # script clients -> tps (and the WAL bytes per transaction, in WAL_<script>)
    local out before after tps
    before=$(lsn)
    out=$(pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_client -D first=1 -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" \
        -T "$DURATION" -f "$WORK/$1.sql" bench 2>&1) || { echo "$out" >&2; return 1; }
    after=$(lsn)
    tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
    echo "$tps $("${PSQL[@]}" -d bench -At -c "SELECT round(pg_wal_lsn_diff('$after', '$before') \
        / $(echo "$out" | awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]; exit}'))")"
}

say "pgbench: ${DURATION}s per run, median of $REPS runs, alternating API and raw runs"
printf '%-8s %14s %14s %8s %14s %14s\n' clients api_tps raw_tps ratio api_wal_B/tx raw_wal_B/tx
for c in $CLIENTS; do
    api=(); raw=(); wapi=(); wraw=()
    for _ in $(seq "$REPS"); do
        read -r t w < <(run api "$c"); api+=("$t"); wapi+=("$w")
        read -r t w < <(run raw "$c"); raw+=("$t"); wraw+=("$w")
    done
    a=$(printf '%s\n' "${api[@]}" | median)
    r=$(printf '%s\n' "${raw[@]}" | median)
    printf '%-8s %14.1f %14.1f %8.3f %14.0f %14.0f\n' "$c" "$a" "$r" "$(echo "$a / $r" | bc -l)" \
        "$(printf '%s\n' "${wapi[@]}" | median)" "$(printf '%s\n' "${wraw[@]}" | median)"
done
# The contended case, at the last client count and against its raw figure: the clients all act
# for one payer, paying on its 16 tallies.
one=()
for _ in $(seq "$REPS"); do read -r t _ < <(run one_payer "$c"); one+=("$t"); done
o=$(printf '%s\n' "${one[@]}" | median)
printf '%-8s %14.1f %14.1f %8.3f   (%s clients, one payer)\n' "$c/1" "$o" "$r" "$(echo "$o / $r" | bc -l)" "$c"
# The payments left every chain and balance sound.
bad=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM (SELECT tally FROM public.bench_tallies UNION SELECT tally FROM public.bench_one_payer) b, chips.tally_audit(b.tally) a WHERE NOT a.ok")
chits=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM chips.chits")
echo "chit rows written: $chits; audit failures: $bad"
rm -rf "$WORK"
[ "$bad" = 0 ]
