-- chips 0.1.0 -> 0.2.0 (ALTER EXTENSION chips UPDATE). Run by PostgreSQL inside the update's
-- transaction: all of it or nothing. Once 0.2.0 is released this file is never edited; later
-- changes go in chips--0.2.0--<next>.sql. tests/tests/upgrade.rs checks that 0.1.0 updated
-- with these scripts has exactly the schema of a fresh install (docs/operations.md, "Upgrading").
\echo Use "ALTER EXTENSION chips UPDATE" to load this file. \quit

-- outbox_claim(..., skip): chipsd claims no messages for the peers it is sending to or backing
-- off from (one send task per peer; docs/architecture.md). A new argument is a new signature:
-- the old function goes, with its grant.
DROP FUNCTION chips.outbox_claim(integer, interval, text[]);
-- Claim undelivered outbox messages for delivery: each is leased to the caller for `lease`, so
-- several sidecars on one database never send the same message at the same time. Messages to
-- the peers in `skip` are left where they are (chipsd skips a peer it is sending to already,
-- whose later messages must wait for the earlier ones, and a peer it is backing off from): a
-- peer that is slow or down never holds up the messages to the others.
CREATE FUNCTION chips.outbox_claim(max_messages integer DEFAULT 100,
                                   lease interval DEFAULT '30 seconds',
                                   agents text[] DEFAULT NULL,
                                   skip text[] DEFAULT NULL)
RETURNS TABLE (id bigint, msg_id uuid, from_agent text, to_agent text, host text, port integer,
               msg jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF max_messages IS NULL OR max_messages < 1 OR lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'max_messages must be >= 1 and lease positive' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT o.id FROM chips.outbox o
        WHERE o.delivered IS NULL
          AND (o.claimed_until IS NULL OR o.claimed_until < pg_catalog.now())
          AND (outbox_claim.agents IS NULL OR o.from_agent = ANY (outbox_claim.agents))
          AND NOT coalesce(o.to_agent = ANY (outbox_claim.skip), false)
        ORDER BY o.id
        LIMIT max_messages
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE chips.outbox o
        SET claimed_until = pg_catalog.now() + lease, attempts = o.attempts + 1
        FROM c WHERE o.id = c.id
        RETURNING o.id, o.msg_id, o.from_agent, o.to_agent, o.msg
    )
    SELECT u.id, u.msg_id, u.from_agent, u.to_agent, a.host, a.port, u.msg
    FROM u LEFT JOIN chips.agents a ON a.agent = u.to_agent
    ORDER BY u.id;
