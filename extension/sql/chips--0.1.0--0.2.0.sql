-- chips 0.1.0 -> 0.2.0 (ALTER EXTENSION chips UPDATE). Run by PostgreSQL inside the update's
-- transaction: all of it or nothing. Once 0.2.0 is released this file is never edited; later
-- changes go in chips--0.2.0--<next>.sql. tests/tests/upgrade.rs checks that 0.1.0 updated
-- with these scripts has exactly the schema of a fresh install (docs/operations.md, "Upgrading").
\echo Use "ALTER EXTENSION chips UPDATE" to load this file. \quit

-- A claim names the database session that made it (outbox_claim frees a claim whose session
-- has ended).
ALTER TABLE chips.outbox ADD COLUMN claimed_pid integer;

-- outbox_claim(..., skip, lane): chipsd claims no messages for the peers it is sending to or
-- backing off from (one send task per peer and lane; docs/architecture.md). A new argument is a
-- new signature: the old function goes, with its grant.
DROP FUNCTION chips.outbox_claim(integer, interval, text[]);
-- Claim undelivered outbox messages for delivery: each is leased to the caller for `lease`, so
-- several sidecars on one database never send the same message at the same time. A claim is
-- also free once the database session that made it has ended (a sidecar killed, or one that
-- lost its connection): a restarted sidecar goes on at once, not after the lease. Messages to
-- the peers in `skip` are left where they are (chipsd skips a peer it is sending to already,
-- whose later messages must wait for the earlier ones, and a peer it is backing off from): a
-- peer that is slow or down never holds up the messages to the others. With `lane`, only the
-- messages of that lane (core's peer::Lane, by chips._lane: 'route' for route discovery's
-- queries and answers, 'ordered' for the rest), so that a peer's route queries do not wait
-- behind its ordered messages (chipsd sends each lane of a peer by a task of its own).
CREATE FUNCTION chips.outbox_claim(max_messages integer DEFAULT 100,
                                   lease interval DEFAULT '30 seconds',
                                   agents text[] DEFAULT NULL,
                                   skip text[] DEFAULT NULL,
                                   lane text DEFAULT NULL)
RETURNS TABLE (id bigint, msg_id uuid, from_agent text, to_agent text, host text, port integer,
               msg jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF max_messages IS NULL OR max_messages < 1 OR lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'max_messages must be >= 1 and lease positive' USING ERRCODE = '22023';
    END IF;
    IF outbox_claim.lane NOT IN ('ordered', 'route') THEN
        RAISE EXCEPTION 'lane must be ''ordered'' or ''route'', not %', outbox_claim.lane
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT o.id FROM chips.outbox o
        WHERE o.delivered IS NULL
          AND (o.claimed_until IS NULL OR o.claimed_until < pg_catalog.now()
               OR o.claimed_pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = o.claimed_pid))
          AND (outbox_claim.agents IS NULL OR o.from_agent = ANY (outbox_claim.agents))
          AND NOT coalesce(o.to_agent = ANY (outbox_claim.skip), false)
          AND (outbox_claim.lane IS NULL OR chips._lane(o.target, o.action) = outbox_claim.lane)
        ORDER BY o.id
        LIMIT max_messages
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE chips.outbox o
        SET claimed_until = pg_catalog.now() + lease, claimed_pid = pg_catalog.pg_backend_pid(),
            attempts = o.attempts + 1
        FROM c WHERE o.id = c.id
        RETURNING o.id, o.msg_id, o.from_agent, o.to_agent, o.msg
    )
    SELECT u.id, u.msg_id, u.from_agent, u.to_agent, a.host, a.port, u.msg
    FROM u LEFT JOIN chips.agents a ON a.agent = u.to_agent
    ORDER BY u.id;
END
$$;
REVOKE EXECUTE ON FUNCTION chips.outbox_claim(integer, interval, text[], text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chips.outbox_claim(integer, interval, text[], text[], text) TO chips_agent;

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

-- What the ways a route check's query found carry, from the user who asked: each way is the
-- asker's own segment (the widest local route to the exit's holder), the exit tally and what
-- the sites beyond answered. `max`: the most one of them carries; `carries`: whether one
-- carries the units asked.
CREATE FUNCTION chips._route_check_ways(r chips.lift_routes, OUT carries boolean, OUT max bigint)
LANGUAGE sql STABLE
AS $$
    WITH a AS (SELECT * FROM chips._local_arcs()),
         -- (the asker's own segment: none when the asker holds the exit, else the widest way
         -- to its holder, 0 when there is none: LEAST would pass over a NULL)
         w AS (SELECT CASE WHEN t.ent = r.checker THEN x.max
                           ELSE least(x.max, coalesce(chips._route_widest(a.payers, a.receivers, a.caps,
                                                                          r.checker, t.ent), 0)) END AS m
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

-- A prepare that expires more than ten times this site's lift life from now is refused (a relay could
-- otherwise make the sites after it hold their tallies for as long as it likes).
CREATE OR REPLACE FUNCTION chips._recv_lift_prepare(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    o jsonb := msg->'object';
    s chips.lift_settings := chips._lift_set();
    v_step bigint := (extract(epoch FROM s.hop_step) * 1000)::bigint;
    v_min bigint := (extract(epoch FROM s.min_window) * 1000)::bigint;
    v_doc jsonb;
    v_lift uuid;
    v_units bigint;
    v_expires bigint;       -- epoch milliseconds, as on the wire
    v_now bigint;
    v_next bigint;
    v_find jsonb;
    v_target text;
    t chips.tallies;
    l chips.lifts;
    g record;
    v_exit record;
    v_out uuid;
    v_ends boolean := false;
    v_most bigint;
BEGIN
    BEGIN
        v_doc := chips.chit_doc_check(o->'chit');
        v_lift := (o->>'lift')::uuid;
        v_units := (o->>'units')::bigint;
        v_expires := (o->>'expires')::bigint;
        v_find := chips._chad(o->'find');
        PERFORM chips._chad(o->'origin');
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range OR invalid_parameter_value THEN
        RAISE EXCEPTION 'a prepare carries lift, chit, units, expires, origin and find' USING ERRCODE = '22023';
    END;
    IF o->>'kind' NOT IN ('linear', 'circular') OR v_units IS NULL OR v_units < 1
       OR v_expires IS NULL OR chips.b64url_decode(o->>'condition') IS NULL
       OR chips.b64url_decode(o->>'void') IS NULL THEN
        RAISE EXCEPTION 'a prepare carries kind, units >= 1, expires, condition and void' USING ERRCODE = '22023';
    END IF;
    -- the tally is the sender's with the addressee, and the chit is the sender's payment on it
    SELECT * INTO t FROM chips.tallies x
    WHERE x.tally_uuid = (v_doc->>'tally')::uuid AND x.ent = chips._local_ent(msg->'to') AND x.part_ent IS NULL
      AND x.part_cert->'chad'->>'cuid' = msg->'from'->>'cuid' AND x.part_cert->'chad'->>'agent' = msg->'from'->>'agent'
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tally % between % and the sender', v_doc->>'tally', msg->'to'->>'cuid' USING ERRCODE = '42704';
    END IF;
    IF v_doc->>'type' <> 'lift' OR v_doc->>'by' <> chips._other(t.side)
       OR (v_doc->>'units')::bigint IS DISTINCT FROM v_units OR v_doc->'ref'->>'lift' IS DISTINCT FROM v_lift::text THEN
        RAISE EXCEPTION 'the chit of a prepare is the sender''s lift chit for this lift and units' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM chips.lifts x WHERE x.lift_uuid = v_lift AND x.tally_in = t.tally_uuid) THEN
        RETURN 'ignored';       -- this prepare again
    END IF;
    SELECT * INTO l FROM chips.lifts x WHERE x.lift_uuid = v_lift AND x.kind <> 'local' AND x.role = 'origin' FOR UPDATE;
    IF FOUND AND l.kind = 'circular' THEN
        IF o->>'kind' = 'circular' AND l.status = 'pend' AND l.tally_in IS NULL AND l.units = v_units THEN
            -- the circle is closed: the lift came back; reserve from here to where it began
            g := chips._route(t.ent, l.payer, v_units, t.tally_uuid);
            IF NOT g.ok OR pg_catalog.now() >= l.expires
               OR chips._lift_lock(g.tallies, g.payers, g.receivers, v_units) <> 0 THEN
                PERFORM chips._lift_decide(l.id, 'void', 'the circle does not close here');
                RETURN 'void';
            END IF;
            UPDATE chips.lifts x SET tally_in = t.tally_uuid WHERE x.id = l.id RETURNING * INTO l;
            PERFORM chips._lift_write(l, g.tallies, g.payers, g.receivers, v_doc);
            PERFORM chips._lift_decide(l.id, 'good');
            RETURN 'good';
        END IF;
        RETURN chips._lift_reject(msg, 'the circle passes this site already');
    END IF;
    IF EXISTS (SELECT 1 FROM chips.lifts x WHERE x.lift_uuid = v_lift AND (x.kind NOT IN ('linear', 'circular')
                                                                      OR x.kind <> o->>'kind')) THEN
        RETURN chips._lift_reject(msg, 'the lift is of another kind here');
    END IF;
    -- (a linear lift that passes this site again, over another tally, even back at its origin's
    -- site, is a passage of its own here: a row of its own, by the tally it came in on)
    v_now := (extract(epoch FROM pg_catalog.now()) * 1000)::bigint;
    IF chips._lift_next_expiry(v_expires, v_now, 0, v_min) IS NULL THEN
        RETURN chips._lift_reject(msg, 'expired');
    END IF;
    -- a sender that pushes the expiry far out would make this site hold its tallies for the lift
    -- that long: a prepare may expire at most ten times this site's own lift `life` from now
    -- (sites may set different lives; ten times leaves room for that)
    IF v_expires > v_now + 10 * (extract(epoch FROM s.life) * 1000)::bigint THEN
        RETURN chips._lift_reject(msg, 'it expires later than a lift may live here');
    END IF;
    -- plan and lock this site's segment before writing anything
    v_target := chips._local_ent(v_find);
    IF v_target IS NOT NULL AND o->>'kind' = 'linear' THEN
        -- the payee is here: the payer's signature must cover this payment and its locks
        -- (a part of a split payment: the document names the payment, and all of it)
        IF NOT coalesce((o->'pay'->'doc'->>'lift' = v_lift::text
                         AND (o->'pay'->'doc'->>'units')::bigint = v_units)
                        OR (o->'pay'->'doc'->>'lift' = o->>'payment' AND o->>'payment' <> v_lift::text
                            AND (o->'pay'->'doc'->>'units')::bigint >= v_units), false)
           OR o->'pay'->'doc'->>'condition' IS DISTINCT FROM o->>'condition'
           OR o->'pay'->'doc'->>'void' IS DISTINCT FROM o->>'void'
           OR NOT chips._same_party(o->'pay'->'doc'->'to', v_find)
           OR NOT coalesce(chips.verify_signature(o->'pay'->>'key', o->'pay'->'doc', o->'pay'->>'sign'), false) THEN
            RETURN chips._lift_reject(msg, 'the payer''s signature does not cover this payment');
        END IF;
        g := chips._route(t.ent, v_target, v_units, t.tally_uuid);
        v_ends := g.ok AND chips._lift_lock(g.tallies, g.payers, g.receivers, v_units) = 0;
    END IF;
    IF NOT v_ends THEN
        -- a relay: out on the tally the route query found (or the cache knows); at the payee's
        -- site, a way that leaves and comes back over another tally (its query went on here)
        v_next := chips._lift_next_expiry(v_expires, v_now, v_step, v_min);
        FOR v_exit IN
            SELECT e.tally, e.holder, e.pri, e.max, e.hops FROM (
                SELECT x.tally, t2.ent AS holder, 0 AS pri, x.max, x.hops FROM chips.lift_routes x
                JOIN chips.tallies t2 ON t2.tally_uuid = x.tally AND t2.part_ent IS NULL
                WHERE x.query = o->>'query' AND x.dir = 'out' AND x.status = 'found'
                UNION ALL
                SELECT c.tally, t2.ent, 1, c.max, c.hops FROM chips.lift_route_cache c
                JOIN chips.tallies t2 ON t2.tally_uuid = c.tally AND t2.part_ent IS NULL
                WHERE c.find_cuid = v_find->>'cuid' AND c.find_agent = v_find->>'agent'
                  AND c.expires > pg_catalog.now() AND c.max >= v_units) e
            WHERE e.tally <> t.tally_uuid AND v_next IS NOT NULL
            ORDER BY e.max >= v_units DESC, e.pri, e.hops LOOP
            g := chips._route(t.ent, v_exit.holder, v_units, t.tally_uuid, v_exit.tally);
            CONTINUE WHEN NOT g.ok OR chips._lift_lock(g.tallies, g.payers, g.receivers, v_units) <> 0;
            v_out := v_exit.tally;
            IF v_exit.pri = 0 THEN
                -- the prepare names the payee: the way its query found is worth keeping
                PERFORM chips._route_remember(v_find, v_out, v_exit.max, v_exit.hops);
            END IF;
            EXIT;
        END LOOP;
        IF v_out IS NULL THEN
            -- what would get through instead: the widest of the ways on (or to the payee)
            v_most := 0;
            IF v_target IS NOT NULL AND o->>'kind' = 'linear' THEN
                v_most := chips._route_most(t.ent, v_target, v_units, t.tally_uuid);
            END IF;
            FOR v_exit IN SELECT x.tally, t2.ent AS holder, x.max FROM chips.lift_routes x
                          JOIN chips.tallies t2 ON t2.tally_uuid = x.tally AND t2.part_ent IS NULL
                          WHERE x.query = o->>'query' AND x.dir = 'out' AND x.status = 'found'
                            AND x.tally <> t.tally_uuid AND x.max > v_most
                          ORDER BY x.max DESC LIMIT 3 LOOP
                v_most := greatest(v_most, least(v_exit.max,
                    chips._route_most(t.ent, v_exit.holder, v_units, t.tally_uuid, v_exit.tally)));
            END LOOP;
            RETURN chips._lift_reject(msg, CASE WHEN v_target IS NOT NULL AND o->>'kind' = 'linear'
                                                THEN 'no route to the payee carries the lift'
                                                ELSE 'no route on from here carries the lift' END, v_most);
        END IF;
    END IF;
    INSERT INTO chips.lifts (lift_uuid, kind, status, units, role, origin, find, query, tally_in,
                             tally_out, payee, condition, void_cond, expires, pay)
    VALUES (v_lift, o->>'kind', 'pend', v_units, CASE WHEN v_out IS NULL THEN 'terminus' ELSE 'relay' END,
            o->'origin', v_find, o->>'query', t.tally_uuid, v_out,
            CASE WHEN v_out IS NULL THEN v_target END,
            chips.b64url_decode(o->>'condition'), chips.b64url_decode(o->>'void'),
            pg_catalog.to_timestamp(coalesce(v_next, v_expires) / 1000.0), o->'pay')
    RETURNING * INTO l;
    v_doc := chips._lift_write(l, g.tallies, g.payers, g.receivers, v_doc);
    IF v_out IS NULL THEN
        PERFORM chips._send(chips._cert(v_target)->'chad', l.origin, 'lift', 'ready',
            pg_catalog.jsonb_build_object('lift', v_lift, 'units', v_units,
                'condition', o->>'condition', 'void', o->>'void'));
        RETURN 'ready';
    END IF;
    PERFORM chips._lift_send(v_out, 'prepare', o || pg_catalog.jsonb_build_object('chit', v_doc, 'expires', v_next));
    RETURN 'prepared';
