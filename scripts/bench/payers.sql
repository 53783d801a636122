-- Payers for latency benchmarks, over tallies loaded directly (placeholder signatures): each
-- row of public.bench_candidates (tally, creditor; one tally per creditor, as many as there are
-- to be payers) gets one. The creditor becomes a custodial user (the database signs for it) with
-- a role a benchmark client (bench_client) can take, paying back on that tally, whose limits are
-- made large both ways so it never runs out; its key joins the certificates of the tallies it
-- holds (whatever else they say, such as a partner's address at another site, stays). public.bench_pay (n, tally, creditor, who) lists
-- them; public.bench_open keeps the loaded balances, which no chit explains, so that what moved
-- since can be checked against the chits written since.
-- Used by scripts/lib.sh (network_payers) and sidecar/examples/bench_rounds.rs.
DO $$ BEGIN CREATE ROLE bench_client LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE public.bench_pay AS
SELECT row_number() OVER () - 1 AS n, y.tally, y.creditor,
       (SELECT u.username FROM chips.users u WHERE u.ent = y.creditor) AS who
FROM public.bench_candidates y;
CREATE TABLE public.bench_open AS
SELECT t.id, t.net_good, (SELECT coalesce(max(c.id), 0) FROM chips.chits c) AS after
FROM chips.tallies t WHERE t.tally_uuid IN (SELECT tally FROM public.bench_pay);
GRANT SELECT ON public.bench_pay TO PUBLIC;
INSERT INTO chips.custody SELECT creditor, chips.new_seed() FROM public.bench_pay;
UPDATE chips.users u SET pubkey = chips.seed_public(k.seed) FROM chips.custody k WHERE k.ent = u.ent;
SET session_replication_role = replica;
UPDATE chips.tallies t SET hold_cert = t.hold_cert || jsonb_build_object('public', u.pubkey)
FROM chips.users u WHERE u.ent = t.ent AND u.pubkey IS NOT NULL;
UPDATE chips.tallies t SET part_cert = t.part_cert || jsonb_build_object('public', u.pubkey)
FROM chips.users u WHERE u.ent = t.part_ent AND u.pubkey IS NOT NULL;
UPDATE chips.tallies t SET part_terms = '{"limit": 1000000000000000}', hold_terms = '{"limit": 1000000000000000}'
WHERE t.tally_uuid IN (SELECT tally FROM public.bench_pay);
RESET session_replication_role;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT u.username FROM chips.users u JOIN public.bench_pay b ON b.creditor = u.ent LOOP
        -- roles are the cluster's: an earlier run's payer may have the same name
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = r.username) THEN
            EXECUTE format('CREATE ROLE %I', r.username);
        END IF;
        EXECUTE format('GRANT chips_user TO %I', r.username);
        EXECUTE format('GRANT %I TO bench_client', r.username);
    END LOOP;
END
$$;
