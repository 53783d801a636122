#!/usr/bin/env bash
# Chit throughput through the SQL API (chips.pay: a custodial payment, signed and verified in
# the database, balance, chain and both tally halves updated) against, in the same run on the
# same private cluster, with pgbench:
#   - ledger: pgledger's pgledger_create_transfer (a double-entry ledger in plain PL/pgSQL, read
#     at run time from ../shared/anchors/pgledger, never copied here; ANCHORS=<dir> to point
#     elsewhere): client n transfers 1 from account n mod 16 to account n mod 16 + 16;
#   - tpcb: pgbench's built-in tpcb-like (a bank transfer), scale 16;
#   - raw: plain INSERTs of rows as wide as a chit row into an unindexed table.
# Alternating runs; prints the median transactions per second over REPS runs for 1, 4 and 16
# clients, chips.pay's ratio to each, and the WAL bytes per transaction of each.
#
# Client n acts for payer n mod 16 and pays on that payer's tally with vendor n mod 16: as
# many people paying at once. At the last client count, the batch API (chips.pay_batch) against
# chips.pay's single calls there: each client's payer pays 100 staff in one call, custodial
# items each on its own, all or nothing, and documents the payer signed beforehand (outside the
# measured runs; verified in the database like any client's: the script checks every one was
# paid), all to the same 100 staff; and custodial items to 100 staff of each payer's own. A last line measures the contended case: the clients (as many as
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

say "setting up: 16 payers and 16 vendors (custodial keys), 31 open tallies; 100 staff paid by every payer, and 100 of its own"
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
-- A payroll for the batch API: each payer pays 100 staff, one tally each.
CREATE TABLE public.bench_batch (n int, k int, tally uuid NOT NULL, PRIMARY KEY (n, k));
GRANT SELECT ON public.bench_batch TO PUBLIC;
DO $$
BEGIN
    FOR k IN 0..99 LOOP
        PERFORM chips.user_create('Staff ' || k, 's' || k, custodial => true, username => 'bench_s' || k);
    END LOOP;
    FOR i IN 0..15 LOOP
        FOR k IN 0..99 LOOP
            INSERT INTO public.bench_batch VALUES (i, k, pg_temp.open_tally('bench_s' || k, 'bench_p' || i));
        END LOOP;
    END LOOP;
END
$$;
-- The same payrolls paid to staff of each payer's own (16 x 100 staff): no two payers' batches
-- share a payee, so no two wait for each other's commit to number a payee's events.
CREATE TABLE public.bench_batch_own (n int, k int, tally uuid NOT NULL, PRIMARY KEY (n, k));
GRANT SELECT ON public.bench_batch_own TO PUBLIC;
DO $$
BEGIN
    FOR i IN 0..15 LOOP
        FOR k IN 0..99 LOOP
            PERFORM chips.user_create('Staff ' || i || '.' || k, 'o' || i || '_' || k, custodial => true,
                                      username => 'bench_o' || i || '_' || k);
            INSERT INTO public.bench_batch_own
            VALUES (i, k, pg_temp.open_tally('bench_o' || i || '_' || k, 'bench_p' || i));
        END LOOP;
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

# The same payrolls as documents their payers signed beforehand, as a client holding its own
# key signs them outside the database: SIGNED batches of 100 for every payer (each used once:
# a document's uuid pays once), dated now (the database takes a document dated within an hour).
SIGNED_PER_REP=$(( DURATION * 15 ))
SIGNED=$(( REPS * SIGNED_PER_REP ))
say "signing $SIGNED payrolls of 100 documents for each of the 16 payers"
"${PSQL[@]}" -d bench <<SQL >/dev/null
CREATE TABLE public.bench_docs (n int, k int, i int, doc jsonb, sig text);
GRANT INSERT ON public.bench_docs TO PUBLIC;
DO \$\$
BEGIN
    FOR p IN 0..15 LOOP
        EXECUTE format('SET ROLE %I', 'bench_p' || p);
        INSERT INTO public.bench_docs (n, k, i, doc)
        SELECT p, j, b.k, chips.chit_json(b.tally, 1, 'signed')
        FROM public.bench_batch b, generate_series(1, $SIGNED) j WHERE b.n = p;
        RESET ROLE;
    END LOOP;
END
\$\$;
UPDATE public.bench_docs d SET sig = chips.seed_sign(c.seed, d.doc)
FROM chips.users u JOIN chips.custody c ON c.ent = u.ent WHERE u.cuid = 'p' || d.n;
CREATE TABLE public.bench_signed AS
    SELECT n, k, jsonb_agg(jsonb_build_object('doc', doc, 'signature', sig) ORDER BY i) AS items
    FROM public.bench_docs GROUP BY n, k;