END
$$;


-- The event feed writes each event once: a transaction's events wait in the unlogged
-- chips.events_pending (no WAL) and are numbered and written to chips.events at commit, instead of
-- being inserted unnumbered and numbered by a second, non-HOT update; a chit's event names the
-- user's half of the chit instead of copying it (docs/benchmarks.md, "Where a payment's WAL
-- goes"). chips.events loses its id and xid columns (its key is (ent, seq)) and gains chit and
-- status: the table is made anew and the numbered events copied over in order, with their bodies
-- (chips.events_v reads a body when there is one).
CREATE UNLOGGED SEQUENCE chips.events_pending_seq;
CREATE UNLOGGED TABLE chips.events_pending (
    id         bigint NOT NULL DEFAULT nextval('chips.events_pending_seq'),
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ent        text NOT NULL,
    kind       text NOT NULL,
    chit       bigint,
    status     text,
    body       jsonb,
    fire       boolean NOT NULL DEFAULT true   -- queues the numbering (one row a statement is enough)
);
CREATE INDEX events_pending_xid_idx ON chips.events_pending (xid, id);
DROP TRIGGER events_number ON chips.events;
ALTER TABLE chips.events RENAME TO events_0_1;
ALTER INDEX chips.events_pkey RENAME TO events_0_1_pkey;
ALTER INDEX chips.events_ent_seq_key RENAME TO events_0_1_ent_seq_key;
ALTER TABLE chips.events_0_1 RENAME CONSTRAINT events_kind_check TO events_0_1_kind_check;
CREATE TABLE chips.events (
    ent        text NOT NULL,
    seq        bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('tally', 'chit', 'lift')),
    chit       bigint,                  -- a chit's event: the user's half (chips.chits.id)
    status     text,                    -- a chit's event: the chit's status it reports
    body       jsonb,                   -- any other event: what happened
    created    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ent, seq)
);
INSERT INTO chips.events (ent, seq, kind, body, created)
SELECT e.ent, e.seq, e.kind, e.body, e.created FROM chips.events_0_1 e
WHERE e.seq IS NOT NULL ORDER BY e.ent, e.seq;
ALTER EXTENSION chips DROP TABLE chips.events_0_1;
DROP TABLE chips.events_0_1;
ALTER EXTENSION chips DROP SEQUENCE chips.event_seq;
DROP SEQUENCE chips.event_seq;
SELECT pg_catalog.pg_extension_config_dump('chips.events', '');
ALTER TABLE chips.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY events_own ON chips.events FOR SELECT TO chips_user
    USING (ent = (SELECT chips.my_ent()));
CREATE POLICY events_admin ON chips.events FOR SELECT TO chips_admin USING (true);

-- Users' events with their bodies: a chit's event is read from the user's half of the chit and
-- the status the event recorded (sql/schema.sql, chips.events).
CREATE VIEW chips.events_v WITH (security_invoker = true) AS
SELECT e.ent, e.seq, e.kind,
       coalesce(e.body, chips._chit_event(t, c.chit_uuid, c.chit_type, c.issuer, e.status, c.units,
                                          c.memo)) AS body,
       e.created
FROM chips.events e
LEFT JOIN chips.chits c ON c.id = e.chit
LEFT JOIN chips.tallies t ON t.id = c.tally_id;

REVOKE ALL ON chips.events, chips.events_v, chips.events_pending FROM PUBLIC;
REVOKE ALL ON SEQUENCE chips.events_pending_seq FROM PUBLIC;
GRANT SELECT ON chips.events, chips.events_v TO chips_user;
GRANT SELECT ON chips.events, chips.events_v, chips.events_pending TO chips_admin;

-- Append an event for a local user; numbered when the transaction commits. Rows loaded by COPY
-- (pg_restore) make no events: the events of the restored history are restored themselves.
CREATE OR REPLACE FUNCTION chips._event(p_ent text, p_kind text, p_body jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF chips._restoring() THEN
        RETURN;
    END IF;
    INSERT INTO chips.events_pending (ent, kind, body) VALUES (p_ent, p_kind, p_body);
END
$$;

-- Deferred trigger on chips.events_pending: the first firing at commit numbers all of the
-- transaction's events and writes them to chips.events, each once. It moves the users' head rows
-- in ent order (no deadlocks between transactions) and holds them until the commit is visible,
-- so numbers follow commit order without gaps. (Two transactions giving events to the same user
-- commit one after the other; they mostly serialize on that user's tally rows already.)
CREATE OR REPLACE FUNCTION chips._events_number() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_xid xid8 := pg_catalog.pg_current_xact_id();
    v_ents text[];
    v_ns bigint[];
    v_tops bigint[];
    v_upto bigint;
    v_top bigint;
BEGIN
    IF chips._events_numbered(NEW.id) THEN
        RETURN NULL;   -- numbered by an earlier firing in this transaction
    END IF;
    SELECT pg_catalog.array_agg(c.ent ORDER BY c.ent), pg_catalog.array_agg(c.n ORDER BY c.ent),
           pg_catalog.max(c.upto)
    INTO v_ents, v_ns, v_upto
    FROM (SELECT p.ent, pg_catalog.count(*) AS n, pg_catalog.max(p.id) AS upto
          FROM chips.events_pending p WHERE p.xid = v_xid GROUP BY p.ent) c;
    IF v_ents IS NULL THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.cardinality(v_ents) <= 4 THEN
        -- a payment's few users: one update each, in ent order (its row lock is its update's,
        -- no separate lock record); a user's first event makes their head
        v_tops := pg_catalog.array_fill(0::bigint, ARRAY[pg_catalog.cardinality(v_ents)]);
        FOR i IN 1 .. pg_catalog.cardinality(v_ents) LOOP
            UPDATE chips.event_heads h SET seq = h.seq + v_ns[i] WHERE h.ent = v_ents[i]
            RETURNING h.seq INTO v_top;
            IF NOT FOUND THEN
                INSERT INTO chips.event_heads AS h (ent, seq) VALUES (v_ents[i], v_ns[i])
                ON CONFLICT (ent) DO UPDATE SET seq = h.seq + excluded.seq
                RETURNING h.seq INTO v_top;
            END IF;
            v_tops[i] := v_top;
        END LOOP;
    ELSE
        -- many users (a lift, a clearing pass): lock in ent order, then move all heads at once
        INSERT INTO chips.event_heads (ent) SELECT x FROM pg_catalog.unnest(v_ents) x
        ON CONFLICT (ent) DO NOTHING;
        PERFORM 1 FROM chips.event_heads h WHERE h.ent = ANY (v_ents) ORDER BY h.ent FOR UPDATE;
        WITH moved AS (
            UPDATE chips.event_heads h SET seq = h.seq + c.n
            FROM ROWS FROM (pg_catalog.unnest(v_ents), pg_catalog.unnest(v_ns)) c(ent, n)
            WHERE h.ent = c.ent
            RETURNING h.ent, h.seq)
        SELECT pg_catalog.array_agg(m.seq ORDER BY m.ent) INTO v_tops FROM moved m;
    END IF;
    -- each user's events take the numbers below the user's new head, in the order they were made
    WITH gone AS (
        DELETE FROM chips.events_pending p WHERE p.xid = v_xid
        RETURNING p.id, p.ent, p.kind, p.chit, p.status, p.body)
    INSERT INTO chips.events (ent, seq, kind, chit, status, body)
    SELECT g.ent, c.top - c.n + pg_catalog.row_number() OVER (PARTITION BY g.ent ORDER BY g.id),
           g.kind, g.chit, g.status, g.body
    FROM gone g JOIN ROWS FROM (pg_catalog.unnest(v_ents), pg_catalog.unnest(v_ns), pg_catalog.unnest(v_tops))
             c(ent, n, top) ON c.ent = g.ent;
    PERFORM chips._events_mark(greatest(v_upto, NEW.id));
    -- No NOTIFY: a notifying transaction holds a cluster-wide lock through its commit, which
    -- would serialize every payment's commit. chipsd polls chips.event_heads instead.
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER events_number AFTER INSERT ON chips.events_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.fire) EXECUTE FUNCTION chips._events_number();

-- The caller's events after `cursor` (the last seq the client has), oldest first.
CREATE OR REPLACE FUNCTION chips.events_since(cursor bigint DEFAULT 0, max_events integer DEFAULT 500)
RETURNS TABLE (seq bigint, kind text, body jsonb, created timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    h chips.event_heads;
BEGIN
    IF events_since.cursor IS NULL OR events_since.cursor < 0 THEN
        RAISE EXCEPTION 'a cursor is 0 (from the start) or the seq of the last event seen'
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO h FROM chips.event_heads x WHERE x.ent = v_me.ent;
    IF events_since.cursor > coalesce(h.seq, 0) THEN
        RAISE EXCEPTION 'cursor % is past the last event (%)', events_since.cursor, coalesce(h.seq, 0)
            USING ERRCODE = '22023', HINT = 'A cursor from another site or an older database: start from 0.';
    END IF;
    IF events_since.cursor < coalesce(h.pruned, 0) THEN
        RAISE EXCEPTION 'events up to % were pruned', h.pruned USING ERRCODE = '55000',
            HINT = 'Read the current state (chips.tallies_list, chits_list, lifts_list) and go on from that seq.';
    END IF;
    RETURN QUERY SELECT e.seq, e.kind, e.body, e.created FROM chips.events_v e
    WHERE e.ent = v_me.ent AND e.seq > events_since.cursor
    ORDER BY e.seq LIMIT chips._max_rows('max_events', events_since.max_events);
END
$$;

-- After every statement that writes chits, once per statement and set-based whatever the
-- number of rows (a payment's one chit and a clearing pass's hundred thousand take the same
-- path): balances, chain tips, the holders' events, invoice notes. Two trigger functions, one
-- per statement kind, because a trigger sees its rows as transition tables of its own: chits_ins
-- (AFTER INSERT, new_chits) and chits_upd (AFTER UPDATE, old_chits and new_chits; an UPDATE
-- counts as the new row minus the old one). The rules:
--
-- Balances in O(1) per chit: each tally's balances move by the change of its chits'
-- contributions (good chits to net_good, good and pending ones to net_pend); chits that take
-- their place in the chain move the tally's chain tip to the last of them (blocks are only ever
-- appended), in the same UPDATE.
--
-- Events: every new chit and every change of status goes to the holder's event stream
-- (sql/access.sql), one event per chit, except lift chits, which make one event per holder and
-- lift (a clearing pass that moves ten of a user's tallies tells them once). Rows loaded by COPY
-- (pg_restore) make no events: the restored history carries its own.
--
-- An invoice waiting for the holder's signature is also NOTIFYed (the agent hears of everything
-- it must send through the outbox). Payments notify nobody: a NOTIFY holds a cluster-wide lock
-- from pre-commit to the end of the commit, which would serialize every payment's commit.
CREATE OR REPLACE FUNCTION chips._chits_ins() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chips.tallies x SET net_good = x.net_good + d.good, net_pend = x.net_pend + d.pend,
        net_hold = x.net_hold + d.hold,
        chain_len = coalesce(d.idx, x.chain_len),
        chain_tip = CASE WHEN d.idx IS NULL THEN x.chain_tip ELSE d.hash END,
        updated = pg_catalog.now()
    FROM (SELECT DISTINCT ON (n.tally_id) n.tally_id,
                 sum(chips._good(n.status, n.value)) OVER w AS good,
                 sum(chips._pend(n.status, n.value)) OVER w AS pend,
                 sum(chips._hold(n.status, n.chit_type, n.value)) OVER w AS hold,
                 n.chain_idx AS idx, n.chain_hash AS hash
          FROM new_chits n WINDOW w AS (PARTITION BY n.tally_id)
          ORDER BY n.tally_id, n.chain_idx DESC NULLS LAST) d
    WHERE x.id = d.tally_id AND (d.good <> 0 OR d.pend <> 0 OR d.idx IS NOT NULL);
    IF chips._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM chips._chit_invoiced(t.ent, t.tally_uuid, n.chit_uuid, n.units)
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id AND t.side = n.issuer
    WHERE n.status = 'pend' AND n.chit_type <> 'lift';
    INSERT INTO chips.events_pending (ent, kind, chit, status, fire)
    SELECT t.ent, 'chit', n.id, n.status, pg_catalog.row_number() OVER (ORDER BY n.id) = 1
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id
    WHERE n.lift_id IS NULL ORDER BY n.id;
    INSERT INTO chips.events_pending (ent, kind, body, fire)
    SELECT t.ent, 'lift', chips._lift_event(l.lift_uuid, n.status, pg_catalog.count(*)::integer,
               pg_catalog.sum(n.units), pg_catalog.sum(chips._chit_change(t.side, n.issuer, n.units)),
               pg_catalog.min(t.tally_uuid::text), pg_catalog.min(n.chit_uuid::text)),
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(n.id)) = 1
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id JOIN chips.lifts l ON l.id = n.lift_id
    GROUP BY t.ent, l.lift_uuid, n.status ORDER BY min(n.id);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION chips._chits_upd() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chips.tallies x SET net_good = x.net_good + d.good, net_pend = x.net_pend + d.pend,
        net_hold = x.net_hold + d.hold,
        chain_len = coalesce(d.idx, x.chain_len),
        chain_tip = CASE WHEN d.idx IS NULL THEN x.chain_tip ELSE d.hash END,
        updated = pg_catalog.now()
    FROM (SELECT DISTINCT ON (n.tally_id) n.tally_id,
                 sum(chips._good(n.status, n.value) - chips._good(o.status, o.value)) OVER w AS good,
                 sum(chips._pend(n.status, n.value) - chips._pend(o.status, o.value)) OVER w AS pend,
                 sum(chips._hold(n.status, n.chit_type, n.value)
                     - chips._hold(o.status, o.chit_type, o.value)) OVER w AS hold,
                 CASE WHEN o.chain_idx IS NULL THEN n.chain_idx END AS idx, n.chain_hash AS hash
          FROM new_chits n JOIN old_chits o ON o.id = n.id WINDOW w AS (PARTITION BY n.tally_id)
          ORDER BY n.tally_id, CASE WHEN o.chain_idx IS NULL THEN n.chain_idx END DESC NULLS LAST) d
    WHERE x.id = d.tally_id AND (d.good <> 0 OR d.pend <> 0 OR d.idx IS NOT NULL);
    IF chips._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM chips._chit_invoiced(t.ent, t.tally_uuid, n.chit_uuid, n.units)
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id AND t.side = n.issuer
    WHERE n.status = 'pend' AND n.chit_type <> 'lift' AND o.status <> 'pend';
    INSERT INTO chips.events_pending (ent, kind, chit, status, fire)
    SELECT t.ent, 'chit', n.id, n.status, pg_catalog.row_number() OVER (ORDER BY n.id) = 1
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id
    WHERE n.lift_id IS NULL AND o.status <> n.status ORDER BY n.id;
    INSERT INTO chips.events_pending (ent, kind, body, fire)
    SELECT t.ent, 'lift', chips._lift_event(l.lift_uuid, n.status, pg_catalog.count(*)::integer,
               pg_catalog.sum(n.units), pg_catalog.sum(chips._chit_change(t.side, n.issuer, n.units)),
               pg_catalog.min(t.tally_uuid::text), pg_catalog.min(n.chit_uuid::text)),
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(n.id)) = 1
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id
    JOIN chips.lifts l ON l.id = n.lift_id
    WHERE o.status <> n.status
    GROUP BY t.ent, l.lift_uuid, n.status ORDER BY min(n.id);
    RETURN NULL;
