#!/usr/bin/env bash
# Where a payment's WAL goes: on a private cluster, one session makes N payments with
# chips.pay (a custodial payer and its vendor, both at this site: both halves of the tally
# written), then pg_waldump --stats=record reads exactly the WAL those payments wrote. Prints
# the WAL bytes and records per payment, and per payment the bytes of each kind of record
# (heap inserts, HOT updates, index inserts, commits, full-page images, ...), largest first.
# Against the same for pgledger's transfer (from ../shared/anchors/pgledger, ANCHORS=<dir>), one
# session, N transfers, in the same run; and the CPU time each session's backend spent a
# transaction (one client: what bounds the rate when the WAL device does not; REPS=3 repeats
# both, alternating). docs/benchmarks.md says how to read it.
#
#   bash scripts/bench-wal.sh            # N=2000
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${N:-2000}
ANCHORS=${ANCHORS:-$(cd "$REPO/.." && pwd)/shared/anchors}
LEDGER=$ANCHORS/pgledger
[ -f "$LEDGER/pgledger.sql" ] || { echo "pgledger not found at $LEDGER (set ANCHORS to the folder that holds it)" >&2; exit 1; }
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-wal
PORT=${CHIPS_BENCH_PORT:-54355}
# no checkpoint in the measured range (a full-page image per page touched first after one)
CLUSTER_OPTS="-c checkpoint_timeout=1h -c max_wal_size=10GB" cluster_fresh "$DIR" "$PORT"
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
"${PSQL[@]}" -d bench <<'SQL' >/dev/null
CREATE EXTENSION chips;
SELECT chips.agent_register('kHgBc9ZaNUEG1QKJRV3uM5yyZHv8yiVtGzxPwZJ6SLo', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Benchmark contract"}');
SELECT chips.user_create('Payer', cuid => 'payer', custodial => true, username => 'bench_payer');
SELECT chips.user_create('Vendor', cuid => 'vendor', custodial => true, username => 'bench_vendor');
SET ROLE bench_vendor;
SELECT chips.tally_create('stock', hold_terms => '{"limit": 1000000000000000}') AS t \gset
SELECT chips.ticket_create(:'t') AS ticket \gset
SET ROLE bench_payer;
SELECT chips.ticket_redeem(:'ticket');
SET ROLE bench_vendor;
SELECT chips.tally_offer(:'t');
SET ROLE bench_payer;
SELECT chips.tally_accept(:'t');
RESET ROLE;
CREATE TABLE public.bench_t AS SELECT :'t'::uuid AS t;
GRANT SELECT ON public.bench_t TO PUBLIC;
SQL
"${PSQL[@]}" -d postgres -c "CREATE DATABASE ledger" >/dev/null
"${PSQL[@]}" -d ledger -f "$LEDGER/vendor/scoville-pgsql-ulid/ulid-to-uuid.sql" \
    -f "$LEDGER/vendor/scoville-pgsql-ulid/uuid-to-ulid.sql" -f "$LEDGER/pgledger.sql" >/dev/null
"${PSQL[@]}" -d ledger -c "CREATE TABLE public.bench_acc AS
    SELECT (SELECT x.id FROM pgledger_create_account('a', 'CHIP') x) AS a,
           (SELECT x.id FROM pgledger_create_account('b', 'CHIP') x) AS b" >/dev/null

TICK=$(getconf CLK_TCK)
CPU="SELECT (string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' '))[12]::bigint
          + (string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' '))[13]::bigint;"
# EXPR N times in one session acting as ROLE (after a warm-up of 100), one transaction each as
# clients make them, and the WAL it wrote
measure() { # NAME DB ROLE EXPR
    local name=$1 db=$2 role=$3 expr=$4 start end bytes
    "${PSQL[@]}" -d "$db" -c "SET ROLE $role" -c "DO \$\$ BEGIN FOR i IN 1..100 LOOP PERFORM $expr; END LOOP; END \$\$" >/dev/null
    "${PSQL[@]}" -d "$db" -c "CHECKPOINT" >/dev/null
    start=$("${PSQL[@]}" -d "$db" -At -c "SELECT pg_current_wal_insert_lsn()")
    # the session's backend reads its own CPU time (user + system, in clock ticks) before and after
    ticks=$({ echo "$CPU"; echo "SET ROLE $role;"; for _ in $(seq "$N"); do echo "SELECT $expr;"; done
              echo "RESET ROLE;"; echo "$CPU"; } | "${PSQL[@]}" -d "$db" -At | grep -E '^[0-9]+$' | tr '\n' ' ')
    end=$("${PSQL[@]}" -d "$db" -At -c "SELECT pg_current_wal_insert_lsn()")
    bytes=$("${PSQL[@]}" -d "$db" -At -c "SELECT pg_wal_lsn_diff('$end', '$start')")
    echo "$name: $N transactions, $(echo "scale=1; $bytes / $N" | bc) WAL bytes each (from $start to $end)"
    read -r t0 t1 <<<"$ticks"
    cpu=$(echo "scale=1; ($t1 - $t0) * 1000000 / $TICK / $N" | bc)
    CPUS[$name]+="$cpu "
    echo "  $cpu us of its backend's CPU time (user and system) a transaction"
    as_postgres "$PG_BIN/pg_waldump" -p "$DIR/data/pg_wal" -s "$start" -e "$end" --stats=record 2>/dev/null |
        sed -e 's/([^)]*)//g' |
        awk -v n="$N" '$1 ~ /\// && NF >= 5 {
            printf "  %-28s %8.2f records %9.1f bytes (%8.1f of them full-page images) a transaction\n",
                   $1, $2 / n, $5 / n, $4 / n
        }' | sort -k4 -rn | head -15
}
REPS=${REPS:-1}
declare -A CPUS
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
say "WAL of $N payments (chips.pay) and $N transfers (pgledger), one session each, $REPS time(s)"
for _ in $(seq "$REPS"); do
    measure "chips.pay" bench bench_payer "chips.pay((SELECT t FROM public.bench_t), 1)"
    measure "pgledger transfer" ledger postgres "pgledger_create_transfer((SELECT a FROM public.bench_acc), (SELECT b FROM public.bench_acc), 1)"
done
pay=$(median <<<"${CPUS[chips.pay]}")
led=$(median <<<"${CPUS[pgledger transfer]}")
echo "backend CPU a transaction, median of $REPS: chips.pay $pay us (${CPUS[chips.pay]% }), pgledger transfer $led us (${CPUS[pgledger transfer]% }): a transfer takes $(echo "scale=3; $led / $pay" | bc) of a payment's CPU time"