END
$$;
REVOKE EXECUTE ON FUNCTION chips.outbox_claim(integer, interval, text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chips.outbox_claim(integer, interval, text[], text[]) TO chips_agent;

-- Route checks (chips.route_check, route_check_result): a user asks whether a route to a CHIP
-- address carries an amount, without paying; the query's row at the asking site names the user.
ALTER TABLE chips.lift_routes
    ADD COLUMN checker text REFERENCES chips.users ON DELETE CASCADE,
    ADD CHECK (checker IS NULL OR (dir = 'in' AND tally IS NULL AND lift IS NULL));

CREATE FUNCTION chips."_route_widest"(
	"payers" TEXT[], /* Vec < Option < String > > */
	"receivers" TEXT[], /* Vec < Option < String > > */
	"capacities" bigint[], /* Vec < Option < i64 > > */
	"from" TEXT, /* & str */
	"to" TEXT /* & str */
) RETURNS bigint /* Option < i64 > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'route_widest_wrapper';

-- Answers a query upstream (over the tally it came in on), or, asked here, starts the lift.
CREATE OR REPLACE FUNCTION chips._route_answer(p_in bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.lift_routes;
    o record;
    g record;
    l chips.lifts;
    v_whole bigint;
    v_waiting boolean;
    v_in_holder text;
BEGIN
    SELECT * INTO r FROM chips.lift_routes x WHERE x.id = p_in FOR UPDATE;
    IF r.status <> 'pend' THEN
        RETURN;
    END IF;
    v_whole := greatest(r.units, coalesce(r.want, r.units));
    -- (each way a query came in on waits only for the exits it asked itself: a query that comes
    -- back to a site over another tally never waits for itself)
    v_waiting := r.expires > pg_catalog.now()
                 AND EXISTS (SELECT 1 FROM chips.lift_routes x WHERE x.query = r.query AND x.dir = 'out'
                             AND x.status = 'pend' AND x.asker = r.id);
    IF r.checker IS NOT NULL THEN
        -- a route check: found once a way carries the units, none once nothing is to come
        IF (chips._route_check_ways(r)).carries THEN
            UPDATE chips.lift_routes x SET status = 'found' WHERE x.id = r.id;
        ELSIF NOT v_waiting THEN
            UPDATE chips.lift_routes x SET status = 'none' WHERE x.id = r.id;
        END IF;
        RETURN;
    END IF;
    IF r.tally IS NULL THEN
        -- asked here: the lift starts on a way that carries all of it; a payment no one way
        -- carries waits for every exit's answer (or the query's end) and is split over them
        SELECT * INTO l FROM chips.lifts x WHERE x.lift_uuid = r.lift AND x.role = 'origin';
        IF l.status = 'seek' AND chips._lift_start(l.id, NOT v_waiting) THEN
            UPDATE chips.lift_routes x SET status = 'found' WHERE x.id = r.id;
        ELSIF NOT v_waiting THEN
            UPDATE chips.lift_routes x SET status = 'none' WHERE x.id = r.id;
            IF l.status = 'seek' AND NOT chips._lift_again(l.id) THEN
                PERFORM chips._lift_settle(l.id, 'void',
                    CASE WHEN EXISTS (SELECT 1 FROM chips.lift_routes x WHERE x.query = r.query AND x.dir = 'out'
                                      AND x.status = 'found')
                         THEN 'no route carries the lift now' ELSE 'no route' END);
            END IF;
        END IF;
        RETURN;
    END IF;
    -- a relay answers at once with a way on that carries all the payment (`want`) from the
    -- tally the query came in on; else, once every exit answered (or the query ran out), with
    -- its widest. What a way carries: the tally in, the way across this site, the tally out
    -- and the rest
    v_in_holder := (SELECT t.ent FROM chips.tallies t WHERE t.tally_uuid = r.tally AND t.part_ent IS NULL);
    FOR o IN SELECT x.tally, x.max, x.hops, t.ent AS holder FROM chips.lift_routes x
             JOIN chips.tallies t ON t.tally_uuid = x.tally AND t.part_ent IS NULL
             WHERE x.query = r.query AND x.dir = 'out' AND x.status = 'found' AND x.tally <> r.tally
               AND x.max >= r.units
             ORDER BY x.max >= v_whole DESC, CASE WHEN x.max >= v_whole THEN x.hops END, x.max DESC, x.id LOOP
        g := chips._route(v_in_holder, o.holder, least(v_whole, o.max), r.tally, o.tally);
        IF NOT g.ok THEN
            g := chips._route(v_in_holder, o.holder, r.units, r.tally, o.tally);
        END IF;
        CONTINUE WHEN NOT g.ok;
        o.max := least(o.max, (SELECT min(c) FROM pg_catalog.unnest(g.caps) c));
        CONTINUE WHEN o.max < r.units;                  -- the tally in or out moved since
        CONTINUE WHEN o.max < v_whole AND v_waiting;    -- a wider one may still come
        UPDATE chips.lift_routes x SET status = 'found', max = o.max, hops = o.hops + 1
        WHERE x.id = r.id RETURNING * INTO r;
        PERFORM chips._route_reply(r);
        RETURN;
    END LOOP;
    IF v_waiting THEN
        RETURN;     -- still waiting for an answer
    END IF;
    UPDATE chips.lift_routes x SET status = 'none' WHERE x.id = r.id RETURNING * INTO r;
    PERFORM chips._route_reply(r);
END
$$;

-- What the ways a route check's query found carry, from the user who asked: each way is the
-- asker's own segment (the widest local route to the exit's holder), the exit tally and what
-- the sites beyond answered. `max`: the most one of them carries; `carries`: whether one
-- carries the units asked.
CREATE FUNCTION chips._route_check_ways(r chips.lift_routes, OUT carries boolean, OUT max bigint)
LANGUAGE sql STABLE
AS $$
    WITH a AS (SELECT * FROM chips._local_arcs()),
         w AS (SELECT least(x.max, CASE WHEN t.ent = r.checker THEN x.max
                                        ELSE chips._route_widest(a.payers, a.receivers, a.caps, r.checker, t.ent) END) AS m
               FROM chips.lift_routes x
               JOIN chips.tallies t ON t.tally_uuid = x.tally AND t.part_ent IS NULL, a
               WHERE x.query = r.query AND x.dir = 'out' AND x.status = 'found')
    SELECT coalesce(pg_catalog.max(w.m), 0) >= r.units, coalesce(pg_catalog.max(w.m), 0) FROM w
$$;

-- Asks, without paying or reserving anything, whether a route from the caller to a CHIP
-- address carries `units`, and the most one route carries. At this site: answered at once (the
-- widest route over its tallies). At another site: a route query like a payment's (the payee
-- blinded), answered as the sites on the way answer; `status` is 'seek' until a way carries the
-- units ('found') or no answer is still to come ('none'); chips.route_check_result(query) reads
-- it later. `max` is the most one way found carries (so far); ways are asked for at least
-- `units`, so ask for 1 to learn the widest. A payment may still split over several ways.
CREATE FUNCTION chips.route_check(address jsonb, units bigint DEFAULT 1,
                                  OUT query text, OUT status text, OUT carries boolean, OUT max bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    v_find jsonb := chips._chad(route_check.address);
    v_payee text := chips._local_ent(v_find);
    s chips.lift_settings := chips._lift_set();
    a record;
    v_in bigint;
BEGIN
    IF route_check.units IS NULL OR route_check.units < 1 OR route_check.units > 1000000000000000 THEN
        RAISE EXCEPTION 'units must be between 1 and 10^15' USING ERRCODE = '22023';
    END IF;
    IF v_payee = v_me.ent THEN
        RAISE EXCEPTION 'a route to yourself' USING ERRCODE = '22023';
    END IF;
    IF v_payee IS NOT NULL THEN
        SELECT * INTO a FROM chips._local_arcs();
        max := coalesce(chips._route_widest(a.payers, a.receivers, a.caps, v_me.ent, v_payee), 0);
        carries := max >= route_check.units;
        status := CASE WHEN carries THEN 'found' ELSE 'none' END;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM chips.agents g WHERE g.agent = v_find->>'agent' AND g.local) THEN
        RAISE EXCEPTION 'no user % at this site', v_find->>'cuid' USING ERRCODE = '42704';
    END IF;
    INSERT INTO chips.lift_routes (query, dir, tally, lift, find, units, want, expires, checker)
    VALUES (pg_catalog.gen_random_uuid()::text, 'in', NULL, NULL, v_find, route_check.units,
            route_check.units, pg_catalog.now() + s.query_life, v_me.ent)
    RETURNING id, lift_routes.query INTO v_in, query;
    PERFORM chips._route_ask(v_in, v_me.ent, s.max_depth);
    SELECT x.status, x.carries, x.max INTO status, carries, max FROM chips.route_check_result(query) x;
END
$$;

-- The state of the caller's route check `query` (chips.route_check): 'seek', 'found' or
-- 'none', whether a way carries the units asked, and the most one way found carries. Kept ten
-- minutes after the query's life; 42704 for a query that is not the caller's.
CREATE FUNCTION chips.route_check_result(query text, OUT status text, OUT carries boolean, OUT max bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    r chips.lift_routes;
    w record;
BEGIN
    SELECT * INTO r FROM chips.lift_routes x
    WHERE x.query = route_check_result.query AND x.dir = 'in' AND x.checker = v_me.ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no route check % of yours', route_check_result.query USING ERRCODE = '42704';
    END IF;
    w := chips._route_check_ways(r);
    carries := w.carries;
    max := w.max;
    -- (a query past its life waits only for the next lift_tick to say so)
    status := CASE WHEN r.status <> 'pend' THEN r.status
                   WHEN r.expires > pg_catalog.now() THEN 'seek' ELSE 'none' END;
END
$$;

REVOKE EXECUTE ON FUNCTION chips."_route_widest"(text[], text[], bigint[], text, text),
    chips._route_check_ways(chips.lift_routes), chips.route_check(jsonb, bigint),
    chips.route_check_result(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chips.route_check(jsonb, bigint), chips.route_check_result(text) TO chips_user;
