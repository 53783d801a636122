#!/usr/bin/env bash
# Continuous clearing under load: an obligation network (MTCS network 03 by default) loaded
# into a site and cleared by a full pass, then payments flowing (pgbench, PAYERS clients, each a
# custodial creditor paying back 1 unit on its tally) for DURATION seconds, REPS times with
# continuous clearing off and on, alternating. "On" is what chipsd does: one session calling
# chips.clearing_continuous() every TICK_MS. While it is on, three custodial users in a triangle
# pay round it one after the other, the last payment closing the circle, and the time from that
# payment's commit until its tally carries the lift chit is measured (CLOSES circles per run).
# Prints the payment rate off and on (medians), their ratio, and the closing latency p50/p99.
#
#   bash scripts/bench-continuous.sh [FILE.csv]   # DURATION=20 REPS=3 PAYERS=8 TICK_MS=100 CLOSES=20
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO"
DATA=${CHIPS_DATA:-$REPO/../shared/data}
DURATION=${DURATION:-20}
REPS=${REPS:-3}
PAYERS=${PAYERS:-8}
TICK_MS=${TICK_MS:-100}
CLOSES=${CLOSES:-20}
PORT=${CHIPS_BENCH_PORT:-54375}
ensure_deps
install_extension --release
DIR=$(cluster_base)/bench-continuous
CLUSTER_OPTS=${CLUSTER_OPTS:-"-c shared_buffers=2GB"} cluster_fresh "$DIR" "$PORT"
WORK=$(mktemp -d)
chmod 755 "$WORK"
ticker=
trap '[ -n "$ticker" ] && kill "$ticker" 2>/dev/null; cluster_stop "$DIR"; rm -rf "$DIR" "$WORK"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

CSV=${1:-}
if [ -z "$CSV" ]; then
    command -v unzip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
    unzip -q -o "$DATA/mtcs-synthetic/synthetic-networks.zip" -d "$WORK"
    CSV=$WORK/synthethic_network_03.csv
fi
say "loading $(basename "$CSV") and clearing it with a full pass"
load_network "$CSV"
"${PSQL[@]}" -d bench -c "CALL chips.clearing_run()" >/dev/null
# Payers: creditors of tallies still owed something after the pass.
network_payers "$PAYERS" "SELECT DISTINCT ON (s.ent) s.tally_uuid AS tally, s.ent AS creditor
                          FROM chips.tallies s WHERE s.side = 'stock' AND s.net_good > 1000
                          ORDER BY s.ent, random()"
# The triangle: Ann, Bob and Cat (custodial), each a vendor to the next; a payment round it
# leaves a circle the next tick lifts.
"${PSQL[@]}" -d bench <<'SQL' >/dev/null
SELECT chips.agent_register('kHgBc9ZaNUEG1QKJRV3uM5yyZHv8yiVtGzxPwZJ6SLo', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Benchmark contract"}');
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
SELECT chips.user_create(n, lower(n), custodial => true, username => 'bench_' || lower(n),
                         agent => 'kHgBc9ZaNUEG1QKJRV3uM5yyZHv8yiVtGzxPwZJ6SLo')
FROM unnest(ARRAY['Ann', 'Bob', 'Cat']) n;
CREATE TABLE public.triangle (payer name, tally uuid);
INSERT INTO public.triangle VALUES
    ('bench_ann', pg_temp.open_tally('bench_bob', 'bench_ann')),
    ('bench_bob', pg_temp.open_tally('bench_cat', 'bench_bob')),
    ('bench_cat', pg_temp.open_tally('bench_ann', 'bench_cat'));
CREATE TABLE public.closing (ms double precision);
-- n times: Ann pays Bob, Bob pays Cat, Cat pays Ann (each committed), then wait until Cat's
-- tally carries a lift chit newer than her payment.
CREATE PROCEDURE public.close_circles(n integer) LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_half bigint;
    v_after bigint;
    t0 timestamptz;
BEGIN
    SELECT x.id INTO v_half FROM chips.tallies x JOIN public.triangle g ON g.tally = x.tally_uuid
    WHERE g.payer = 'bench_cat' AND x.side = 'foil';
    FOR i IN 1..n LOOP
        FOR r IN SELECT * FROM public.triangle ORDER BY payer LOOP
            EXECUTE format('SET ROLE %I', r.payer);
            PERFORM chips.pay(r.tally, 1000, 'round');
            RESET ROLE;
            v_after := (SELECT max(c.id) FROM chips.chits c);
            t0 := clock_timestamp();
            COMMIT;
        END LOOP;
        LOOP
            EXIT WHEN EXISTS (SELECT 1 FROM chips.chits c
                              WHERE c.tally_id = v_half AND c.chit_type = 'lift' AND c.id > v_after);
            PERFORM pg_sleep(0.02);
        END LOOP;
        INSERT INTO public.closing VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
        COMMIT;
        PERFORM pg_sleep(0.25);
    END LOOP;
END
$$;
SELECT chips.clearing_configure(enabled => true, continuous => true, every => '1 day');
SQL

tps() { # seconds -> payments per second
    pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_client -D first=1 -c "$PAYERS" -j 2 -T "$1" \
        -f "$WORK/pay.sql" bench 2>&1 | awk '/^tps/ {print $3; exit}'
}
start_ticker() {
    # one session, as chipsd's timer keeps (the graph stays in it between ticks)
    echo "SELECT * FROM chips.clearing_continuous() \\watch $(echo "scale=3; $TICK_MS / 1000" | bc)" |
        "${PSQL[@]}" -d bench >/dev/null 2>&1 &
    ticker=$!
    sleep 8     # its first tick reads the whole site
}
stop_ticker() { kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true; ticker=; }

say "payments: ${DURATION}s per run, $REPS runs each, continuous clearing off and on"
off=(); on=()
for r in $(seq "$REPS"); do
    off+=("$(tps "$DURATION")")
    start_ticker
    "${PSQL[@]}" -d bench -c "CALL public.close_circles($CLOSES)" >/dev/null &
    closer=$!
    on+=("$(tps "$DURATION")")
    wait "$closer"
    stop_ticker
    echo "run $r: off_tps=${off[-1]} on_tps=${on[-1]}"
done
o=$(printf '%s\n' "${off[@]}" | median); n=$(printf '%s\n' "${on[@]}" | median)
read -r c50 c99 cn <<<"$("${PSQL[@]}" -d bench -At -F ' ' -c "
    SELECT round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), count(*)
    FROM public.closing")"
echo "payments per second: off=$o on=$n on_over_off=$(echo "scale=3; $n / $o" | bc)"
echo "circles closed by a payment, lifted by continuous clearing (tick ${TICK_MS} ms): n=$cn p50_ms=$c50 p99_ms=$c99"
bad=$(payers_unsound)
echo "chain or balance failures on the payers' tallies: $bad"
[ "$bad" = 0 ]