END
$$;

-- A local payment writes both halves of its chit in one statement (one run of the chits
-- statement trigger instead of two): chips._chit_insert takes the stock half of a local tally.
DROP FUNCTION chips._chit_insert(chips.tallies, jsonb, text, text, bigint);
-- Insert a chit into a half from its (checked) document; returns the row written. A good chit
-- on the foil half takes its place at the end of the chain at once (the foil half orders the
-- chain). `p_stock`, the stock half of a local tally whose foil half is `t`: a good chit is
-- written on both halves in the one statement, at the same place in both chains (the two
-- halves of a local tally are chained in the same transactions, so they have the same length
-- and tip; halves out of step refuse the chit).
CREATE FUNCTION chips._chit_insert(t chips.tallies, p_doc jsonb, p_status text, p_sig text,
                                   p_lift bigint DEFAULT NULL, p_stock chips.tallies DEFAULT NULL)
RETURNS chips.chits
LANGUAGE plpgsql
AS $$
DECLARE
    c chips.chits;
    v_idx integer;
    v_prior bytea;
    v_hash bytea;
BEGIN
    IF p_status = 'good' AND t.side = 'foil' THEN
        SELECT x.chain_len + 1, chips._chain_tip(x) INTO v_idx, v_prior
        FROM chips.tallies x WHERE x.id = t.id;
        IF p_stock.id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM chips.tallies x
            WHERE x.id = p_stock.id AND x.tally_uuid = t.tally_uuid
              AND x.chain_len + 1 = v_idx AND chips._chain_tip(x) = v_prior) THEN
            RAISE EXCEPTION 'the halves of tally % chain chit % differently', t.tally_uuid, p_doc->>'uuid'
                USING ERRCODE = '55000';
        END IF;
    END IF;
    IF v_idx IS NOT NULL THEN
        v_hash := chips.chit_chain_hash(p_doc, v_idx, v_prior, p_sig);
    END IF;
    WITH written AS (
        INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
                                 chit_date, signature, status, value, chain_idx, chain_prev,
                                 chain_hash, lift_id)
        SELECT h.id, (p_doc->>'uuid')::uuid, p_doc->>'type', p_doc->>'by', (p_doc->>'units')::bigint,
               p_doc->'ref', p_doc->>'memo', (p_doc->>'date')::timestamptz, p_sig, p_status,
               chips.chit_value(p_doc, h.side), v_idx, v_prior, v_hash, p_lift
        FROM (VALUES (1, t.id, t.side), (2, p_stock.id, p_stock.side)) h(k, id, side)
        WHERE h.id IS NOT NULL ORDER BY h.k
        RETURNING *)
    SELECT * INTO c FROM written w WHERE w.tally_id = t.id;
    IF chips._chit_doc(c, t.tally_uuid) <> p_doc THEN
        RAISE EXCEPTION 'chit % cannot be stored exactly as it was written', p_doc->>'uuid'
            USING ERRCODE = '22023', DETAIL = chips.canonical_json(p_doc);
    END IF;
    RETURN c;
END
$$;

-- A chit on a tally whose two halves are both in this database: what a chit on one half and
-- the chit message applied on the other do, without the message, on both halves in one
-- statement. A new chit (a payment, `p_status` good; an invoice, pend) is inserted on both
-- (chips._chit_insert: a good one at the same index and hash); an invoice signed (`p_status`
-- signed: its pending chit on both halves, `p_sig` its signature) becomes good on both and is
-- chained by chips._chain_place, as a lift's chits are when it settles.
DROP FUNCTION chips._chit_local(chips.tallies, jsonb, text);
CREATE FUNCTION chips._chit_local(t chips.tallies, p_doc jsonb, p_sig text, p_status text DEFAULT 'good')
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    p chips.tallies;
    f chips.tallies;
    s chips.tallies;
    c chips.chits;
    v_ids bigint[];
BEGIN
    SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = t.tally_uuid AND x.id <> t.id;
    IF NOT FOUND OR p.ent IS DISTINCT FROM t.part_ent THEN
        RAISE EXCEPTION 'the partner''s half of tally % is missing', t.tally_uuid USING ERRCODE = '55000';
    END IF;
    IF p.status NOT IN ('open', 'closing', 'closed') THEN
        RAISE EXCEPTION 'tally % is not open here yet', t.tally_uuid USING ERRCODE = '55000';
    END IF;
    IF t.side = 'foil' THEN f := t; s := p; ELSE f := p; s := t; END IF;
    IF p_status = 'signed' THEN
        WITH signed AS (
            UPDATE chips.chits y SET status = 'good', signature = p_sig
            WHERE y.tally_id IN (f.id, s.id) AND y.chit_uuid = (p_doc->>'uuid')::uuid AND y.status = 'pend'
            RETURNING y.id)
        SELECT pg_catalog.array_agg(x.id) INTO v_ids FROM signed x;
        IF pg_catalog.cardinality(v_ids) IS DISTINCT FROM 2 THEN
            RAISE EXCEPTION 'chit % is pending on one half of tally % only', p_doc->>'uuid', t.tally_uuid
                USING ERRCODE = '55000';
        END IF;
        PERFORM chips._chain_place(v_ids);
        SELECT * INTO c FROM chips.chits y WHERE y.id = ANY (v_ids) LIMIT 1;
    ELSE
        c := chips._chit_insert(f, p_doc, p_status, p_sig, NULL, s);
    END IF;
    IF p_status IN ('good', 'signed') THEN
        -- (what the effects read, type, issuer and settings, is the same on both halves)
        PERFORM chips._chit_effects(s.id, c);
        PERFORM chips._chit_effects(f.id, c);
    END IF;
END
$$;

-- Whether the statement running is a COPY: a C function now (a SQL function took 23 us a call).
DROP FUNCTION chips._restoring();
CREATE FUNCTION chips."_restoring"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'restoring_wrapper';
REVOKE ALL ON FUNCTION chips._chit_insert(chips.tallies, jsonb, text, text, bigint, chips.tallies),
    chips._restoring() FROM PUBLIC;


-- One table of peer messages and their receivers, and one place for the size limits: core's
-- peer::MESSAGES, MAX_MESSAGE_BYTES and MAX_CHAIN_BATCH_BYTES, read through these functions
-- (until 0.2.0 a CASE in _apply and the literals 60000, 40000 and 20000).
CREATE FUNCTION chips."_receiver"(
	"target" TEXT, /* & str */
	"action" TEXT /* & str */
) RETURNS TEXT /* Option < & '_ str > */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'receiver_wrapper';

CREATE FUNCTION chips."_max_message_bytes"() RETURNS INT /* i32 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'max_message_bytes_wrapper';

CREATE FUNCTION chips."_max_chain_batch_bytes"() RETURNS INT /* i32 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'max_chain_batch_bytes_wrapper';

REVOKE ALL ON FUNCTION chips._receiver(text, text), chips._max_message_bytes(),
    chips._max_chain_batch_bytes() FROM PUBLIC;
CREATE OR REPLACE FUNCTION chips._apply(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    -- the receiver of each message is in one table, core's peer::MESSAGES
    v_receiver text := chips._receiver(msg->>'target', msg->>'action');
    v_result text;
BEGIN
    IF v_receiver IS NULL THEN
        RAISE EXCEPTION 'unknown peer message %/%', msg->>'target', msg->>'action'
            USING ERRCODE = '22023';
    END IF;
    EXECUTE pg_catalog.format('SELECT chips.%I($1)', v_receiver) INTO v_result USING msg;
    RETURN v_result;
END
$$;

CREATE OR REPLACE FUNCTION chips._send(p_from jsonb, p_to jsonb, p_target text, p_action text, p_object jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_msg jsonb := pg_catalog.jsonb_build_object(
        'id', pg_catalog.gen_random_uuid(), 'target', p_target, 'action', p_action,
        'from', p_from, 'to', p_to, 'object', p_object);
BEGIN
    IF EXISTS (SELECT 1 FROM chips.agents a WHERE a.agent = p_to->>'agent' AND a.local) THEN
        PERFORM chips._apply(v_msg);
        RETURN 'local';
    END IF;
    -- a message must fit one Noise transport message (64 kB, docs/protocol.md): one that does
    -- not could never be delivered and would stop every later message to that site
    IF pg_catalog.octet_length(v_msg::text) > chips._max_message_bytes() THEN
        RAISE EXCEPTION 'a message to another site may be at most % bytes; this % message is %',
            chips._max_message_bytes(), p_target || '/' || p_action,
            pg_catalog.octet_length(v_msg::text)
            USING ERRCODE = '54000';
    END IF;
    PERFORM chips._agent_seen(p_to);
    INSERT INTO chips.outbox (msg_id, from_agent, to_agent, target, action, msg)
    VALUES ((v_msg->>'id')::uuid, p_from->>'agent', p_to->>'agent', p_target, p_action, v_msg);
    RETURN 'queued';
END
$$;

CREATE OR REPLACE FUNCTION chips._chain_send(p_tally_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    v_entries jsonb;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF t.side <> 'foil' OR t.chain_len <= t.chain_conf THEN
        RETURN;
    END IF;
    -- the first unconfirmed entries, up to chips._max_chain_batch_bytes() (a peer message must
    -- fit one Noise message): the stock half's ack brings the next ones (`ack` below)
    SELECT pg_catalog.jsonb_agg(e.entry ORDER BY e.idx) INTO v_entries
    FROM (SELECT c.chain_idx AS idx, x.entry,
                 sum(pg_catalog.octet_length(x.entry::text)) OVER (ORDER BY c.chain_idx) AS upto
          FROM chips.chits c,
               LATERAL (SELECT pg_catalog.jsonb_build_object(
                   'index', c.chain_idx, 'hash', chips.b64url_encode(c.chain_hash),
                   'chit', chips._chit_doc(c, t.tally_uuid), 'sign', c.signature) AS entry) x
          WHERE c.tally_id = t.id AND c.chain_idx > t.chain_conf) e
    WHERE e.upto <= chips._max_chain_batch_bytes() OR e.idx = t.chain_conf + 1;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
        pg_catalog.jsonb_build_object('cmd', 'upd', 'tally', t.tally_uuid, 'chits', v_entries));
END
$$;

CREATE OR REPLACE FUNCTION chips._chains_send(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._send(pg_catalog.jsonb_build_object('cuid', '_site', 'agent', m.me), chips._site_address(m.peer),
                        'chit', 'chains', pg_catalog.jsonb_build_object('cmd', 'upd', 'tallies', m.tallies))
    FROM (SELECT s.me, s.peer, pg_catalog.jsonb_agg(s.item ORDER BY s.tally_uuid) AS tallies
          FROM (SELECT i.*, pg_catalog.sum(pg_catalog.octet_length(i.item::text))
                                OVER (PARTITION BY i.me, i.peer ORDER BY i.tally_uuid) AS upto
                FROM (SELECT e.me, e.peer, e.tally_uuid,
                             pg_catalog.jsonb_build_object('tally', e.tally_uuid,
                                 'chits', pg_catalog.jsonb_agg(e.entry ORDER BY e.idx)) AS item
                      FROM (SELECT t.tally_uuid, t.hold_cert->'chad'->>'agent' AS me,
                                   t.part_cert->'chad'->>'agent' AS peer, t.chain_conf, c.chain_idx AS idx,
                                   x.entry, pg_catalog.sum(pg_catalog.octet_length(x.entry::text))
                                                OVER (PARTITION BY t.id ORDER BY c.chain_idx) AS upto
                            FROM chips.tallies t
                            JOIN chips.chits c ON c.tally_id = t.id AND c.chain_idx > t.chain_conf,
                                 LATERAL (SELECT pg_catalog.jsonb_build_object(
                                     'index', c.chain_idx, 'hash', chips.b64url_encode(c.chain_hash),
                                     'chit', chips._chit_doc(c, t.tally_uuid), 'sign', c.signature) AS entry) x
                            WHERE t.id = ANY (p_ids) AND t.side = 'foil' AND t.part_ent IS NULL
                              AND t.chain_len > t.chain_conf) e
                      WHERE e.upto <= chips._max_chain_batch_bytes() / 2 OR e.idx = e.chain_conf + 1
                      GROUP BY e.me, e.peer, e.tally_uuid) i) s
          GROUP BY s.me, s.peer, (s.upto - 1) / (chips._max_chain_batch_bytes() / 2)) m
    ORDER BY m.peer;
END
$$;

-- One rule of a chit's sign: core's chit::change, as chips._chit_change (a C function now; it
-- was a SQL CASE, and lifts_v and _round_moves_match had CASEs of their own).
DROP FUNCTION chips._chit_change(text, text, bigint);
CREATE FUNCTION chips."_chit_change"(
	"side" TEXT, /* & str */
	"by" TEXT, /* & str */
	"units" bigint /* i64 */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'chit_change_wrapper';
REVOKE ALL ON FUNCTION chips._chit_change(text, text, bigint) FROM PUBLIC;
CREATE OR REPLACE VIEW chips.lifts_v WITH (security_invoker = true) AS
SELECT coalesce(l.parent, l.lift_uuid) AS lift,  -- a part of a split payment shows as the payment
       l.kind, l.status, l.units, pg_catalog.cardinality(l.tallies) AS tallies,
       l.through, l.margin, t.ent, t.tally_uuid AS tally, t.side,
       chips._chit_change(t.side, c.issuer, c.units) AS change,
       c.chain_idx, l.created
FROM chips.lifts l
JOIN chips.chits c ON c.lift_id = l.id AND NOT (c.status = 'void' AND l.status = 'good')
JOIN chips.tallies t ON t.id = c.tally_id;

CREATE OR REPLACE FUNCTION chips._round_moves_match(p_lift bigint, p_agent text, p_moves jsonb) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    WITH mine AS (
        SELECT c.chit_uuid, t.tally_uuid,
               -chips._chit_change(t.side, c.issuer, c.units) AS theirs
        FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
        WHERE c.lift_id = p_lift AND c.status = 'pend' AND t.part_ent IS NULL
          AND t.part_cert->'chad'->>'agent' = p_agent),
    said AS (
        SELECT (m.v->>0)::uuid AS tally_uuid, (m.v->>1)::bigint AS units
        FROM pg_catalog.jsonb_array_elements(p_moves) m(v))
    SELECT NOT EXISTS (
        SELECT 1 FROM mine FULL JOIN said ON said.tally_uuid = mine.tally_uuid
        WHERE said.units IS DISTINCT FROM mine.theirs)
$$;
-- the views users and admins read (lifts_v, events_v) call these
GRANT EXECUTE ON FUNCTION chips._chit_change(text, text, bigint),
    chips._chit_event(chips.tallies, uuid, text, text, text, bigint, text) TO chips_user, chips_admin;