ALTER TABLE public.bench_signed ADD PRIMARY KEY (n, k);
GRANT SELECT ON public.bench_signed TO PUBLIC;
DROP TABLE public.bench_docs;
SQL

ANCHORS=${ANCHORS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors}
LEDGER=$ANCHORS/pgledger
if [ ! -f "$LEDGER/pgledger.sql" ]; then
    echo "pgledger not found at $LEDGER (set ANCHORS to the folder that holds it)" >&2
    exit 1
fi
say "anchors: pgledger from $LEDGER (32 accounts), pgbench tpcb-like at scale 16"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE ledger" -c "CREATE DATABASE tpcb"
"${PSQL[@]}" -d ledger -f "$LEDGER/vendor/scoville-pgsql-ulid/ulid-to-uuid.sql" \
    -f "$LEDGER/vendor/scoville-pgsql-ulid/uuid-to-ulid.sql" -f "$LEDGER/pgledger.sql" >/dev/null
"${PSQL[@]}" -d ledger <<'SQL' >/dev/null
CREATE TABLE public.bench_accounts (n int PRIMARY KEY, id text NOT NULL);
INSERT INTO public.bench_accounts
SELECT i, (SELECT a.id FROM pgledger_create_account('account ' || i, 'CHIP') a) FROM generate_series(0, 31) i;
SQL
pgbench -q -i -s 16 -h 127.0.0.1 -p "$PORT" -U postgres tpcb >/dev/null 2>&1

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
# A batch: the client's payer pays 100 staff in one call (chips.pay_batch, 100 tallies), each
# item on its own (a subtransaction each) or all or nothing; to the staff every payer pays
# (bench_batch) or to its own (bench_batch_own).
batch_script() { # NAME TABLE ALL_OR_NOTHING
    cat > "$WORK/$1.sql" <<SQL
\\set n :client_id % 16
\\if :first
\\set first 0
SET ROLE bench_p:n;
\\endif
SELECT count(*) FROM chips.pay_batch((SELECT jsonb_agg(jsonb_build_object('tally', b.tally, 'units', 1, 'memo', 'pay'))
    FROM public.$2 b WHERE b.n = :n), $3);
SQL
}
batch_script batch_false bench_batch false
batch_script batch_true bench_batch true
batch_script batch_own bench_batch_own false
# A signed batch: the client's payer sends its next payroll of signed documents (k counts this
# client's batches from the run's offset, -D k=...).
cat > "$WORK/batch_signed.sql" <<'SQL'
\set n :client_id % 16
\if :first
\set first 0
SET ROLE bench_p:n;
\endif
\set k :k + 1
SELECT count(*) FROM chips.pay_batch((SELECT s.items FROM public.bench_signed s WHERE s.n = :n AND s.k = :k));
SQL
cat > "$WORK/ledger.sql" <<'SQL'
\set n :client_id % 16
SELECT pgledger_create_transfer(a.id, b.id, 1) FROM public.bench_accounts a, public.bench_accounts b
WHERE a.n = :n AND b.n = :n + 16;
SQL
cat > "$WORK/raw.sql" <<'SQL'
INSERT INTO public.raw_chits (id, tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
  chit_date, signature, status, value, chain_idx, chain_prev, chain_hash, created, updated)
VALUES (nextval('public.raw_seq'), :client_id + 1, gen_random_uuid(), 'tran', 'foil', 1, NULL, 'bench', now(),
  'q3HlVwQ0L6ZpRG0K7tXAAm0nVXm2ZQ2a5C8fB0l9qkUJiyAqiHPmvKD8ZZu3g9Q7sN0M6mX4wqkRDTgEcv7VCA', 'good', -1,
  :client_id + 1, decode('7f6d3a1c5b9e2f4a8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b', 'hex'),
  decode('1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b', 'hex'), now(), now());
SQL

EXTRA_D=()
lsn() { "${PSQL[@]}" -d bench -At -c "SELECT pg_current_wal_lsn()"; }
run() { # script clients -> tps and the WAL bytes per transaction (the whole cluster's)
    local out before after tps how
    case $1 in
        ledger) how=(-U postgres -f "$WORK/ledger.sql" ledger) ;;
        tpcb) how=(-U postgres -b tpcb-like tpcb) ;;
        *) how=(-U bench_client -D first=1 "${EXTRA_D[@]}" -f "$WORK/$1.sql" bench) ;;
    esac
    before=$(lsn)
    out=$(pgbench -n -h 127.0.0.1 -p "$PORT" -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" -T "$DURATION" "${how[@]}" 2>&1) \
        || { echo "$out" >&2; return 1; }
    after=$(lsn)
    tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
    n=$(echo "$out" | awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]; exit}')
    echo "$tps $("${PSQL[@]}" -d bench -At -c "SELECT round(pg_wal_lsn_diff('$after', '$before') / $n)") $n"
}