-- One rule of where a chain goes on: chips._chain_tip (the last block's hash, or the digest);
-- the functions that wrote it out themselves call it.
-- The hash a half's next block links to: its last block's, or the tally's digest before the
-- first. The one rule of where a chain goes on (the next block's index is chain_len + 1, and its
-- hash chips.chit_chain_hash over the chit, that index, this tip and the signature).
CREATE FUNCTION chips._chain_tip(t chips.tallies) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(t.chain_tip, t.digest) $$;

DROP FUNCTION chips._chain_append(bigint, bigint);
CREATE FUNCTION chips._chain_place(p_chits bigint[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_tally uuid;
    v_chit uuid;
BEGIN
    LOOP
        UPDATE chips.chits y SET chain_idx = t.chain_len + 1, chain_prev = chips._chain_tip(t),
            chain_hash = chips.chit_chain_hash(chips._chit_doc(y, t.tally_uuid), t.chain_len + 1,
                                               chips._chain_tip(t), y.signature)
        FROM (SELECT DISTINCT ON (z.tally_id) z.id FROM chips.chits z
              WHERE z.id = ANY (p_chits) AND z.status = 'good' AND z.chain_idx IS NULL
              ORDER BY z.tally_id, z.id) f, chips.tallies t
        WHERE y.id = f.id AND t.id = y.tally_id AND (t.side = 'foil' OR t.part_ent IS NOT NULL);
        EXIT WHEN NOT FOUND;
    END LOOP;
    SELECT ta.tally_uuid, a.chit_uuid INTO v_tally, v_chit
    FROM chips.chits a JOIN chips.tallies ta ON ta.id = a.tally_id
    JOIN chips.tallies tb ON tb.tally_uuid = ta.tally_uuid AND tb.side = 'stock'
    LEFT JOIN chips.chits b ON b.tally_id = tb.id AND b.chit_uuid = a.chit_uuid
    WHERE a.id = ANY (p_chits) AND ta.side = 'foil' AND ta.part_ent IS NOT NULL
      AND a.chain_hash IS DISTINCT FROM b.chain_hash
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the halves of tally % chain chit % differently', v_tally, v_chit
            USING ERRCODE = '55000';
    END IF;
END
$$;

-- chips._chain_upd returns the places of its entries for its caller to write, for a whole
-- message at once (chips._chain_write): a new return type, so the old function goes.
DROP FUNCTION chips._chain_upd(chips.tallies, jsonb);
-- The stock half `t` takes the foil half's chain entries (`p_chits`: [{index, hash, chit,
-- sign}]) in order: each must extend its chain to the same hash. Returns what to acknowledge,
-- `ack` {tally, index, hash} (its chain as it will be), or null when it found a gap and asked
-- for everything after what it has (nak); and the places its entries take (`ids`, `idxs`,
-- `priors`, `hashes`), which the caller writes with chips._chain_write, for every tally of a
-- message at once: one statement, so the chits trigger runs once, not once an entry.
CREATE FUNCTION chips._chain_upd(t chips.tallies, p_chits jsonb, OUT ack jsonb, OUT ids bigint[],
                                 OUT idxs integer[], OUT priors bytea[], OUT hashes bytea[])
LANGUAGE plpgsql
AS $$
DECLARE
    e jsonb;
    c chips.chits;
    v_doc jsonb;
    v_idx integer;
    v_hash bytea;
    v_here bytea;
    v_had integer;         -- the chain's length in the table
    v_len integer;         -- and with the places taken so far
    v_tip bytea;
BEGIN
    ids := '{}'; idxs := '{}'; priors := '{}'; hashes := '{}';
    IF t.side <> 'stock' THEN
        RAISE EXCEPTION 'only the foil half orders the chain of tally %', t.tally_uuid USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.jsonb_typeof(p_chits) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'a chain update of tally % carries no chits', t.tally_uuid USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM chips.tallies x WHERE x.id = t.id;
    v_had := t.chain_len;
    v_len := t.chain_len;
    v_tip := chips._chain_tip(t);
    FOR e IN SELECT x.value FROM pg_catalog.jsonb_array_elements(p_chits) x
             ORDER BY (x.value->>'index')::integer LOOP
        v_idx := (e->>'index')::integer;
        IF v_idx <= v_len THEN
            IF v_idx <= v_had THEN
                SELECT y.chain_hash INTO v_here FROM chips.chits y WHERE y.tally_id = t.id AND y.chain_idx = v_idx;
            ELSE
                v_here := hashes[v_idx - v_had];
            END IF;
            IF v_here IS DISTINCT FROM chips.b64url_decode(e->>'hash') THEN
                RAISE EXCEPTION 'the chain of tally % differs from the partner''s at index %', t.tally_uuid, v_idx
                    USING ERRCODE = '55000';
            END IF;
            CONTINUE;
        END IF;
        IF v_idx > v_len + 1 THEN
            -- a gap: ask for everything after what we have
            PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
                pg_catalog.jsonb_build_object('cmd', 'nak', 'tally', t.tally_uuid, 'index', v_len));
            RETURN;
        END IF;
        v_doc := chips.chit_doc_check(e->'chit');
        SELECT * INTO c FROM chips.chits y
        WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid FOR UPDATE;
        IF NOT FOUND AND v_doc->>'type' = 'lift' THEN
            -- a lift chit this half never took part in: no lift moves value without the
            -- holder's site (sql/lifts.sql)
            RAISE EXCEPTION 'lift chit % of tally % is not known here', v_doc->>'uuid', t.tally_uuid
                USING ERRCODE = '55000';
        ELSIF FOUND AND c.chit_type = 'lift' AND c.status = 'pend' THEN
            -- the lift is not decided here yet: settling it asks again (nak)
            UPDATE chips.tallies x SET chain_seen = greatest(x.chain_seen, (
                SELECT max((y.value->>'index')::integer) FROM pg_catalog.jsonb_array_elements(p_chits) y))
            WHERE x.id = t.id;
            EXIT;
        ELSIF NOT FOUND THEN
            c := chips._chit_insert(t, v_doc, 'good', e->>'sign');
            PERFORM chips._chit_effects(t.id, c);
        ELSIF c.status <> 'good' THEN
            IF chips.canonical_json(chips._chit_doc(c, t.tally_uuid)) <> chips.canonical_json(v_doc) THEN
                RAISE EXCEPTION 'chit % differs from the partner''s', c.chit_uuid USING ERRCODE = '22023';
            END IF;
            UPDATE chips.chits y SET status = 'good', signature = e->>'sign' WHERE y.id = c.id RETURNING * INTO c;
            PERFORM chips._chit_effects(t.id, c);
        END IF;
        v_hash := chips.chit_chain_hash(chips._chit_doc(c, t.tally_uuid), v_idx, v_tip, c.signature);
        IF v_hash <> chips.b64url_decode(e->>'hash') THEN
            RAISE EXCEPTION 'chit % hashes differently here at index % of tally %', c.chit_uuid, v_idx, t.tally_uuid
                USING ERRCODE = '55000';
        END IF;
        ids := ids || c.id;
        idxs := idxs || v_idx;
        priors := priors || v_tip;
        hashes := hashes || v_hash;
        v_len := v_idx;
        v_tip := v_hash;
    END LOOP;
    ack := pg_catalog.jsonb_build_object('tally', t.tally_uuid, 'index', v_len,
                                         'hash', chips.b64url_encode(v_tip));
END
$$;


-- Chain entries into their places (chips._chain_upd's): chit `p_ids[k]` at `p_idxs[k]` after
-- `p_priors[k]`, hashing to `p_hashes[k]`; the chits trigger moves each half's chain tip.
CREATE FUNCTION chips._chain_write(p_ids bigint[], p_idxs integer[], p_priors bytea[], p_hashes bytea[])
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.cardinality(p_ids) > 0 THEN    -- (the trigger runs even for no row)
        UPDATE chips.chits y SET chain_idx = u.i, chain_prev = u.p, chain_hash = u.h
        FROM ROWS FROM (pg_catalog.unnest(p_ids), pg_catalog.unnest(p_idxs), pg_catalog.unnest(p_priors),
                        pg_catalog.unnest(p_hashes)) u(id, i, p, h)
        WHERE y.id = u.id;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION chips._chain_upd(chips.tallies, jsonb),
                      chips._chain_write(bigint[], integer[], bytea[], bytea[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION chips.tally_audit(tally uuid)
RETURNS TABLE (ent text, side text, check_name text, ok boolean, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    t chips.tallies;
    c chips.chits;
    v_good bigint;
    v_pend bigint;
    v_hold bigint;
    v_prior bytea;
    v_bad text;
    v_n integer;
BEGIN
    FOR t IN SELECT * FROM chips.tallies x WHERE x.tally_uuid = tally_audit.tally ORDER BY x.id LOOP
        ent := t.ent;
        side := t.side;
        SELECT coalesce(sum(y.value) FILTER (WHERE y.status = 'good'), 0),
               coalesce(sum(y.value) FILTER (WHERE y.status IN ('good', 'pend')), 0),
               coalesce(sum(chips._hold(y.status, y.chit_type, y.value)), 0)
        INTO v_good, v_pend, v_hold FROM chips.chits y WHERE y.tally_id = t.id;
        check_name := 'balance';
        ok := v_good = t.net_good AND v_pend = t.net_pend AND v_hold = t.net_hold;
        detail := pg_catalog.format('cached good %s pend %s, chits sum to good %s pend %s',
                                    t.net_good, t.net_pend, v_good, v_pend)
                  || CASE WHEN v_hold = t.net_hold THEN '' ELSE
                         pg_catalog.format(', held back %s cached, %s in the chits', t.net_hold, v_hold) END;
        RETURN NEXT;

        check_name := 'digest';
        ok := t.status NOT IN ('open', 'closing', 'closed') OR t.digest = chips.json_digest(chips._tally_doc(t));
        detail := CASE WHEN ok THEN 'tally document hashes to its digest' ELSE 'tally document does not hash to its digest' END;
        IF ok AND t.status IN ('open', 'closing', 'closed') THEN
            BEGIN
                PERFORM chips._check_signed(t);
            EXCEPTION WHEN OTHERS THEN
                ok := false; detail := SQLERRM;
            END;
        END IF;
        RETURN NEXT;

        check_name := 'chain'; ok := true; detail := NULL;
        v_prior := t.digest;
        v_n := 0;
        FOR c IN SELECT * FROM chips.chits y WHERE y.tally_id = t.id AND y.chain_idx IS NOT NULL ORDER BY y.chain_idx LOOP
            v_n := v_n + 1;
            IF c.chain_idx <> v_n OR c.chain_prev IS DISTINCT FROM v_prior
               OR c.chain_hash <> chips.chit_chain_hash(chips._chit_doc(c, t.tally_uuid), c.chain_idx, c.chain_prev, c.signature) THEN
                ok := false; detail := pg_catalog.format('block %s (chit %s) does not link or hash', c.chain_idx, c.chit_uuid);
                EXIT;
            END IF;
            v_prior := c.chain_hash;
        END LOOP;
        IF ok AND (v_n <> t.chain_len OR chips._chain_tip(t) IS DISTINCT FROM v_prior) THEN
            ok := false; detail := pg_catalog.format('the tally says %s blocks, the chain has %s', t.chain_len, v_n);
        END IF;
        detail := coalesce(detail, v_n || ' blocks link and hash');
        RETURN NEXT;

        check_name := 'signatures'; v_bad := NULL;
        FOR c IN SELECT * FROM chips.chits y WHERE y.tally_id = t.id AND y.status = 'good' AND y.chit_type <> 'lift' LOOP
            IF NOT chips.verify_signature(chips._key_of(t, c.issuer), chips._chit_doc(c, t.tally_uuid), c.signature) THEN
                v_bad := c.chit_uuid::text;
                EXIT;
            END IF;
        END LOOP;
        ok := v_bad IS NULL;
        detail := coalesce('chit ' || v_bad || ' is not signed by its issuer', 'every good chit is signed by its issuer');
        RETURN NEXT;
    END LOOP;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tally %', tally_audit.tally USING ERRCODE = '42704';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION chips._lift_settle(p_id bigint, p_status text, p_reason text DEFAULT NULL,
                                   p_tallies uuid[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v_halves bigint[];
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id FOR UPDATE;
    IF l.status IN ('good', 'void') THEN
        RETURN;
    END IF;
    v_halves := chips._lift_halves(p_id, p_tallies);
    UPDATE chips.chits y SET status = p_status
    WHERE y.lift_id = p_id AND y.status = 'pend' AND y.tally_id = ANY (v_halves);
    IF p_status = 'good' THEN
        PERFORM chips._chain_place(ARRAY(
            SELECT z.id FROM chips.chits z
            WHERE z.lift_id = p_id AND z.status = 'good' AND z.chain_idx IS NULL
              AND z.tally_id = ANY (v_halves)));
        -- a closing tally closes once settled
        PERFORM chips._close_if_settled(x.id) FROM chips.tallies x
        WHERE x.id = ANY (v_halves) AND x.status = 'closing' ORDER BY x.id;
    END IF;
    IF p_tallies IS NOT NULL THEN
        RETURN;
    END IF;
    IF p_status = 'good' THEN
        -- every half the lift moved here (a round's pieces leave this to the last call, so that
        -- each partner site gets its chain updates gathered, not a few tallies a message): a
        -- stock half the foil half's chain update reached first asks for it again; the foil
        -- halves send their chain updates
        v_halves := ARRAY(SELECT DISTINCT y.tally_id FROM chips.chits y WHERE y.lift_id = p_id ORDER BY 1);
        -- (gathered per partner site, about 300 to a message: a round's member asks for
        -- thousands)
        PERFORM chips._send(pg_catalog.jsonb_build_object('cuid', '_site', 'agent', n.me),
                            chips._site_address(n.peer), 'chit', 'chains',
                            pg_catalog.jsonb_build_object('cmd', 'nak', 'tallies', n.tallies))
        FROM (SELECT k.me, k.peer, pg_catalog.jsonb_agg(k.item ORDER BY k.id) AS tallies
              FROM (SELECT x.id, x.hold_cert->'chad'->>'agent' AS me, x.part_cert->'chad'->>'agent' AS peer,
                           pg_catalog.jsonb_build_object('tally', x.tally_uuid, 'index', x.chain_len) AS item,
                           pg_catalog.row_number() OVER (PARTITION BY x.part_cert->'chad'->>'agent' ORDER BY x.id) AS k
                    FROM chips.tallies x
                    WHERE x.id = ANY (v_halves) AND x.side = 'stock' AND x.part_ent IS NULL
                      AND x.chain_seen > x.chain_len) k
              GROUP BY k.me, k.peer, (k.k - 1) / 300) n
        ORDER BY n.peer;
        PERFORM chips._chains_send(v_halves);
    END IF;
    UPDATE chips.lifts x SET status = p_status, decided = pg_catalog.now(),
        reason = coalesce(p_reason, x.reason)
    WHERE x.id = p_id;
END
$$;
REVOKE ALL ON FUNCTION chips._chain_tip(chips.tallies) FROM PUBLIC;

-- One place where settings meet trading variables: core's Settings::apply, as
-- chips._settings_apply, for issuing a setting chit and applying it (both wrote coalesces).
CREATE FUNCTION chips."_settings_apply"(
	"settings" jsonb, /* JsonB */
	"target" bigint, /* i64 */
	"bound" bigint, /* i64 */
	"reward" double precision, /* f64 */
	"clutch" double precision /* f64 */
) RETURNS TABLE (
	"target" bigint,  /* i64 */
	"bound" bigint,  /* i64 */
	"reward" double precision,  /* f64 */
	"clutch" double precision  /* f64 */
)
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'settings_apply_wrapper';
REVOKE ALL ON FUNCTION chips._settings_apply(jsonb, bigint, bigint, double precision, double precision) FROM PUBLIC;
CREATE OR REPLACE FUNCTION chips._chit_issue(t chips.tallies, v_doc jsonb, v_sig text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c chips.chits;
BEGIN
    IF v_doc->>'by' <> t.side THEN
        RAISE EXCEPTION 'you are the % of tally %: you can only issue chits by %', t.side, t.tally_uuid, t.side
            USING ERRCODE = '22023', HINT = 'To ask your partner for value, send an invoice (chips.chit_invoice).';
    END IF;
    IF v_doc->>'type' = 'lift' THEN
        RAISE EXCEPTION 'lift chits are written by lifts only' USING ERRCODE = '22023';
    END IF;
    IF NOT chips._chit_dated_near(v_doc->>'date', (extract(epoch FROM pg_catalog.now()) * 1000)::bigint) THEN
        RAISE EXCEPTION 'chit date % is more than an hour from now', v_doc->>'date' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chips.chits y WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid;
    IF FOUND THEN
        IF c.status = 'good' AND c.signature = v_sig
           AND chips.canonical_json(chips._chit_doc(c, t.tally_uuid)) = chips.canonical_json(v_doc) THEN
            RETURN 'good';   -- the same chit again (a retry): nothing to do
        END IF;
        RAISE EXCEPTION 'tally % already has a chit %', t.tally_uuid, v_doc->>'uuid' USING ERRCODE = '23505';
    END IF;
    IF v_sig IS NULL THEN
        RAISE EXCEPTION 'chit % carries no signature', v_doc->>'uuid' USING ERRCODE = '28000';
    END IF;
    -- a forgery is reported as one, before any rule about its content
    PERFORM chips.chit_verify(v_doc, t.hold_cert->>'public', v_sig);
    IF v_doc->>'type' = 'tran' THEN
        PERFORM chips._check_limit(t, (v_doc->>'units')::bigint);
    ELSE
        -- settings: checked against the trading variables they change
        PERFORM chips._settings_apply(v_doc->'ref', t.target, t.bound, t.reward, t.clutch);
    END IF;
    IF t.part_ent IS NOT NULL THEN
        -- the partner's half is in this database: written here at once (chips._chit_local)
        PERFORM chips._chit_local(t, v_doc, v_sig);
        RETURN 'good';
    END IF;
    c := chips._chit_insert(t, v_doc, 'good', v_sig);      -- the trigger verifies it again
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'good',
                        pg_catalog.jsonb_build_object('chit', v_doc, 'sign', v_sig));
    PERFORM chips._chit_good(t.id, c);
    RETURN 'good';
END
$$;

CREATE OR REPLACE FUNCTION chips._chit_effects(p_tally_id bigint, c chips.chits) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    s jsonb;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF c.chit_type = 'set' THEN
        s := chips.settings_check(c.reference);
        IF c.issuer = t.side THEN
            UPDATE chips.tallies x SET (target, bound, reward, clutch) =
                (SELECT a.target, a.bound, a.reward, a.clutch
                 FROM chips._settings_apply(s, x.target, x.bound, x.reward, x.clutch) a)
            WHERE x.id = t.id;
        ELSE
            UPDATE chips.tallies x SET part_sets = x.part_sets || (s - 'close') WHERE x.id = t.id;
        END IF;
        IF (s->>'close')::boolean AND t.status = 'open' THEN
            UPDATE chips.tallies x SET status = 'closing' WHERE x.id = t.id;
            t.status := 'closing';
        END IF;
    END IF;
    IF t.status = 'closing' THEN
        PERFORM chips._close_if_settled(t.id);
    END IF;
END
$$;

-- One format of document dates: core's chit::iso_millis, as chips._iso (a C function now; it
-- was a to_char pattern of its own). Replaced in place: its grants stay.
CREATE OR REPLACE FUNCTION chips."_iso"(
	"ts" timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'iso_wrapper';

-- One definition of the tally document: chips._tally_doc builds it with core's tally::HalfDoc
-- (chips._tally_doc_make) instead of a jsonb_build_object of its own; the document is the same
-- (every open tally's digest still audits clean). Replaced in place: its grants stay.
CREATE FUNCTION chips."_tally_doc_make"(
	"version" INT, /* i32 */
	"revision" INT, /* i32 */
	"uuid" TEXT, /* & str */
	"date" timestamp with time zone, /* pgrx :: datum :: TimestampWithTimeZone */
	"memo" TEXT, /* Option < & str > */
	"contract" TEXT, /* & str */
	"side" TEXT, /* & str */
	"hold_cert" jsonb, /* Option < JsonB > */
	"hold_terms" jsonb, /* JsonB */
	"part_cert" jsonb, /* Option < JsonB > */
	"part_terms" jsonb /* JsonB */
) RETURNS jsonb /* JsonB */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tally_doc_make_wrapper';
REVOKE ALL ON FUNCTION chips._tally_doc_make(integer, integer, text, timestamptz, text, text, text,
                                             jsonb, jsonb, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chips._tally_doc_make(integer, integer, text, timestamptz, text, text, text,
                                                jsonb, jsonb, jsonb, jsonb) TO chips_user, chips_admin;

CREATE OR REPLACE FUNCTION chips._tally_doc(t chips.tallies) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT chips._tally_doc_make(t.version, t.revision, t.tally_uuid::text, t.tally_date, t.memo,
                                 t.contract, t.side, t.hold_cert, t.hold_terms, t.part_cert,
                                 t.part_terms)
$$;

-- One path for a chit on a tally between two local users: an invoice and its signature are
-- written on both halves by chips._chit_local (no longer a message to the site itself), and a
-- chit that becomes good is chained by chips._chain_place (an invoice signed, a chit from a
-- partner site, a lift settled), which replaces _chain_append and the loop of _lift_settle.
REVOKE ALL ON FUNCTION chips._chit_local(chips.tallies, jsonb, text, text),
    chips._chain_place(bigint[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION chips._chit_good(p_tally_id bigint, c chips.chits) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
BEGIN
    PERFORM chips._chit_effects(p_tally_id, c);
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF t.side <> 'foil' THEN
        RETURN;
    END IF;
    PERFORM chips._chain_place(ARRAY[c.id]);
    PERFORM chips._chain_send(p_tally_id);
END
$$;

CREATE OR REPLACE FUNCTION chips.chit_invoice(tally uuid, units bigint, memo text DEFAULT NULL,
                                   reference jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_open_tally(v_me, chit_invoice.tally);
    v_doc jsonb;
BEGIN
    IF chit_invoice.units IS NULL THEN
        RAISE EXCEPTION 'an invoice needs units' USING ERRCODE = '22023';
    END IF;
    v_doc := chips.chit_doc_make(t.tally_uuid, chips._other(t.side), 'tran', pg_catalog.gen_random_uuid(),
        (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, chit_invoice.units,
        chit_invoice.reference, chit_invoice.memo);
    IF t.part_ent IS NOT NULL THEN
        PERFORM chips._chit_local(t, v_doc, NULL, 'pend');
        RETURN (v_doc->>'uuid')::uuid;
    END IF;
    PERFORM chips._chit_insert(t, v_doc, 'pend', NULL);
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'pend',
                        pg_catalog.jsonb_build_object('chit', v_doc));
    RETURN (v_doc->>'uuid')::uuid;
END
$$;

CREATE OR REPLACE FUNCTION chips.chit_sign(tally uuid, chit uuid, signature text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_open_tally(v_me, chit_sign.tally);
    c chips.chits := chips._my_pending(t, chit_sign.chit);
    v_doc jsonb := chips._chit_doc(c, t.tally_uuid);
    v_sig text := coalesce(chit_sign.signature, chips._custodial_sign(v_me.ent, v_doc));
BEGIN
    IF c.issuer <> t.side THEN
        RAISE EXCEPTION 'chit % is your own invoice: your partner signs it', chit_sign.chit
            USING ERRCODE = '55000';
    END IF;
    IF v_sig IS NULL THEN
        RAISE EXCEPTION 'chit % carries no signature', chit_sign.chit USING ERRCODE = '28000';
    END IF;
    PERFORM chips.chit_verify(v_doc, t.hold_cert->>'public', v_sig);
    PERFORM chips._check_limit(t, c.units);
    IF t.part_ent IS NOT NULL THEN
        PERFORM chips._chit_local(t, v_doc, v_sig, 'signed');
        RETURN 'good';
    END IF;
    UPDATE chips.chits y SET status = 'good', signature = v_sig WHERE y.id = c.id RETURNING * INTO c;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'good',
                        pg_catalog.jsonb_build_object('chit', v_doc, 'sign', v_sig));
    PERFORM chips._chit_good(t.id, c);
    RETURN 'good';
END
$$;

-- The lane of each peer message (core's peer::Lane), by which outbox_claim(lane => ...) lets
-- chipsd send a peer's route queries and answers apart from its ordered messages.
CREATE FUNCTION chips."_lane"(
	"target" TEXT, /* & str */
	"action" TEXT /* & str */
) RETURNS TEXT /* Option < & '_ str > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lane_wrapper';
REVOKE ALL ON FUNCTION chips._lane(text, text) FROM PUBLIC;

-- Route answers say what every way on carries together (`total`) beside the most one way
-- carries (`max`): an origin splits a payment over one exit into parts, and the sites beyond pass
-- each part on a way of its own.
ALTER TABLE chips.lift_routes ADD COLUMN total bigint;

CREATE FUNCTION chips."_route_flow"(
	"payers" TEXT[], /* Vec < Option < String > > */
	"receivers" TEXT[], /* Vec < Option < String > > */
	"capacities" bigint[], /* Vec < Option < i64 > > */
	"from" TEXT, /* & str */
	"exits" TEXT[], /* Vec < Option < String > > */
	"exit_caps" bigint[] /* Vec < Option < i64 > > */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'route_flow_wrapper';
REVOKE ALL ON FUNCTION chips._route_flow(text[], text[], bigint[], text, text[], bigint[]) FROM PUBLIC;

-- What every way on from the tally query `r` came in on carries together (an answer's `total`;
-- its `max` is the most one way carries): the most that can move at once from `p_holder`, the
-- tally's holder, over this site's tallies to the payee `p_target` (when here) and to the exits
-- whose queries found ways (each up to what the ways beyond it carry together and the exit
-- tally carries), no more than the tally in carries. An origin splits a payment over one exit
-- into parts by it (chips._lift_place), and the sites beyond pass each part on a way of its own.
CREATE FUNCTION chips._route_total(r chips.lift_routes, p_holder text, p_target text) RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    -- (PL/pgSQL for its kept plan, as chips._local_arcs)
    RETURN (
    WITH a AS (SELECT * FROM chips._local_arcs()),
         e AS (SELECT t.ent, coalesce(least(coalesce(x.total, x.max), chips._send_capacity(t)), 0) AS cap
               FROM chips.lift_routes x
               JOIN chips.tallies t ON t.tally_uuid = x.tally AND t.part_ent IS NULL
               WHERE x.query = r.query AND x.dir = 'out' AND x.status = 'found' AND x.tally <> r.tally
               UNION ALL
               SELECT p_target, NULL::bigint WHERE p_target IS NOT NULL)   -- (no bound of its own)
    SELECT least(
        (SELECT chips._recv_capacity(h, (h.part_sets->>'clutch')::double precision)
         FROM chips.tallies h WHERE h.tally_uuid = r.tally AND h.part_ent IS NULL),
        chips._route_flow(a.payers, a.receivers, a.caps, p_holder,
                          coalesce((SELECT array_agg(e.ent) FROM e), '{}'),
                          coalesce((SELECT array_agg(e.cap) FROM e), '{}')))
    FROM a);
END
$$;
REVOKE ALL ON FUNCTION chips._route_total(chips.lift_routes, text, text) FROM PUBLIC;

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
        UPDATE chips.lift_routes x SET status = 'found', max = o.max, hops = o.hops + 1,
            total = greatest(o.max, chips._route_total(r, v_in_holder, NULL))
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

-- A relay's answer goes back over the tally the query came in on.
CREATE OR REPLACE FUNCTION chips._route_reply(r chips.lift_routes) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._lift_send(r.tally, 'answer', pg_catalog.jsonb_build_object(
        'query', r.query, 'link', chips._link_id(r.query, r.tally),
        'found', r.status = 'found', 'max', r.max, 'hops', r.hops, 'total', r.total));
END
$$;

CREATE OR REPLACE FUNCTION chips._recv_lift_query(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    o jsonb := msg->'object';
    t chips.tallies := chips._link_half(msg);
    v_find jsonb;
    v_units bigint;
    v_depth integer;
    v_expires timestamptz;
    v_target text;
    v_want bigint;
    g record;
    r chips.lift_routes;
    s chips.lift_settings := chips._lift_set();
    v_max bigint;
BEGIN
    IF o->>'query' IS NULL OR pg_catalog.jsonb_typeof(o->'find') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a route query has query, find, units >= 1, depth and expires' USING ERRCODE = '22023';
    END IF;
    BEGIN
        IF o->'find' ? 'tag' THEN
            IF pg_catalog.jsonb_typeof(o->'find'->'tag') IS DISTINCT FROM 'string'
               OR pg_catalog.jsonb_typeof(o->'find'->'agent') IS DISTINCT FROM 'string' THEN
                RAISE EXCEPTION 'a blinded find is {agent, tag}' USING ERRCODE = '22023';
            END IF;
            v_find := pg_catalog.jsonb_build_object('agent', o->'find'->>'agent', 'tag', o->'find'->>'tag');
        ELSE
            -- a peer that sends the payee in clear: blinded from here on
            v_find := chips._find_blind(o->>'query', chips._chad(o->'find'));
        END IF;
        v_units := (o->>'units')::bigint;
        v_want := coalesce((o->>'want')::bigint, v_units);
        v_depth := least((o->>'depth')::integer, s.max_depth);
        v_expires := pg_catalog.to_timestamp((o->>'expires')::bigint / 1000.0);
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range OR invalid_parameter_value THEN
        RAISE EXCEPTION 'a route query has find, units, depth and expires' USING ERRCODE = '22023';
    END;
    IF v_units IS NULL OR v_units < 1 OR v_want < v_units OR v_depth IS NULL OR v_expires IS NULL
       OR o->>'query' IS NULL THEN
        RAISE EXCEPTION 'a route query has query, find, units >= 1, want >= units (if given), depth and expires'
            USING ERRCODE = '22023';
    END IF;
    IF t.id IS NULL THEN
        RETURN 'ignored';     -- no such tally here: the asker's query runs out
    END IF;
    IF v_expires <= pg_catalog.now() THEN
        RETURN 'expired';
    END IF;
    IF EXISTS (SELECT 1 FROM chips.lift_routes x WHERE x.query = o->>'query' AND x.dir = 'in' AND x.tally = t.tally_uuid) THEN
        RETURN 'ignored';     -- this query came this way already
    END IF;
    v_target := chips._find_local(o->>'query', v_find);
    -- (it waits for its own exits a step less than its asker does, so that its answer, found or
    -- none, reaches the asker before the asker stops waiting: query_life / (max_depth + 1) a hop)
    INSERT INTO chips.lift_routes (query, dir, tally, find, units, want, expires)
    VALUES (o->>'query', 'in', t.tally_uuid, v_find, v_units, v_want,
            least(v_expires - s.query_life / (s.max_depth + 1), pg_catalog.now() + s.query_life))
    RETURNING * INTO r;
    IF chips._recv_capacity(t, (t.part_sets->>'clutch')::double precision) < v_units THEN
        UPDATE chips.lift_routes x SET status = 'none' WHERE x.id = r.id RETURNING * INTO r;
        PERFORM chips._route_reply(r);
        RETURN 'none';
    END IF;
    IF v_target IS NOT NULL THEN
        -- the lift ends here: a route from the tally it arrives on to the user it is for (one
        -- that carries all the payment, if there is one)
        g := chips._route(t.ent, v_target, v_want, t.tally_uuid);
        IF NOT g.ok THEN
            g := chips._route(t.ent, v_target, v_units, t.tally_uuid);
        END IF;
        IF g.ok THEN
            v_max := (SELECT min(c) FROM pg_catalog.unnest(g.caps) c);
            UPDATE chips.lift_routes x SET status = 'found', hops = pg_catalog.cardinality(g.tallies),
                max = v_max, total = greatest(v_max, chips._route_total(r, t.ent, v_target))
            WHERE x.id = r.id RETURNING * INTO r;
            PERFORM chips._route_reply(r);
            RETURN 'found';
        END IF;
        -- no way across this site from that tally reaches the payee: the query goes on, as at a
        -- relay, and may come back here over another tally that does
    END IF;
    -- (a query that reaches a site again over another tally, even the origin's, goes on from
    -- there over the exits it was not sent on yet: a lift may pass a site more than once, over
    -- distinct tallies; the depth and the tallies bound how far it goes)
    IF chips._route_ask(r.id, t.ent, v_depth) = 0 THEN
        RETURN 'none';
    END IF;
    RETURN 'asked';
END
$$;

CREATE OR REPLACE FUNCTION chips._recv_lift_answer(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    o jsonb := msg->'object';
    t chips.tallies := chips._link_half(msg);
    r chips.lift_routes;
    v_in record;
BEGIN
    IF t.id IS NULL THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO r FROM chips.lift_routes x
    WHERE x.query = o->>'query' AND x.dir = 'out' AND x.tally = t.tally_uuid FOR UPDATE;
    IF NOT FOUND OR r.status <> 'pend' THEN
        RETURN 'ignored';
    END IF;
    -- (found only if the tally out here still carries the units asked: its capacity may have
    -- moved since the query went out)
    IF (o->>'found')::boolean AND (o->>'max')::bigint >= r.units AND chips._send_capacity(t) >= r.units THEN
        UPDATE chips.lift_routes x SET status = 'found',
            max = least((o->>'max')::bigint, chips._send_capacity(t)), hops = (o->>'hops')::integer,
            -- (what the ways beyond carry together: at least the one way, at most the tally)
            total = least(greatest(CASE WHEN o->>'total' ~ '^[0-9]{1,18}$' THEN (o->>'total')::bigint END,
                                   (o->>'max')::bigint),
                          chips._send_capacity(t))
        WHERE x.id = r.id RETURNING * INTO r;
        -- (the origin remembers the way when its prepare goes out on it, as a relay does: a
        -- way only asked about is not one the sites beyond it know)
    ELSE
        UPDATE chips.lift_routes x SET status = 'none' WHERE x.id = r.id;
        DELETE FROM chips.lift_route_cache c
        WHERE c.tally = t.tally_uuid AND c.find_cuid = r.find->>'cuid' AND c.find_agent = r.find->>'agent';
    END IF;
    FOR v_in IN SELECT x.id FROM chips.lift_routes x WHERE x.query = r.query AND x.dir = 'in' ORDER BY x.id LOOP
        PERFORM chips._route_answer(v_in.id);
    END LOOP;
    RETURN r.status;
END
$$;

-- Sends `p_units` of payment `l` as parts over the routes its query found, widest first, so that
-- it has at most `parts` parts under way: each part a lift of its own (its own uuid, the
-- payment's locks and signed document) with its own segment here and prepare. All of the units,
-- or nothing (false): a payment is never partly sent. (A split payment's parts, and the parts
-- that replace one a site on the way refused; chips._recv_lift_reject.)
CREATE OR REPLACE FUNCTION chips._lift_place(l chips.lifts, p_units bigint) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.lift_settings := chips._lift_set();
    e record;
    g record;
    p chips.lifts;
    v_left bigint := p_units;
    v_part bigint;
    v_room bigint;
    n integer;
    v_tries integer;
BEGIN
    -- (the parts under way count; so do, four times over, those refused on the way: a payment
    -- stops trying after that many)
    SELECT count(*) FILTER (WHERE x.status <> 'void'), count(*) INTO n, v_tries
    FROM chips.lifts x WHERE x.parent = l.lift_uuid AND x.role = 'origin';
    IF v_tries >= 4 * s.parts THEN
        RETURN false;
    END IF;
    BEGIN
        FOR e IN SELECT x.tally, x.max, coalesce(x.total, x.max) AS total, x.hops, t.ent AS holder
                 FROM chips.lift_routes x
                 JOIN chips.tallies t ON t.tally_uuid = x.tally AND t.part_ent IS NULL
                 WHERE x.query = l.query AND x.dir = 'out' AND x.status = 'found' AND x.max >= 1
                 ORDER BY coalesce(x.total, x.max) DESC, x.max DESC, x.hops, x.id LOOP
            EXIT WHEN v_left = 0 OR n >= s.parts;
            -- up to what the ways beyond carry together (its answer's total, less the parts of
            -- this payment under way over the exit already), in parts no larger than the most one
            -- way beyond carries (its answer's max): the sites beyond pass each part on a way of
            -- its own; and, when no single way here from the payer to the exit carries a part,
            -- over distinct ways here
            v_room := e.total - coalesce((SELECT sum(y.units) FROM chips.lifts y
                                          WHERE y.parent = l.lift_uuid AND y.role = 'origin'
                                            AND y.status <> 'void' AND y.tally_out = e.tally), 0);
            LOOP
                EXIT WHEN v_left = 0 OR n >= s.parts OR v_room < 1;
                -- as much as a way here and a way beyond carry (what earlier parts reserved
                -- here counts: their chits are pending): a way that carries it all, else one that
                -- carries half as much, ... a few times over; then as much as that way, the exit
                -- tally included, carries
                v_part := least(v_left, v_room, e.max);
                g := chips._route_wide(l.payer, e.holder, v_part, v_part / 64, NULL, e.tally);
                EXIT WHEN NOT g.ok;
                v_part := least(v_part, (SELECT min(c) FROM pg_catalog.unnest(g.caps) c));
                EXIT WHEN v_part < 1 OR chips._lift_lock(g.tallies, g.payers, g.receivers, v_part) <> 0;
                INSERT INTO chips.lifts (lift_uuid, kind, status, units, role, origin, find, payer, query,
                                         condition, void_cond, secret, void_secret, expires, pay, parent, tally_out)
                VALUES (pg_catalog.gen_random_uuid(), 'linear', 'pend', v_part, 'origin', l.origin, l.find,
                        l.payer, l.query, l.condition, l.void_cond, l.secret, l.void_secret, l.expires, l.pay,
                        l.lift_uuid, e.tally)
                RETURNING * INTO p;
                PERFORM chips._lift_go(p, g.tallies, g.payers, g.receivers, e.max, e.hops);
                v_left := v_left - v_part;
                v_room := v_room - v_part;
                n := n + 1;
            END LOOP;
        END LOOP;
        IF v_left > 0 THEN
            RAISE EXCEPTION 'the routes found do not carry the payment together' USING ERRCODE = 'CHP01';
        END IF;
    EXCEPTION WHEN SQLSTATE 'CHP01' THEN
        RETURN false;       -- nothing of it stays: no part row, chit or prepare
    END;
    RETURN true;
END
$$;

-- The most a way across this site carries now, from `p_from` (after tally `p_in`) to `p_to`
-- (and out on `p_out`), of half of `p_units`, a quarter, ... a sixteenth: 0 if not that much
-- (and for a lift of 1 unit, which has no half: no way is asked for 0 units).
CREATE OR REPLACE FUNCTION chips._route_most(p_from text, p_to text, p_units bigint, p_in uuid, p_out uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    g record;
BEGIN
    IF p_units < 2 THEN
        RETURN 0;
    END IF;
    g := chips._route_wide(p_from, p_to, p_units / 2, p_units / 16, p_in, p_out);
    RETURN CASE WHEN g.ok THEN greatest(0, (SELECT min(c) FROM pg_catalog.unnest(g.caps) c)) ELSE 0 END;
END
$$;

-- A batch of payments written at once (issue: payments as fast as a ledger): the limit rule in
-- core (chips._pay_room), the set-based writer (chips._pay_bulk), pay_batch trying it first.
CREATE FUNCTION chips."_pay_room"(
	"balance" bigint, /* i64 */
	"held" bigint, /* i64 */
	"credit_limit" bigint /* i64 */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pay_room_wrapper';

CREATE FUNCTION chips."_pay_bulk"(
	"payments" jsonb /* JsonB */
) RETURNS uuid[] /* :: std :: option :: Option < Vec < pgrx :: Uuid > > */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pay_bulk_wrapper';
CREATE FUNCTION chips."_pay_one"(
	"tally" uuid, /* Option < pgrx :: Uuid > */
	"units" bigint, /* Option < i64 > */
	"memo" TEXT, /* Option < String > */
	"reference" jsonb /* Option < JsonB > */
) RETURNS uuid /* Option < pgrx :: Uuid > */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pay_one_wrapper';
CREATE FUNCTION chips."_chit_dated_near"(
	"date" TEXT, /* & str */
	"now_ms" bigint /* i64 */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'chit_dated_near_wrapper';
-- The rows whose signatures the writer checked itself: the chits row trigger skips them.
CREATE FUNCTION chips."_chit_checked"(
	"tally_id" bigint, /* Option < i64 > */
	"chit" uuid, /* Option < pgrx :: Uuid > */
	"signature" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'chit_checked_wrapper';
REVOKE ALL ON FUNCTION chips._pay_room(bigint, bigint, bigint), chips._pay_bulk(jsonb),
    chips._pay_one(uuid, bigint, text, jsonb), chips._chit_dated_near(text, bigint),
    chips._chit_checked(bigint, uuid, text) FROM PUBLIC;
DROP TRIGGER chits_bi ON chips.chits;
CREATE TRIGGER chits_bi BEFORE INSERT ON chips.chits
    FOR EACH ROW WHEN (NEW.status = 'good' AND NEW.chit_type <> 'lift'
                       AND NOT chips._chit_checked(NEW.tally_id, NEW.chit_uuid, NEW.signature))
    EXECUTE FUNCTION chips._chits_biu();

-- Pay through SQL alone: for custodial users (the database holds their key). A payment on an
-- open tally between two users of this site that would be applied is written by the writer of
-- clean batches (chips._pay_bulk, one item: its statements planned once per backend); any other,
-- or one it would refuse, by chips._custodial_issue, which says why.
CREATE OR REPLACE FUNCTION chips.pay(tally uuid, units bigint, memo text DEFAULT NULL,
                          reference jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_chit uuid;
BEGIN
    IF pay.units IS NULL THEN
        PERFORM chips._me();   -- who may not pay at all is told so first
        RAISE EXCEPTION 'a payment needs units' USING ERRCODE = '22023';
    END IF;
    v_chit := chips._pay_one(pay.tally, pay.units, pay.memo, pay.reference);
    IF v_chit IS NOT NULL THEN
        RETURN v_chit;
    END IF;
    RETURN chips._custodial_issue(chips._me(), pay.tally, pay.units, pay.memo, pay.reference);
END
$$;

-- Raises 23514 when a good chit of `p_units` issued by the holder of `t` would take the holder's
-- balance below minus the credit its partner granted it, counting what pending lifts may still
-- take from it (net_hold): a lift that commits after the payment cannot take it past the limit
-- (core's chit::pay_room, chips._pay_room).
CREATE OR REPLACE FUNCTION chips._check_limit(t chips.tallies, p_units bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_limit bigint := coalesce((t.part_terms->>'limit')::bigint, 0);
    v_room bigint := chips._pay_room(t.net_good, t.net_hold, v_limit);
BEGIN
    IF p_units > v_room THEN
        RAISE EXCEPTION 'paying % would take your balance on tally % to %, past the credit limit of % your partner granted',
            p_units, t.tally_uuid, t.net_good + t.net_hold - p_units, v_limit
            USING ERRCODE = '23514',
                  HINT = 'Pay at most ' || greatest(v_room, 0) || ' milliCHIPs.';
    END IF;
END
$$;

-- Many payments in one call (a payroll, a shop's end of day): each item a payment the caller
-- may make, `{tally, units, memo?, reference?, payer?}` (signed here with a custodial key, as
-- chips.pay) or `{doc, signature?, payer?}` (a chit document its payer signed, as
-- chips.chit_issue); `payer` (an entity id) lets a role that acts for several users (a member
-- of each one's role) pay for each of them, else the caller's own user pays. Every item is
-- checked and signed like a single payment. Per item (the default) each is applied or refused
-- on its own, in a subtransaction of its own: one row per item, its chit uuid or the SQLSTATE
-- and message it was refused with, nothing of a refused one written. With `all_or_nothing`,
-- the first refusal refuses the whole call with that item's SQLSTATE and message, and nothing
-- is written (no subtransactions: faster). One transaction either way.
--
-- A batch of payments on open tallies between users of this site (custodial ones, or documents
-- their payers signed) that would all be applied is written at once (chips._pay_bulk,
-- extension/src/pay.rs: one INSERT of every chit, one run of the chits statement trigger); any
-- other batch, or one with an item that would be refused, is paid item by item as above (the
-- set-based attempt then leaves nothing behind).
CREATE OR REPLACE FUNCTION chips.pay_batch(payments jsonb, all_or_nothing boolean DEFAULT false)
RETURNS TABLE (item integer, chit uuid, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    p jsonb;
    k integer := 0;
    v_state text;
    v_message text;
    v_chits uuid[];
BEGIN
    IF pg_catalog.jsonb_typeof(pay_batch.payments) IS DISTINCT FROM 'array'
       OR pg_catalog.jsonb_array_length(pay_batch.payments) NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'payments is a JSON array of 1 to 1,000 payments' USING ERRCODE = '22023';
    END IF;
    BEGIN
        v_chits := chips._pay_bulk(pay_batch.payments);
    EXCEPTION WHEN OTHERS THEN
        v_chits := NULL;   -- item by item below says what went wrong
    END;
    IF v_chits IS NOT NULL THEN
        RETURN QUERY SELECT u.k::integer, u.c, NULL::text, NULL::text
                     FROM pg_catalog.unnest(v_chits) WITH ORDINALITY u(c, k) ORDER BY u.k;
        RETURN;
    END IF;
    FOR p IN SELECT x FROM pg_catalog.jsonb_array_elements(pay_batch.payments) x LOOP
        k := k + 1;
        item := k;
        chit := NULL;
        pay_batch.sqlstate := NULL;
        pay_batch.message := NULL;
        IF coalesce(pay_batch.all_or_nothing, false) THEN
            chit := chips._pay_item(p);
        ELSE
            BEGIN
                chit := chips._pay_item(p);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
                pay_batch.sqlstate := v_state;
                pay_batch.message := v_message;
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The balance update every chit makes skips the tally update triggers altogether (column lists).
DROP TRIGGER tallies_bu ON chips.tallies;
CREATE TRIGGER tallies_bu BEFORE UPDATE OF id, ent, tally_uuid, side, version, revision, status,
        tally_date, memo, contract, hold_cert, part_cert, hold_terms, part_terms, hold_sig, part_sig,
        digest, part_ent, target, bound, reward, clutch, part_sets, chain_conf, chain_seen, created
    ON chips.tallies
    FOR EACH ROW
    WHEN ((OLD.id, OLD.ent, OLD.tally_uuid, OLD.side, OLD.status, OLD.version, OLD.revision,
           OLD.tally_date, OLD.memo, OLD.contract, OLD.hold_cert, OLD.part_cert, OLD.hold_terms,
           OLD.part_terms, OLD.hold_sig, OLD.part_sig, OLD.digest)
          IS DISTINCT FROM
          (NEW.id, NEW.ent, NEW.tally_uuid, NEW.side, NEW.status, NEW.version, NEW.revision,
           NEW.tally_date, NEW.memo, NEW.contract, NEW.hold_cert, NEW.part_cert, NEW.hold_terms,
           NEW.part_terms, NEW.hold_sig, NEW.part_sig, NEW.digest)
          OR NEW.updated IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION chips._tallies_bu();
DROP TRIGGER tallies_notify_update ON chips.tallies;
CREATE TRIGGER tallies_notify_update AFTER UPDATE OF status, revision, part_cert, hold_sig, part_sig
    ON chips.tallies
    FOR EACH ROW
    WHEN ((OLD.status, OLD.revision, OLD.part_cert IS NULL, OLD.hold_sig IS NULL, OLD.part_sig IS NULL)
          IS DISTINCT FROM
          (NEW.status, NEW.revision, NEW.part_cert IS NULL, NEW.hold_sig IS NULL, NEW.part_sig IS NULL))
    EXECUTE FUNCTION chips._tallies_notify();

-- The chits row trigger checks a stored chit's signature from its fields in one call.
CREATE FUNCTION chips."_chit_row_verify"(
	"tally" uuid, /* pgrx :: Uuid */
	"by" TEXT, /* & str */
	"kind" TEXT, /* & str */
	"uuid" uuid, /* pgrx :: Uuid */
	"date_ms" bigint, /* i64 */
	"units" bigint, /* Option < i64 > */
	"reference" jsonb, /* Option < JsonB > */
	"memo" TEXT, /* Option < String > */
	"issuer_key" TEXT, /* & str */
	"signature" TEXT /* & str */
) RETURNS bool /* bool */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'chit_row_verify_wrapper';

-- Raises 28000 unless the chit row `c` on half `t` carries its issuer's signature over its
-- document (the fields _chit_doc reads, checked in one call without the jsonb in between).
CREATE FUNCTION chips._chit_verify(c chips.chits, t chips.tallies) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT chips._chit_row_verify(t.tally_uuid, c.issuer, c.chit_type, c.chit_uuid,
                                  (extract(epoch FROM c.chit_date) * 1000)::bigint, c.units,
                                  c.reference, c.memo, chips._key_of(t, c.issuer), c.signature)
$$;

REVOKE ALL ON FUNCTION chips._chit_row_verify(uuid, text, text, uuid, bigint, bigint, jsonb, text, text, text),
    chips._chit_verify(chips.chits, chips.tallies) FROM PUBLIC;

CREATE OR REPLACE FUNCTION chips._chits_biu() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NOT chips.chit_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'chit % cannot go from % to %', OLD.chit_uuid, OLD.status, NEW.status
                USING ERRCODE = '55000';
        END IF;
        IF (NEW.id, NEW.tally_id, NEW.chit_uuid, NEW.chit_type, NEW.issuer, NEW.units, NEW.reference,
            NEW.memo, NEW.chit_date, NEW.value) IS DISTINCT FROM
           (OLD.id, OLD.tally_id, OLD.chit_uuid, OLD.chit_type, OLD.issuer, OLD.units, OLD.reference,
            OLD.memo, OLD.chit_date, OLD.value)
           OR (OLD.lift_id IS NOT NULL AND NEW.lift_id IS DISTINCT FROM OLD.lift_id)
           OR (OLD.signature IS NOT NULL AND NEW.signature IS DISTINCT FROM OLD.signature)
           OR (OLD.chain_idx IS NOT NULL AND (NEW.chain_idx, NEW.chain_prev, NEW.chain_hash)
                                             IS DISTINCT FROM (OLD.chain_idx, OLD.chain_prev, OLD.chain_hash)) THEN
            RAISE EXCEPTION 'chit % cannot change once written', OLD.chit_uuid USING ERRCODE = '55000';
        END IF;
    END IF;
    IF NEW.status = 'good' AND NEW.chit_type <> 'lift'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'good') THEN
        IF NEW.signature IS NULL OR NEW.signature = '' THEN
            RAISE EXCEPTION 'chit % carries no signature', NEW.chit_uuid USING ERRCODE = '28000';
        END IF;
        PERFORM chips._chit_verify(NEW, x) FROM chips.tallies x WHERE x.id = NEW.tally_id;
    END IF;
    NEW.updated := pg_catalog.now();
    RETURN NEW;
END
$$;

-- An empty file is refused like a missing one (it stored a zero-byte file).
CREATE OR REPLACE FUNCTION chips.file_add(data bytea, media_type text DEFAULT 'application/octet-stream')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_digest text;
BEGIN
    IF file_add.data IS NULL OR pg_catalog.length(file_add.data) = 0 THEN
        RAISE EXCEPTION 'no data (a file holds at least one byte)' USING ERRCODE = '22023';
    END IF;
    IF file_add.media_type IS NULL OR file_add.media_type !~ '^[a-zA-Z0-9.+-]+/[a-zA-Z0-9.+-]+(;.{0,100})?$' THEN
        RAISE EXCEPTION 'media type % is not of the form type/subtype', file_add.media_type
            USING ERRCODE = '22023';
    END IF;
    v_digest := chips.b64url_encode(pg_catalog.sha256(file_add.data));
    INSERT INTO chips.files (digest, media_type, data) VALUES (v_digest, file_add.media_type, file_add.data)
    ON CONFLICT (digest) DO NOTHING;
    RETURN v_digest;
END
$$;

-- Rounds write about two thirds less WAL: a round's graph (round_arcs at the coordinator,
-- round_parts at each member) is unlogged, a copy of the members' tallies for one solve. A
-- crash or a failover empties it; the counts below tell the coordinator and the members so, and
-- the round ends void (docs/architecture.md, "A round's graph is unlogged").
ALTER TABLE chips.round_sites ADD COLUMN arcs integer;
UPDATE chips.round_sites y SET arcs = (SELECT count(*) FROM chips.round_arcs a
                                       WHERE a.round_id = y.round_id AND a.agent = y.agent);
ALTER TABLE chips.round_sites ALTER COLUMN arcs SET DEFAULT 0, ALTER COLUMN arcs SET NOT NULL;
ALTER TABLE chips.round_state ADD COLUMN arcs integer;
UPDATE chips.round_state x SET arcs = (SELECT count(*) FROM chips.round_parts p WHERE p.lift_id = x.lift_id);
ALTER TABLE chips.round_arcs SET UNLOGGED;
ALTER TABLE chips.round_parts SET UNLOGGED;

CREATE OR REPLACE FUNCTION chips._recv_round_graph(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds := chips._round_of(msg);
    v_agent text := msg->'from'->>'agent';
    v_part integer := (msg->'object'->>'part')::integer;
    v_parts integer := (msg->'object'->>'parts')::integer;
    x chips.round_sites;
BEGIN
    SELECT * INTO x FROM chips.round_sites y WHERE y.round_id = r.id AND y.agent = v_agent FOR UPDATE;
    IF r.status <> 'collect' OR x.status <> 'invited' THEN
        RETURN 'ignored';    -- too late: the round went on without it
    END IF;
    IF v_parts IS NULL OR v_parts < 1 OR v_part IS NULL OR v_part NOT BETWEEN 1 AND v_parts
       OR pg_catalog.jsonb_typeof(msg->'object'->'arcs') <> 'array'
       OR (v_part = 1 AND pg_catalog.octet_length(chips.b64url_decode(msg->'object'->>'lock')) IS DISTINCT FROM 32) THEN
        RAISE EXCEPTION 'a graph part is {round, part, parts, first, arcs} (and the first, the site''s lock)'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO chips.round_arcs (round_id, agent, k, tail, head, cap, cost)
    SELECT r.id, v_agent, (msg->'object'->>'first')::integer + a.n - 1, a.v->>0, a.v->>1,
           (a.v->>2)::bigint, (a.v->>3)::bigint
    FROM pg_catalog.jsonb_array_elements(msg->'object'->'arcs') WITH ORDINALITY a(v, n);
    UPDATE chips.round_sites y SET parts = v_parts, got = y.got + 1,
        arcs = y.arcs + pg_catalog.jsonb_array_length(msg->'object'->'arcs'),
        bytes = y.bytes + pg_catalog.octet_length(msg::text),
        lock = coalesce(chips.b64url_decode(msg->'object'->>'lock'), y.lock),
        status = CASE WHEN y.got + 1 = v_parts THEN 'graph' ELSE y.status END
    WHERE y.round_id = r.id AND y.agent = v_agent;
    IF NOT EXISTS (SELECT 1 FROM chips.round_sites y WHERE y.round_id = r.id AND y.status = 'invited') THEN
        PERFORM chips._round_flows(r.id);
    END IF;
    RETURN 'graph';
END
$$;

CREATE OR REPLACE FUNCTION chips._round_flows(p_round bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds;
    x record;
    v_chunk jsonb;
    v_n integer;
    v_i integer;
    v_locks jsonb;
BEGIN
    UPDATE chips.round_sites y SET status = 'absent' WHERE y.round_id = p_round AND y.status = 'invited';
    -- round_arcs is unlogged: after a crash or a failover it holds fewer arcs than came in, and
    -- a solve over what is left would leave the emptied sites' arcs out; the round ends void
    IF EXISTS (SELECT 1 FROM chips.round_sites y
               WHERE y.round_id = p_round AND y.status <> 'absent'
                 AND y.arcs <> (SELECT count(*) FROM chips.round_arcs a
                                WHERE a.round_id = p_round AND a.agent = y.agent)) THEN
        PERFORM chips._round_decide(p_round, 'void',
            'the coordinator lost the round''s graph (a crash or a failover)');
        RETURN;
    END IF;
    SELECT pg_catalog.jsonb_agg(chips.b64url_encode(y.lock) ORDER BY y.lock) INTO v_locks
    FROM chips.round_sites y WHERE y.round_id = p_round AND y.status <> 'absent';
    PERFORM chips._round_solve(p_round);
    UPDATE chips.rounds y SET status = 'prepare', solved = pg_catalog.now() WHERE y.id = p_round
    RETURNING * INTO r;
    UPDATE chips.round_sites y SET status = 'solved', attempt = r.attempt
    WHERE y.round_id = p_round AND y.status NOT IN ('absent');
    FOR x IN SELECT y.agent, y.address FROM chips.round_sites y
             WHERE y.round_id = p_round AND y.status = 'solved' ORDER BY y.agent LOOP
        -- the site's nonzero flows, about 2,000 to a message
        SELECT count(*) INTO v_n FROM chips.round_arcs a
        WHERE a.round_id = p_round AND a.agent = x.agent AND a.flow <> 0;
        v_n := greatest((v_n + 1999) / 2000, 1);
        v_i := 0;
        FOR v_chunk IN
            SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(f.k, f.flow) ORDER BY f.k)
                            FILTER (WHERE f.k IS NOT NULL), '[]')
            FROM (SELECT a.k, a.flow, (pg_catalog.row_number() OVER (ORDER BY a.k) - 1) / 2000 AS chunk
                  FROM chips.round_arcs a
                  WHERE a.round_id = p_round AND a.agent = x.agent AND a.flow <> 0) f
            RIGHT JOIN pg_catalog.generate_series(0, v_n - 1) g(chunk) ON g.chunk = f.chunk
            GROUP BY g.chunk ORDER BY g.chunk
        LOOP
            v_i := v_i + 1;
            PERFORM chips._send(chips._round_me(), x.address, 'round', 'flows',
                pg_catalog.jsonb_build_object('round', r.round_uuid, 'attempt', r.attempt,
                                              'part', v_i, 'parts', v_n, 'flows', v_chunk,
                                              'locks', v_locks));
        END LOOP;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION chips._recv_round_open(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.round_settings := chips._round_set();
    o jsonb := msg->'object';
    v_id bigint;
    v_arcs jsonb;
    v_parts integer;
    v_first integer := 0;
    v_i integer := 0;
    v_share bytea;
BEGIN
    IF s.coordinator IS NULL OR s.coordinator->>'agent' IS DISTINCT FROM msg->'from'->>'agent' THEN
        RAISE EXCEPTION 'agent % is not this site''s clearing coordinator', msg->'from'->>'agent'
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM chips.lifts x WHERE x.lift_uuid = (o->>'round')::uuid) THEN
        RETURN 'ignored';
    END IF;
    -- this site's share: revealed only when its part is reserved and its partners agree
    v_share := chips.new_seed();
    INSERT INTO chips.lifts (lift_uuid, kind, status, units, role, origin, find, secret, condition,
                             void_cond, expires, chit_date, attempt)
    VALUES ((o->>'round')::uuid, 'round', 'draft', 0, 'member', msg->'from', msg->'from', v_share,
            pg_catalog.sha256(v_share), chips.b64url_decode(o->>'void'),
            (o->>'expires')::timestamptz, (o->>'date')::timestamptz, 0)
    RETURNING id INTO v_id;
    INSERT INTO chips.round_state (lift_id, arcs) VALUES (v_id, chips._round_graph(v_id, o->>'round', s.secret));
    SELECT count(*) INTO v_parts FROM chips._round_parts_of(v_id);
    FOR v_arcs IN SELECT g.arcs FROM chips._round_parts_of(v_id) g LOOP
        v_i := v_i + 1;
        PERFORM chips._send(chips._round_me(), msg->'from', 'round', 'graph',
            pg_catalog.jsonb_build_object('round', o->>'round', 'part', v_i, 'parts', v_parts,
                                          'first', v_first, 'arcs', v_arcs,
                                          'lock', chips.b64url_encode(pg_catalog.sha256(v_share))));
        v_first := v_first + pg_catalog.jsonb_array_length(v_arcs);
    END LOOP;
    RETURN 'open';
END
$$;

CREATE OR REPLACE FUNCTION chips._recv_round_flows(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._round_lift(msg);
    o jsonb := msg->'object';
    v_attempt integer := (o->>'attempt')::integer;
    st chips.round_state;
BEGIN
    IF l.status NOT IN ('draft', 'pend') OR v_attempt IS NULL OR v_attempt < l.attempt THEN
        RETURN 'ignored';
    END IF;
    IF v_attempt > l.attempt THEN
        -- a new attempt: what this site reserved for the last one goes, piece by piece, before
        -- this one is reserved
        UPDATE chips.round_parts p SET flow = 0 WHERE p.lift_id = l.id AND p.flow <> 0;
        UPDATE chips.round_state x SET parts = NULL, got = 0, partners = '{}', work = NULL
        WHERE x.lift_id = l.id;
        IF EXISTS (SELECT 1 FROM chips.round_moves m WHERE m.lift_id = l.id AND m.stage = 1) THEN
            PERFORM chips._round_work_on(l.id, 'release');
        ELSE
            DELETE FROM chips.round_moves m WHERE m.lift_id = l.id;
        END IF;
        UPDATE chips.lifts x SET attempt = v_attempt, status = 'draft', units = 0, tallies = '{}', debtors = '{}'
        WHERE x.id = l.id RETURNING * INTO l;
    END IF;
    -- the round commits only with the shares of every member whose lock is listed here, this
    -- site's among them
    IF pg_catalog.jsonb_typeof(o->'locks') <> 'array'
       OR NOT (o->'locks') ? chips.b64url_encode(pg_catalog.sha256(l.secret)) THEN
        RAISE EXCEPTION 'the flows of round % do not list this site''s lock', l.lift_uuid USING ERRCODE = '22023';
    END IF;
    UPDATE chips.lifts x SET condition = chips._round_condition(o->'locks') WHERE x.id = l.id;
    UPDATE chips.round_parts p SET flow = (f.v->>1)::bigint
    FROM pg_catalog.jsonb_array_elements(o->'flows') f(v)
    WHERE p.lift_id = l.id AND p.k = (f.v->>0)::integer;
    UPDATE chips.round_state x SET parts = (o->>'parts')::integer, got = x.got + 1
    WHERE x.lift_id = l.id RETURNING * INTO st;
    -- (while the last attempt's reservation is released, that release prepares this one)
    IF st.got = st.parts AND st.work IS NULL AND st.prepared IS DISTINCT FROM l.attempt THEN
        PERFORM chips._round_prepare(l.id);
    END IF;
    RETURN 'flows';
END
$$;

CREATE OR REPLACE FUNCTION chips._round_prepare(p_lift bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v jsonb;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_lift;
    UPDATE chips.round_state x SET prepared = l.attempt WHERE x.lift_id = l.id;
    BEGIN
        -- round_parts is unlogged: after a crash or a failover this site no longer knows what
        -- its arcs were, and refuses its part
        IF (SELECT x.arcs FROM chips.round_state x WHERE x.lift_id = l.id)
           IS DISTINCT FROM (SELECT count(*) FROM chips.round_parts p WHERE p.lift_id = l.id) THEN
            RAISE EXCEPTION 'this site lost its part of round % (a crash or a failover)', l.lift_uuid
                USING ERRCODE = '22023';
        END IF;
        v := chips._round_check(p_lift);
    EXCEPTION WHEN invalid_parameter_value THEN
        -- the flows themselves do not hold: nothing is reserved for them, and the round must end
        -- void (its lift here too, piece by piece: an earlier attempt may have left some)
        PERFORM chips._send(chips._round_me(), l.origin, 'round', 'refuse', pg_catalog.jsonb_build_object(
            'round', l.lift_uuid, 'attempt', l.attempt, 'reason', SQLERRM));
        PERFORM chips._round_work_on(l.id, 'void', SQLERRM);
        RETURN;
    END;
    IF v ? 'caps' THEN
        PERFORM chips._send(chips._round_me(), l.origin, 'round', 'refuse', pg_catalog.jsonb_build_object(
            'round', l.lift_uuid, 'attempt', l.attempt, 'caps', v->'caps'));
        RETURN;
    END IF;
    DELETE FROM chips.round_moves m WHERE m.lift_id = l.id;
    INSERT INTO chips.round_moves (lift_id, n, tally, local, flow, by, units, debtor)
    SELECT l.id, m.n, m.tally, m.local, m.flow, m.by, m.units, m.debtor
    FROM ROWS FROM (pg_catalog.jsonb_to_recordset(v->'moves')
                    AS (tally uuid, local boolean, flow bigint, by text, units bigint, debtor text))
         WITH ORDINALITY m(tally, local, flow, by, units, debtor, n);
    PERFORM chips._round_work_on(l.id, 'reserve');
END
$$;

-- The tally halves held here with pending chits of lift `p_id`, locked in id order: all of them,
-- or (with `p_tallies`) those of these tallies, each looked up by its own chits. (OFFSET 0 keeps
-- the EXISTS a probe per tally: without it the planner, whose statistics have not seen a
-- round's fresh chits, joined every pending chit of the lift to the tallies, in every piece.)
CREATE OR REPLACE FUNCTION chips._lift_halves(p_id bigint, p_tallies uuid[] DEFAULT NULL) RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    v bigint[];
BEGIN
    IF p_tallies IS NULL THEN
        SELECT coalesce(pg_catalog.array_agg(x.id ORDER BY x.id), '{}') INTO v
        FROM (SELECT x.id FROM chips.tallies x
              WHERE x.id IN (SELECT y.tally_id FROM chips.chits y WHERE y.lift_id = p_id AND y.status = 'pend')
              ORDER BY x.id FOR UPDATE) x;
    ELSE
        SELECT coalesce(pg_catalog.array_agg(x.id ORDER BY x.id), '{}') INTO v
        FROM (SELECT x.id FROM chips.tallies x
              WHERE x.tally_uuid = ANY (p_tallies)
                AND EXISTS (SELECT 1 FROM chips.chits y
                            WHERE y.tally_id = x.id AND y.lift_id = p_id AND y.status = 'pend'
                            OFFSET 0)
              ORDER BY x.id FOR UPDATE) x;
    END IF;
    RETURN v;
END
$$;


-- Chain messages: upd (foil -> stock), ack and nak (stock -> foil).
CREATE OR REPLACE FUNCTION chips._recv_chain(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._chit_half(msg, (msg->'object'->>'tally')::uuid);
    u record;
BEGIN
    CASE msg->'object'->>'cmd'
    WHEN 'upd' THEN
        SELECT * INTO u FROM chips._chain_upd(t, msg->'object'->'chits');
        PERFORM chips._chain_write(u.ids, u.idxs, u.priors, u.hashes);
        IF u.ack IS NULL THEN
            RETURN 'nak';
        END IF;
        PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
                            u.ack || '{"cmd": "ack"}');
        RETURN 'upd';
    WHEN 'ack' THEN
        RETURN chips._chain_ack(t, (msg->'object'->>'index')::integer, msg->'object'->>'hash');
    WHEN 'nak' THEN
        IF t.side <> 'foil' THEN
            RETURN 'ignored';
        END IF;
        UPDATE chips.tallies x SET chain_conf = least(x.chain_conf, (msg->'object'->>'index')::integer)
        WHERE x.id = t.id;
        PERFORM chips._chain_send(t.id);
        RETURN 'nak';
    ELSE
        RAISE EXCEPTION 'unknown chain command %', msg->'object'->>'cmd' USING ERRCODE = '22023';
    END CASE;
END
$$;

-- Chain updates of many tallies with one partner site in one message each way (a lift or a
-- clearing round settles thousands of tallies at once; one message per tally would be most of
-- its cost): `{cmd: upd, tallies: [{tally, chits}]}` from the foil halves' site, answered by
-- `{cmd: ack, tallies: [{tally, index, hash}]}`. Each tally's entries and acknowledgement are
-- those of chit/chain; site to site (cuid `_site`), each tally one this pair of sites shares.
CREATE OR REPLACE FUNCTION chips._recv_chains(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    x jsonb;
    t chips.tallies;
    u record;
    v_acks jsonb := '[]';
    v_naked bigint[] := '{}';
    v_ids bigint[] := '{}';
    v_idxs integer[] := '{}';
    v_priors bytea[] := '{}';
    v_hashes bytea[] := '{}';
BEGIN
    IF msg->'object'->>'cmd' NOT IN ('upd', 'ack', 'nak')
       OR pg_catalog.jsonb_typeof(msg->'object'->'tallies') IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'chain updates are {cmd: upd, ack or nak, tallies: [...]}' USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM chips.tallies y
    WHERE y.tally_uuid IN (SELECT (z.value->>'tally')::uuid FROM pg_catalog.jsonb_array_elements(msg->'object'->'tallies') z)
    ORDER BY y.id FOR UPDATE;
    FOR x IN SELECT z.value FROM pg_catalog.jsonb_array_elements(msg->'object'->'tallies') z LOOP
        SELECT * INTO t FROM chips.tallies y
        WHERE y.tally_uuid = (x->>'tally')::uuid AND y.part_ent IS NULL
          AND y.part_cert->'chad'->>'agent' = msg->'from'->>'agent'
          AND y.hold_cert->'chad'->>'agent' = msg->'to'->>'agent';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no tally % here with agent %', x->>'tally', msg->'from'->>'agent'
                USING ERRCODE = '42704';
        END IF;
        IF t.status NOT IN ('open', 'closing', 'closed') THEN
            RAISE EXCEPTION 'tally % is not open here yet', t.tally_uuid USING ERRCODE = '55000';
        END IF;
        IF msg->'object'->>'cmd' = 'ack' THEN
            PERFORM chips._chain_ack(t, (x->>'index')::integer, x->>'hash');
        ELSIF msg->'object'->>'cmd' = 'nak' THEN
            -- as chit/chain nak, the sends gathered below
            IF t.side = 'foil' THEN
                UPDATE chips.tallies y SET chain_conf = least(y.chain_conf, (x->>'index')::integer)
                WHERE y.id = t.id;
                v_naked := v_naked || t.id;
            END IF;
        ELSE
            SELECT * INTO u FROM chips._chain_upd(t, x->'chits');
            v_ids := v_ids || u.ids;
            v_idxs := v_idxs || u.idxs;
            v_priors := v_priors || u.priors;
            v_hashes := v_hashes || u.hashes;
            IF u.ack IS NOT NULL THEN
                v_acks := v_acks || pg_catalog.jsonb_build_array(u.ack);
            END IF;
        END IF;
    END LOOP;
    -- every tally's entries into their places at once
    PERFORM chips._chain_write(v_ids, v_idxs, v_priors, v_hashes);
    PERFORM chips._chains_send(v_naked);
    -- the acknowledgements, about 300 to a message
    PERFORM chips._send(msg->'to', msg->'from', 'chit', 'chains',
                        pg_catalog.jsonb_build_object('cmd', 'ack', 'tallies', pg_catalog.jsonb_agg(a.v ORDER BY a.n)))
    FROM pg_catalog.jsonb_array_elements(v_acks) WITH ORDINALITY a(v, n)
    GROUP BY (a.n - 1) / 300 ORDER BY (a.n - 1) / 300;
    RETURN msg->'object'->>'cmd';
END
$$;

-- chips._chit_doc(chips.chits), the one-argument form, had no caller left: every caller names
-- the tally's uuid it already holds (chips._chit_doc(chits, uuid)).
DROP FUNCTION chips._chit_doc(chips.chits);

-- Remember a partner's agent (and where it listens) so the sidecar can reach it.
CREATE OR REPLACE FUNCTION chips._agent_seen(p_chad jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    -- Every message to a peer passes here, and the agent is nearly always known with nothing to
    -- fill in: one index probe then, no write (an INSERT ... ON CONFLICT DO NOTHING and an UPDATE
    -- that finds nothing cost a message 0.484 ms, pg_stat_user_functions over a 5-site demo).
    IF EXISTS (SELECT 1 FROM chips.agents a
               WHERE a.agent = p_chad->>'agent'
                 AND (a.local OR ((a.host IS NOT NULL OR p_chad->>'host' IS NULL)
                                  AND (a.port IS NOT NULL OR p_chad->>'port' IS NULL)))) THEN
        RETURN;
    END IF;
    -- It must not lock the agent's row when nothing changes (ON CONFLICT DO UPDATE would, to
    -- commit), or every transaction sending to one peer would wait for the last, and deadlock
    -- with one that locked tallies first.
    INSERT INTO chips.agents (agent, host, port)
    VALUES (p_chad->>'agent', p_chad->>'host', (p_chad->>'port')::integer)
    ON CONFLICT (agent) DO NOTHING;
    UPDATE chips.agents a
    SET host = coalesce(a.host, p_chad->>'host'), port = coalesce(a.port, (p_chad->>'port')::integer)
    WHERE a.agent = p_chad->>'agent' AND NOT a.local
      AND ((a.host IS NULL AND p_chad->>'host' IS NOT NULL)
           OR (a.port IS NULL AND p_chad->>'port' IS NOT NULL));
END
$$;

-- A notification names the message's lane.
CREATE OR REPLACE FUNCTION chips._outbox_notify() RETURNS trigger
LANGUAGE plpgsql
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    -- the lane lets the sidecar claim only that lane, and not at all while it is sending to
    -- that peer's lane (it claims again when that send ends)
    PERFORM pg_catalog.pg_notify('chips_agent', pg_catalog.json_build_object(
        'outbox', NEW.id, 'from', NEW.from_agent, 'to', NEW.to_agent,
        'lane', chips._lane(NEW.target, NEW.action))::text);
    RETURN NULL;
END
$$;

-- Route discovery's hot SQL functions become PL/pgSQL (chips._route_total, new in this version,
-- is created so above): a PL/pgSQL function's plans are kept for the session, a SQL function's
-- are made again at every call.
CREATE OR REPLACE FUNCTION chips._local_arcs(OUT payers text[], OUT receivers text[], OUT caps bigint[],
                                  OUT tallies uuid[])
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    -- (PL/pgSQL, not SQL: its plan is kept for the session; a SQL function's is made again at
    -- every call: EXPLAIN ANALYZE of this statement on a 5-site demo's site, planning 1.827 ms,
    -- execution 0.318 ms)
    SELECT coalesce(array_agg(p.ent ORDER BY h.id), '{}'), coalesce(array_agg(h.ent ORDER BY h.id), '{}'),
           coalesce(array_agg(chips._recv_capacity(h, p.clutch) ORDER BY h.id), '{}'),
           coalesce(array_agg(h.tally_uuid ORDER BY h.id), '{}')
    INTO payers, receivers, caps, tallies
    FROM chips.tallies h JOIN chips.tallies p ON p.tally_uuid = h.tally_uuid AND p.side <> h.side
    WHERE h.status = 'open' AND p.status = 'open';
END
$$;

CREATE OR REPLACE FUNCTION chips._find_blind(p_query text, p_find jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN CASE WHEN p_find ? 'tag' THEN p_find
                ELSE pg_catalog.jsonb_build_object('agent', p_find->>'agent',
                         'tag', chips._find_tag(p_query, p_find->>'cuid', p_find->>'agent')) END;
END
$$;

CREATE OR REPLACE FUNCTION chips._find_local(p_query text, p_find jsonb) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT u.ent FROM chips.users u JOIN chips.agents a ON a.agent = u.agent AND a.local
            WHERE u.agent = p_find->>'agent'
              AND CASE WHEN p_find ? 'tag' THEN chips._find_tag(p_query, u.cuid, u.agent) = p_find->>'tag'
                       ELSE u.cuid = p_find->>'cuid' END
            ORDER BY u.ent LIMIT 1);
END
$$;