say "pgbench: ${DURATION}s per run, median of $REPS runs, alternating api, ledger, tpcb and raw runs"
printf '%-8s %10s %10s %10s %10s %10s %10s %10s %10s %10s %10s\n' clients api_tps ledger_tps tpcb_tps raw_tps \
    api/ledger api/tpcb api/raw api_wal_B ledger_wal tpcb_wal
for c in $CLIENTS; do
    declare -A tps=() wal=()
    for _ in $(seq "$REPS"); do
        for k in api ledger tpcb raw; do
            read -r t w _ < <(run "$k" "$c"); tps[$k]+="$t "; wal[$k]+="$w "
        done
    done
    declare -A m=() mw=()
    for k in api ledger tpcb raw; do
        m[$k]=$(printf '%s\n' ${tps[$k]} | median); mw[$k]=$(printf '%s\n' ${wal[$k]} | median)
    done
    r=${m[raw]}; lg=${m[ledger]}; ap=${m[api]}
    printf '%-8s %10.1f %10.1f %10.1f %10.1f %10.3f %10.3f %10.3f %10.0f %10.0f %10.0f\n' "$c" \
        "${m[api]}" "${m[ledger]}" "${m[tpcb]}" "${m[raw]}" \
        "$(echo "${m[api]} / ${m[ledger]}" | bc -l)" "$(echo "${m[api]} / ${m[tpcb]}" | bc -l)" \
        "$(echo "${m[api]} / ${m[raw]}" | bc -l)" "${mw[api]}" "${mw[ledger]}" "${mw[tpcb]}"
    echo "         (raw INSERT: ${mw[raw]} B of WAL a transaction)"
    unset tps wal m mw
done
# The batch API at the last client count, against chips.pay's single calls there: payments a
# second (100 to a call, on 100 tallies), alternating the two modes.
declare -A bt=()
for rep in $(seq "$REPS"); do
    for mode in false true own; do read -r t _ _ < <(run "batch_$mode" "$c"); bt[$mode]+="$t "; done
    EXTRA_D=(-D "k=$(( (rep - 1) * SIGNED_PER_REP ))")
    read -r t _ sent < <(run batch_signed "$c"); bt[signed]+="$t "; signed_sent=$(( ${signed_sent:-0} + sent ))
    EXTRA_D=()
done
for mode in false true signed own; do
    b=$(printf '%s\n' ${bt[$mode]} | median)
    printf '%-8s %10.1f payments/s in batches of 100 tallies (%s): %.2f x chips.pay at %s clients\n' "$c" \
        "$(echo "$b * 100" | bc -l)" "$(case $mode in true) echo "all or nothing" ;; false) echo "each item on its own" ;;
                                         signed) echo "documents their payers signed, each on its own" ;;
                                         *) echo "each on its own, to staff of each payer's own" ;; esac)" \
        "$(echo "$b * 100 / $ap" | bc -l)" "$c"
done
# The contended case, at the last client count and against its raw figure: the clients all act
# for one payer, paying on its 16 tallies.
one=()
for _ in $(seq "$REPS"); do read -r t _ _ < <(run one_payer "$c"); one+=("$t"); done
o=$(printf '%s\n' "${one[@]}" | median)
printf '%-8s %10.1f   (%s clients, one payer: %.3f of the ledger at %s clients, %.3f of raw)\n' "$c/1" "$o" "$c" \
    "$(echo "$o / $lg" | bc -l)" "$c" "$(echo "$o / $r" | bc -l)"
# Every signed payroll sent was paid whole (none refused: a refused one would be measured as
# something else).
paid=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) / 2 FROM chips.chits WHERE memo = 'signed'")
echo "signed documents paid: $paid of $(( signed_sent * 100 )) sent"
[ "$paid" = $(( signed_sent * 100 )) ]
# The payments left every chain and balance sound.
bad=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM (SELECT tally FROM public.bench_tallies UNION SELECT tally FROM public.bench_one_payer UNION SELECT tally FROM public.bench_batch UNION SELECT tally FROM public.bench_batch_own) b, chips.tally_audit(b.tally) a WHERE NOT a.ok")
chits=$("${PSQL[@]}" -d bench -At -c "SELECT count(*) FROM chips.chits")
echo "chit rows written: $chits; audit failures: $bad"
rm -rf "$WORK"
[ "$bad" = 0 ]
