-- chips install SQL, part 5: distributed lifts (docs/protocol.md, "Distributed lifts").
--
-- A lift that crosses sites goes over tallies whose halves live at different sites. Each site
-- carries it over its own tallies (a segment: from where it enters to where it leaves), and the
-- sites agree through peer messages, each applied here in one transaction:
--
--   discovery  query (over a tally, downstream) / answer (back upstream): is there a route from
--              here to `find` that carries `units`? Bounded by depth, fan-out and expiry; tallies
--              named by per-query link ids; found answers cached.
--   prepare    (downstream) every site reserves its segment with pending lift chits, and passes
--              on a shorter expiry; a linear lift's terminus answers `ready` to the origin
--              directly; a circular lift's prepare comes back to the origin.
--   decision   only the origin decides: good (it reveals the secret whose SHA-256 is the lift's
--              condition) if the lift was ready before its expiry, else void (it reveals the void
--              secret). `commit` / `void` travel downstream; a site that has prepared waits for
--              them, and past its expiry asks the origin directly (`status`).
--   reject     a site that cannot carry the lift tells its upstream, which passes it on to the
--              origin; the origin then decides void.
--
-- A site never voids a segment on its own once it has passed the lift on, and never commits
-- without the secret: so both halves of every tally of a lift end the same way.

------------------------------------------------------------------------------------------------
-- Settings and capacities
------------------------------------------------------------------------------------------------

-- The settings; the first call writes the row of defaults (the table's column defaults), so a
-- pg_dump restore never collides with a row the install made.
CREATE FUNCTION chips._lift_set() RETURNS chips.lift_settings
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.lift_settings;
BEGIN
    SELECT * INTO s FROM chips.lift_settings;
    IF NOT FOUND THEN
        INSERT INTO chips.lift_settings DEFAULT VALUES ON CONFLICT (one) DO NOTHING;
        SELECT * INTO s FROM chips.lift_settings;
    END IF;
    RETURN s;
END
$$;

-- Settings of distributed lifts. NULL leaves a setting as it is.
CREATE FUNCTION chips.lift_configure(life interval DEFAULT NULL, query_life interval DEFAULT NULL,
                                     hop_step interval DEFAULT NULL, min_window interval DEFAULT NULL,
                                     max_depth integer DEFAULT NULL, fanout integer DEFAULT NULL,
                                     cache_life interval DEFAULT NULL, ask_every interval DEFAULT NULL,
                                     parts integer DEFAULT NULL, tries integer DEFAULT NULL)
RETURNS chips.lift_settings
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    r chips.lift_settings;
BEGIN
    PERFORM chips._lift_set();
    BEGIN
        UPDATE chips.lift_settings x SET
            life = coalesce(lift_configure.life, x.life),
            query_life = coalesce(lift_configure.query_life, x.query_life),
            hop_step = coalesce(lift_configure.hop_step, x.hop_step),
            min_window = coalesce(lift_configure.min_window, x.min_window),
            max_depth = coalesce(lift_configure.max_depth, x.max_depth),
            fanout = coalesce(lift_configure.fanout, x.fanout),
            cache_life = coalesce(lift_configure.cache_life, x.cache_life),
            ask_every = coalesce(lift_configure.ask_every, x.ask_every),
            parts = coalesce(lift_configure.parts, x.parts),
            tries = coalesce(lift_configure.tries, x.tries)
        RETURNING * INTO r;
    EXCEPTION WHEN check_violation THEN
        RAISE EXCEPTION 'life must be at least 1 second, query_life 100 ms, ask_every 100 ms; hop_step, min_window and cache_life not negative; max_depth and fanout within 1..64, parts within 1..16, tries within 1..8'
            USING ERRCODE = '22023';
    END;
    RETURN r;
END
$$;

-- What a half can take from its partner now (the holder's position rises): its lift capacity
-- (chips._lift_capacity; free capacity unless a margin and costed are given), counting pending
-- chits against it.
CREATE FUNCTION chips._recv_capacity(h chips.tallies, p_partner_clutch double precision,
                                     p_max_margin double precision DEFAULT 0,
                                     p_costed boolean DEFAULT false) RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN h.status <> 'open' THEN 0 ELSE
        chips._lift_capacity(greatest(h.net_good, h.net_pend), h.target, h.bound, h.reward,
                             coalesce(p_partner_clutch, 0),
                             coalesce((h.hold_terms->>'limit')::bigint, 0), p_max_margin, p_costed) END
$$;

-- What the partner of a half at another site can take from its holder (the holder pays): the
-- same rule, from the partner's trading variables (its setting chits) and the limit it granted.
CREATE FUNCTION chips._send_capacity(p chips.tallies) RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN p.status <> 'open' THEN 0 ELSE
        chips._lift_capacity(-least(p.net_good, p.net_pend),
                             coalesce((p.part_sets->>'target')::bigint, 0),
                             coalesce((p.part_sets->>'bound')::bigint, 0),
                             coalesce((p.part_sets->>'reward')::double precision, 0),
                             p.clutch, coalesce((p.part_terms->>'limit')::bigint, 0), 0, false) END
$$;

-- This site's arcs: one per open local tally and direction, value moving payer -> receiver.
CREATE FUNCTION chips._local_arcs(OUT payers text[], OUT receivers text[], OUT caps bigint[],
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

-- A site's segment of a lift: a shortest route over local tallies from one user to another that
-- carries `units`, after the tally p_in it arrives on (held by p_from, its payer at another site)
-- and before the tally p_out it leaves on (held by p_to, its receiver at another site): the
-- steps' tallies, payers, receivers (null: at another site) and capacities in order; ok false
-- when no local route carries the units.
CREATE FUNCTION chips._route(p_from text, p_to text, p_units bigint, p_in uuid DEFAULT NULL,
                             p_out uuid DEFAULT NULL, OUT ok boolean, OUT tallies uuid[],
                             OUT payers text[], OUT receivers text[], OUT caps bigint[])
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    a record;
    v_path integer[];
    h chips.tallies;
BEGIN
    SELECT * INTO a FROM chips._local_arcs();
    v_path := chips._route_path(a.payers, a.receivers, a.caps, p_from, p_to, p_units);
    ok := v_path IS NOT NULL;
    SELECT coalesce(array_agg(a.tallies[i] ORDER BY n), '{}'), coalesce(array_agg(a.payers[i] ORDER BY n), '{}'),
           coalesce(array_agg(a.receivers[i] ORDER BY n), '{}'), coalesce(array_agg(a.caps[i] ORDER BY n), '{}')
    INTO tallies, payers, receivers, caps
    FROM pg_catalog.unnest(coalesce(v_path, '{}')) WITH ORDINALITY o(i, n);
    IF p_in IS NOT NULL THEN
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_in AND x.ent = p_from AND x.part_ent IS NULL;
        tallies := p_in || tallies;
        payers := NULL::text || payers;
        receivers := p_from || receivers;
        caps := coalesce(chips._recv_capacity(h, (h.part_sets->>'clutch')::double precision), 0) || caps;
    END IF;
    IF p_out IS NOT NULL THEN
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_out AND x.ent = p_to AND x.part_ent IS NULL;
        tallies := tallies || p_out;
        payers := payers || p_to;
        receivers := receivers || NULL::text;
        caps := caps || coalesce(chips._send_capacity(h), 0);
    END IF;
END
$$;

-- A CHIP address given as jsonb, checked; 22023 for a malformed one.
CREATE FUNCTION chips._chad(p_chad jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_chad IS NULL OR pg_catalog.jsonb_typeof(p_chad) <> 'object' THEN
        RAISE EXCEPTION 'a CHIP address is an object {cuid, agent, host?, port?}' USING ERRCODE = '22023';
    END IF;
    RETURN chips.address_check(p_chad);
END
$$;

------------------------------------------------------------------------------------------------
-- Chits of a lift, and settling them
------------------------------------------------------------------------------------------------

-- A pending lift chit on every half of `p_tally` held here, paid by `p_payer`: `p_doc` when the
-- partner site wrote it, else a new one. Returns the document.
CREATE FUNCTION chips._lift_chit(p_lift chips.lifts, p_tally uuid, p_payer text, p_doc jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    h chips.tallies;
    v_doc jsonb := p_doc;
BEGIN
    IF v_doc IS NULL THEN
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_tally AND x.ent = p_payer;
        v_doc := chips.chit_doc_make(p_tally, h.side, 'lift', pg_catalog.gen_random_uuid(),
                                     (extract(epoch FROM pg_catalog.now()) * 1000)::bigint,
                                     p_lift.units, pg_catalog.jsonb_build_object('lift', p_lift.lift_uuid), NULL);
    END IF;
    FOR h IN SELECT * FROM chips.tallies x WHERE x.tally_uuid = p_tally ORDER BY x.id LOOP
        PERFORM chips._chit_insert(h, v_doc, 'pend', NULL, p_lift.id);
    END LOOP;
    RETURN v_doc;
END
$$;

-- Writes a segment (chips._route) of lift `l`: a pending lift chit on every step (on the step
-- whose payer is at another site, that site's chit `p_in_doc`); records the steps. Returns the
-- new chit of the last step (the one the next site gets with the prepare).
CREATE FUNCTION chips._lift_write(l chips.lifts, p_tallies uuid[], p_payers text[], p_receivers text[],
                                  p_in_doc jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb;
BEGIN
    UPDATE chips.lifts x SET tallies = x.tallies || p_tallies, debtors = x.debtors || p_receivers
    WHERE x.id = l.id;
    FOR i IN 1..coalesce(pg_catalog.cardinality(p_tallies), 0) LOOP
        v_doc := chips._lift_chit(l, p_tallies[i], p_payers[i], CASE WHEN p_payers[i] IS NULL THEN p_in_doc END);
    END LOOP;
    RETURN v_doc;
END
$$;

-- Locks the halves of `p_tallies` held here (in id order: no deadlock with another lift or a
-- clearing pass) and checks that step i can carry `p_units` from payers[i] to receivers[i];
-- the first step that cannot, or 0.
CREATE FUNCTION chips._lift_lock(p_tallies uuid[], p_payers text[], p_receivers text[], p_units bigint)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    h chips.tallies;
    p chips.tallies;
    v_cap bigint;
BEGIN
    PERFORM 1 FROM chips.tallies x WHERE x.tally_uuid = ANY (p_tallies) ORDER BY x.id FOR UPDATE;
    FOR i IN 1..coalesce(pg_catalog.cardinality(p_tallies), 0) LOOP
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_tallies[i] AND x.ent = p_receivers[i];
        SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = p_tallies[i] AND x.ent = p_payers[i];
        v_cap := CASE
            WHEN h.id IS NOT NULL AND p.id IS NOT NULL THEN chips._recv_capacity(h, p.clutch)
            WHEN h.id IS NOT NULL THEN chips._recv_capacity(h, (h.part_sets->>'clutch')::double precision)
            WHEN p.id IS NOT NULL THEN chips._send_capacity(p)
            ELSE 0 END;
        IF coalesce(v_cap, 0) < p_units OR coalesce(h.status, p.status) <> 'open' THEN
            RETURN i;
        END IF;
    END LOOP;
    RETURN 0;
END
$$;

-- The lift becomes good (every chit of it here good, chained) or void, once. Set-based, whatever
-- the number of chits (a clearing round's lift has one on every tally half it moves here): the
-- chits change status in one statement (the chits triggers move the balances and tell the
-- holders), then take their places in the chains where this site orders them (every foil half;
-- the stock half of a tally between two users here, to the same hash), one statement per chit
-- a half gets from this lift (one, for every kind of lift there is); the foil halves of tallies
-- with other sites send their chain updates, gathered per partner site (chit/chains).
-- With `p_tallies`, only the chits on those tallies (both halves of a tally between two users
-- here together), and the lift keeps its status: a round's part settles piece by piece
-- (chips.round_work), each piece committed on its own, once the decision is known; what it
-- lowers was held back from the holders since it was reserved. The call without them, last,
-- sends the chain updates and gives the lift its status.
CREATE FUNCTION chips._lift_settle(p_id bigint, p_status text, p_reason text DEFAULT NULL,
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

-- The tally halves held here with pending chits of lift `p_id`, locked in id order: all of them,
-- or (with `p_tallies`) those of these tallies, each looked up by its own chits. (OFFSET 0 keeps
-- the EXISTS a probe per tally: without it the planner, whose statistics have not seen a
-- round's fresh chits, joined every pending chit of the lift to the tallies, in every piece.)
CREATE FUNCTION chips._lift_halves(p_id bigint, p_tallies uuid[] DEFAULT NULL) RETURNS bigint[]
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

-- A round's attempt that will not be made good here: what its pieces reserved is released (on
-- `p_tallies`, or all of it), and the lift stays, for the coordinator's next attempt.
CREATE FUNCTION chips._lift_release(p_id bigint, p_tallies uuid[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_halves bigint[] := chips._lift_halves(p_id, p_tallies);
BEGIN
    UPDATE chips.chits y SET status = 'void'
    WHERE y.lift_id = p_id AND y.status = 'pend' AND y.tally_id = ANY (v_halves);
END
$$;

-- Sends a lift message over a tally held here, to its partner.
CREATE FUNCTION chips._lift_send(p_tally uuid, p_action text, p_object jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.tally_uuid = p_tally AND x.part_ent IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tally % has no partner at another site', p_tally USING ERRCODE = '42704';
    END IF;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'lift', p_action, p_object);
END
$$;

-- The lift whose decision decides lift `l`: its payment, for a part of a split payment.
CREATE FUNCTION chips._lift_payment(l chips.lifts) RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT coalesce((SELECT x.id FROM chips.lifts x WHERE x.lift_uuid = l.parent AND x.role = 'origin'), l.id)
$$;

-- Whether the way lift `l` (at its origin) took is dead while its payment lives on: a part
-- refused on the way and replaced, or a payment that was sent whole, refused, and now goes in
-- parts (or seeks again, to go in parts). Its lift uuid is then never committed.
CREATE FUNCTION chips._lift_dead(l chips.lifts) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT (l.parent IS NOT NULL AND l.status = 'void'
            AND (SELECT x.status FROM chips.lifts x WHERE x.id = chips._lift_payment(l)) <> 'void')
        OR (l.parent IS NULL AND l.kind = 'linear' AND l.tally_out IS NULL
            AND EXISTS (SELECT 1 FROM chips.chits y WHERE y.lift_id = l.id))
$$;

-- The origin decides: good (only if the lift is ready, before its expiry) or void; the decision
-- travels downstream with the secret that opens its lock.
CREATE FUNCTION chips._lift_decide(p_id bigint, p_status text, p_reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id FOR UPDATE;
    IF l.status IN ('good', 'void') THEN
        RETURN;
    END IF;
    -- a split payment: one decision for every part
    PERFORM chips._lift_decide(x.id, p_status, p_reason) FROM chips.lifts x WHERE x.parent = l.lift_uuid ORDER BY x.id;
    -- the decision goes into the outbox before the chain updates settling writes: the partner
    -- downstream applies it first
    IF l.tally_out IS NOT NULL THEN
        PERFORM chips._lift_send(l.tally_out, CASE p_status WHEN 'good' THEN 'commit' ELSE 'void' END,
            pg_catalog.jsonb_build_object('lift', l.lift_uuid, 'secret', chips.b64url_encode(
                CASE p_status WHEN 'good' THEN l.secret ELSE l.void_secret END)));
    END IF;
    PERFORM chips._lift_settle(p_id, p_status, p_reason);
END
$$;

------------------------------------------------------------------------------------------------
-- Discovery
------------------------------------------------------------------------------------------------

-- The payee of a route query as it travels: its agent (the site where the query ends) and a tag
-- that only a site which knows the payee's cuid can match, salted by the query so the sites a
-- query reaches can neither read the payee nor tell two queries for the same payee apart:
-- tag = base64url(SHA-256(JSON text of [query, cuid, agent])). A blinded find passes on as it came.
CREATE FUNCTION chips._find_tag(p_query text, p_cuid text, p_agent text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT chips.b64url_encode(pg_catalog.sha256(pg_catalog.convert_to(
        pg_catalog.jsonb_build_array(p_query, p_cuid, p_agent)::text, 'UTF8')))
$$;

CREATE FUNCTION chips._find_blind(p_query text, p_find jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN CASE WHEN p_find ? 'tag' THEN p_find
                ELSE pg_catalog.jsonb_build_object('agent', p_find->>'agent',
                         'tag', chips._find_tag(p_query, p_find->>'cuid', p_find->>'agent')) END;
END
$$;

-- The local user a route query is for (null: not one of ours): matched by tag, or by cuid when
-- the find is in clear (the origin's own row).
CREATE FUNCTION chips._find_local(p_query text, p_find jsonb) RETURNS text
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

-- Remembers that tally p_tally leads to the payee `p_find` (in clear: only a site that already
-- knows the payee, the origin or a site the lift itself passes, keeps a cache).
CREATE FUNCTION chips._route_remember(p_find jsonb, p_tally uuid, p_max bigint, p_hops integer)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO chips.lift_route_cache AS c (find_cuid, find_agent, tally, max, hops, expires)
    SELECT p_find->>'cuid', p_find->>'agent', p_tally, p_max, p_hops,
           pg_catalog.now() + (SELECT s.cache_life FROM chips._lift_set() s)
    WHERE p_find ? 'cuid' AND p_max IS NOT NULL AND p_hops IS NOT NULL
    ON CONFLICT (find_agent, find_cuid, tally) DO UPDATE
        SET max = EXCLUDED.max, hops = EXCLUDED.hops, expires = EXCLUDED.expires
$$;

-- Exits from `p_from` towards `p_find`, best first: tallies with a partner at another site, held
-- by a user the lift can reach from p_from, that can carry p_units out; cached routes first.
CREATE FUNCTION chips._lift_exits(p_from text, p_units bigint, p_find jsonb, p_except uuid)
RETURNS TABLE (tally uuid, holder text, hops integer, cached boolean, max bigint)
LANGUAGE sql STABLE
AS $$
    WITH a AS (SELECT * FROM chips._local_arcs()),
         r AS (SELECT x.ent, x.hops FROM a, chips._route_reach(a.payers, a.receivers, a.caps, p_from, p_units) x)
    SELECT t.tally_uuid, t.ent, r.hops, c.tally IS NOT NULL, least(c.max, chips._send_capacity(t))
    FROM chips.tallies t
    JOIN r ON r.ent = t.ent
    LEFT JOIN chips.lift_route_cache c ON c.tally = t.tally_uuid AND c.find_cuid = p_find->>'cuid'
         AND c.find_agent = p_find->>'agent' AND c.expires > pg_catalog.now() AND c.max >= p_units
    WHERE t.part_ent IS NULL AND t.status = 'open' AND t.tally_uuid IS DISTINCT FROM p_except
      AND chips._send_capacity(t) >= p_units
    ORDER BY (c.tally IS NOT NULL) DESC, c.hops NULLS LAST, r.hops, t.id
$$;

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

-- Answers a query upstream (over the tally it came in on), or, asked here, starts the lift.
CREATE FUNCTION chips._route_answer(p_in bigint) RETURNS void
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
CREATE FUNCTION chips._route_reply(r chips.lift_routes) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._lift_send(r.tally, 'answer', pg_catalog.jsonb_build_object(
        'query', r.query, 'link', chips._link_id(r.query, r.tally),
        'found', r.status = 'found', 'max', r.max, 'hops', r.hops, 'total', r.total));
END
$$;

-- Passes a query on from `p_from` over up to fanout exits it was not sent on yet; answers at
-- once from the cache. Returns how many exits it asked (0: answered none).
CREATE FUNCTION chips._route_ask(p_in bigint, p_from text, p_depth integer) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.lift_routes;
    s chips.lift_settings := chips._lift_set();
    e record;
    n integer := 0;
BEGIN
    SELECT * INTO r FROM chips.lift_routes x WHERE x.id = p_in;
    IF p_depth >= 1 THEN
        FOR e IN SELECT * FROM chips._lift_exits(p_from, r.units, r.find, r.tally) x
                 WHERE NOT EXISTS (SELECT 1 FROM chips.lift_routes y
                                   WHERE y.query = r.query AND y.tally = x.tally)
                 LIMIT s.fanout LOOP
            -- a circle goes out at once on a way the cache knows; a payment always asks (`want`
            -- set): the ways beyond an exit move with every payment, and a way learnt a minute
            -- ago is too often gone by the time the prepare follows it
            IF e.cached AND r.want IS NULL THEN
                INSERT INTO chips.lift_routes (query, dir, tally, find, units, expires, status, max, hops, asker)
                SELECT r.query, 'out', e.tally, r.find, r.units, r.expires, 'found', e.max, c.hops, r.id
                FROM chips.lift_route_cache c
                WHERE c.tally = e.tally AND c.find_cuid = r.find->>'cuid' AND c.find_agent = r.find->>'agent'
                ON CONFLICT DO NOTHING;
                n := n + 1;
                EXIT;   -- a cached route answers at once
            END IF;
            INSERT INTO chips.lift_routes (query, dir, tally, find, units, expires, asker)
            VALUES (r.query, 'out', e.tally, r.find, r.units, r.expires, r.id)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                PERFORM chips._lift_send(e.tally, 'query', pg_catalog.jsonb_build_object(
                    'query', r.query, 'link', chips._link_id(r.query, e.tally),
                    'find', chips._find_blind(r.query, r.find),
                    'units', r.units, 'want', coalesce(r.want, r.units), 'depth', p_depth - 1,
                    'expires', (extract(epoch FROM r.expires) * 1000)::bigint));
                n := n + 1;
            END IF;
        END LOOP;
    END IF;
    PERFORM chips._route_answer(p_in);
    RETURN n;
END
$$;

-- Our half of the tally a lift message names by link id, held by the addressee.
CREATE FUNCTION chips._link_half(msg jsonb) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
BEGIN
    SELECT * INTO t FROM chips.tallies x
    WHERE x.ent = chips._local_ent(msg->'to') AND x.part_ent IS NULL
      AND x.part_cert->'chad'->>'cuid' = msg->'from'->>'cuid'
      AND x.part_cert->'chad'->>'agent' = msg->'from'->>'agent'
      AND chips._link_id(msg->'object'->>'query', x.tally_uuid) = msg->'object'->>'link'
    LIMIT 1;
    RETURN t;
END
$$;

CREATE FUNCTION chips._recv_lift_query(msg jsonb) RETURNS text
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

CREATE FUNCTION chips._recv_lift_answer(msg jsonb) RETURNS text
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

------------------------------------------------------------------------------------------------
-- Prepare
------------------------------------------------------------------------------------------------

-- The origin starts lift `p_id` if it can: on a way its query found that carries all of it
-- (its own segment, payer -> exit holder, then the exit tally, reserved here, and the prepare
-- sent downstream); with `p_last` (no answer is still to come), a payment no one way carries
-- is split over several (chips._lift_split). Whether it started.
CREATE FUNCTION chips._lift_start(p_id bigint, p_last boolean) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    e record;
    g record;
    v_sent boolean;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id FOR UPDATE;
    IF l.status <> 'seek' THEN
        RETURN false;
    END IF;
    -- (a payment sent whole once, refused on the way and seeking again, goes on only in parts:
    -- its own lift uuid stays with the way that refused it)
    v_sent := EXISTS (SELECT 1 FROM chips.chits y WHERE y.lift_id = l.id);
    FOR e IN SELECT x.tally, x.max, x.hops, t.ent AS holder FROM chips.lift_routes x
             JOIN chips.tallies t ON t.tally_uuid = x.tally AND t.part_ent IS NULL
             WHERE x.query = l.query AND x.dir = 'out' AND x.status = 'found' AND NOT v_sent
               AND (l.kind <> 'linear' OR x.max >= l.units)
             ORDER BY x.hops, x.max DESC, x.id LOOP
        g := chips._route(l.payer, e.holder, l.units, NULL, e.tally);
        CONTINUE WHEN NOT g.ok;
        IF l.kind = 'circular' THEN
            -- a circle clears as much as its tightest tally allows (this segment carries it)
            l.units := greatest(l.units, least(e.max, (SELECT min(c) FROM pg_catalog.unnest(g.caps) c)));
        END IF;
        CONTINUE WHEN chips._lift_lock(g.tallies, g.payers, g.receivers, l.units) <> 0;
        UPDATE chips.lifts x SET status = 'pend', units = l.units, tally_out = e.tally
        WHERE x.id = l.id RETURNING * INTO l;
        PERFORM chips._lift_go(l, g.tallies, g.payers, g.receivers, e.max, e.hops);
        RETURN true;
    END LOOP;
    IF l.kind <> 'linear' THEN
        RETURN false;
    END IF;
    IF v_sent THEN
        -- in parts only: as soon as a way carries all of it, else once every answer is in
        IF NOT p_last AND NOT EXISTS (SELECT 1 FROM chips.lift_routes x WHERE x.query = l.query
                                      AND x.dir = 'out' AND x.status = 'found' AND x.max >= l.units) THEN
            RETURN false;
        END IF;
    ELSIF NOT p_last OR (chips._lift_set()).parts = 1 THEN
        RETURN false;
    END IF;
    RETURN chips._lift_split(l);
END
$$;

-- Lift `l` (a lift or a part of a split payment) goes from its origin: pending lift chits on its
-- segment here, the prepare over its tally out (a part's names its payment), and the way it
-- took remembered (max and hops, as the query found them).
CREATE FUNCTION chips._lift_go(l chips.lifts, p_tallies uuid[], p_payers text[], p_receivers text[],
                               p_max bigint, p_hops integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._lift_send(l.tally_out, 'prepare', pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'lift', l.lift_uuid, 'payment', l.parent, 'kind', l.kind, 'query', l.query, 'units', l.units,
        'chit', chips._lift_write(l, p_tallies, p_payers, p_receivers, NULL),
        'condition', chips.b64url_encode(l.condition), 'void', chips.b64url_encode(l.void_cond),
        'expires', (extract(epoch FROM l.expires - (chips._lift_set()).hop_step) * 1000)::bigint,
        'origin', l.origin, 'find', l.find, 'pay', l.pay)));
    PERFORM chips._route_remember(l.find, l.tally_out, p_max, p_hops);
END
$$;

-- Splits payment `l` over the routes its query found (chips._lift_place): all of it, or nothing
-- (false).
CREATE FUNCTION chips._lift_split(l chips.lifts) RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT chips._lift_place(l, l.units) THEN
        RETURN false;
    END IF;
    UPDATE chips.lifts x SET status = 'pend' WHERE x.id = l.id;
    RETURN true;
END
$$;

-- Sends `p_units` of payment `l` as parts over the routes its query found, widest first, so that
-- it has at most `parts` parts under way: each part a lift of its own (its own uuid, the
-- payment's locks and signed document) with its own segment here and prepare. All of the units,
-- or nothing (false): a payment is never partly sent. (A split payment's parts, and the parts
-- that replace one a site on the way refused; chips._recv_lift_reject.)
CREATE FUNCTION chips._lift_place(l chips.lifts, p_units bigint) RETURNS boolean
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

-- Refuses a prepare: nothing is reserved here; the upstream passes the reject on to the origin.
-- `p_max`: what the way on from here carries now (the upstream tries another way, or a smaller
-- part this way, rather than this one again).
CREATE FUNCTION chips._lift_reject(msg jsonb, p_reason text, p_max bigint DEFAULT 0) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._send(msg->'to', msg->'from', 'lift', 'reject', pg_catalog.jsonb_build_object(
        'lift', msg->'object'->>'lift', 'reason', p_reason, 'max', p_max));
    RETURN 'rejected: ' || p_reason;
END
$$;

-- A way across this site from `p_from` (after tally `p_in`) to `p_to` (and out on `p_out`)
-- that carries `p_units`, else half as much, a quarter, ... down to `p_least` (at least 1): the
-- first found (ok false if none). What the origin cuts a part to, and what a refusing site says
-- it could carry instead.
CREATE FUNCTION chips._route_wide(p_from text, p_to text, p_units bigint, p_least bigint,
                                  p_in uuid DEFAULT NULL, p_out uuid DEFAULT NULL, OUT ok boolean,
                                  OUT tallies uuid[], OUT payers text[], OUT receivers text[],
                                  OUT caps bigint[])
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v bigint := p_units;
BEGIN
    LOOP
        SELECT * INTO ok, tallies, payers, receivers, caps FROM chips._route(p_from, p_to, v, p_in, p_out);
        EXIT WHEN ok OR v <= 1 OR v < p_least;
        v := (v + 1) / 2;
    END LOOP;
END
$$;

-- The most a way across this site carries now, from `p_from` (after tally `p_in`) to `p_to`
-- (and out on `p_out`), of half of `p_units`, a quarter, ... a sixteenth: 0 if not that much
-- (and for a lift of 1 unit, which has no half: no way is asked for 0 units).
CREATE FUNCTION chips._route_most(p_from text, p_to text, p_units bigint, p_in uuid, p_out uuid DEFAULT NULL)
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

CREATE FUNCTION chips._recv_lift_prepare(msg jsonb) RETURNS text
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

------------------------------------------------------------------------------------------------
-- Ready, reject, decisions, status
------------------------------------------------------------------------------------------------

-- The lift a message names, locked; 'ignored' handling is the caller's. A lift has a row here
-- for each way it passes this site: `p_which` 'origin' is the origin's row (ready, status), 'out'
-- the row whose tally out the sender holds the other half of (reject), 'any' the first.
CREATE FUNCTION chips._msg_lift(msg jsonb, p_which text DEFAULT 'any') RETURNS chips.lifts
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v_lift uuid := chips._msg_lift_uuid(msg);
BEGIN
    SELECT * INTO l FROM chips.lifts x
    WHERE x.lift_uuid = v_lift AND x.kind NOT IN ('local', 'round')
      AND CASE p_which WHEN 'origin' THEN x.role = 'origin'
                       WHEN 'out' THEN x.tally_out IS NOT NULL AND chips._from_partner(msg, x.tally_out)
                       ELSE true END
    ORDER BY x.id LIMIT 1 FOR UPDATE;
    RETURN l;
END
$$;

CREATE FUNCTION chips._msg_lift_uuid(msg jsonb) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN (msg->'object'->>'lift')::uuid;
EXCEPTION WHEN invalid_text_representation THEN
    RAISE EXCEPTION 'lift % is not a UUID', msg->'object'->>'lift' USING ERRCODE = '22P02';
END
$$;

-- Whether a message came over tally `p_tally` from its partner at another site.
CREATE FUNCTION chips._from_partner(msg jsonb, p_tally uuid) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM chips.tallies x WHERE x.tally_uuid = p_tally AND x.part_ent IS NULL
                   AND x.part_cert->'chad'->>'cuid' = msg->'from'->>'cuid'
                   AND x.part_cert->'chad'->>'agent' = msg->'from'->>'agent')
$$;

CREATE FUNCTION chips._recv_lift_ready(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._msg_lift(msg, 'origin');
    o jsonb := msg->'object';
BEGIN
    IF l.id IS NULL OR l.role <> 'origin' OR l.kind <> 'linear'
       OR NOT chips._same_party(msg->'from', l.find) THEN
        RETURN 'ignored';
    END IF;
    IF l.status <> 'pend' OR chips._lift_dead(l) THEN
        RETURN 'ignored';
    END IF;
    IF o->>'condition' IS DISTINCT FROM chips.b64url_encode(l.condition)
       OR o->>'void' IS DISTINCT FROM chips.b64url_encode(l.void_cond)
       OR (o->>'units')::bigint IS DISTINCT FROM l.units THEN
        PERFORM chips._lift_decide(chips._lift_payment(l), 'void', 'the payee was sent other terms');
        RETURN 'void';
    END IF;
    IF pg_catalog.now() >= l.expires THEN
        PERFORM chips._lift_decide(chips._lift_payment(l), 'void', 'expired');
        RETURN 'void';
    END IF;
    IF l.parent IS NOT NULL THEN
        -- a part of a split payment: good when every part is ready
        UPDATE chips.lifts x SET part_ready = pg_catalog.now() WHERE x.id = l.id;
        PERFORM 1 FROM chips.lifts x WHERE x.lift_uuid = l.parent FOR UPDATE;
        IF EXISTS (SELECT 1 FROM chips.lifts x WHERE x.parent = l.parent AND x.part_ready IS NULL
                   AND x.status <> 'void') THEN
            RETURN 'ready';
        END IF;
        PERFORM chips._lift_decide(chips._lift_payment(l), 'good');
        RETURN 'good';
    END IF;
    PERFORM chips._lift_decide(l.id, 'good');
    RETURN 'good';
END
$$;

CREATE FUNCTION chips._recv_lift_reject(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._msg_lift(msg, 'out');     -- (its tally out is the sender's)
    p chips.lifts;
    v_max bigint;
    v_other bigint;
    v_reason text := coalesce(msg->'object'->>'reason', 'rejected');
BEGIN
    IF l.id IS NULL THEN
        RETURN 'ignored';
    END IF;
    -- the way on over that tally does not carry the lift now: less than its units (or what the
    -- reject says, if less), for every later choice of a way for its query or its payee here
    v_max := l.units - 1;
    IF msg->'object'->>'max' ~ '^[0-9]{1,18}$' THEN
        v_max := least(v_max, (msg->'object'->>'max')::bigint);
    END IF;
    UPDATE chips.lift_routes x SET max = least(x.max, v_max)
    WHERE x.query = l.query AND x.dir = 'out' AND x.tally = l.tally_out AND x.status = 'found';
    UPDATE chips.lift_route_cache c SET max = least(c.max, v_max)
    WHERE c.tally = l.tally_out AND c.find_cuid = l.find->>'cuid' AND c.find_agent = l.find->>'agent';
    IF l.role = 'origin' THEN
        IF l.status = 'pend' AND l.kind = 'linear' THEN
            -- a payment's lift (or part) refused on the way: the ways that refused it released
            -- it as the reject came back; here it is released too, and its units go again over
            -- the other ways its query found, as parts of the payment, while it has time
            SELECT * INTO p FROM chips.lifts x WHERE x.id = chips._lift_payment(l) FOR UPDATE;
            IF p.status = 'pend' AND pg_catalog.now() + (chips._lift_set()).hop_step < p.expires THEN
                IF p.id = l.id THEN
                    PERFORM chips._lift_release(l.id);
                    UPDATE chips.lifts x SET tally_out = NULL WHERE x.id = l.id;
                ELSE
                    PERFORM chips._lift_settle(l.id, 'void', v_reason);
                END IF;
                IF chips._lift_place(p, l.units) THEN
                    RETURN 'replaced';
                END IF;
                -- nothing of it under way any more: it seeks again, if it may
                IF NOT EXISTS (SELECT 1 FROM chips.lifts x WHERE x.parent = p.lift_uuid
                               AND x.role = 'origin' AND x.status <> 'void')
                   AND chips._lift_again(p.id) THEN
                    RETURN 'seeking again';
                END IF;
            END IF;
        END IF;
        -- (a part's: the whole payment voids, every part released at once)
        PERFORM chips._lift_decide(chips._lift_payment(l), 'void', v_reason);
        RETURN 'void';
    END IF;
    IF l.status = 'pend' THEN
        -- released here at once (nothing beyond holds it), and the reject goes on upstream with
        -- the widest other way this site knows for the query
        PERFORM chips._lift_settle(l.id, 'void', v_reason);
        SELECT max(x.max) INTO v_other FROM chips.lift_routes x
        WHERE x.query = l.query AND x.dir = 'out' AND x.status = 'found' AND x.tally <> l.tally_out;
        PERFORM chips._lift_send(l.tally_in, 'reject', pg_catalog.jsonb_build_object(
            'lift', l.lift_uuid, 'reason', v_reason, 'max', greatest(v_max, coalesce(v_other, 0))));
        RETURN 'passed on';
    END IF;
    RETURN 'ignored';
END
$$;

-- commit {lift, secret} / void {lift, secret}: from the upstream partner (the secret must open
-- the lock), or from the origin directly (its word is the decision).
-- (the decision is the lift's, proved by its secret: it settles every way the lift passes this
-- site, whichever way it came in on)
CREATE FUNCTION chips._recv_lift_decision(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v_lift uuid := chips._msg_lift_uuid(msg);
    v_status text := CASE msg->>'action' WHEN 'commit' THEN 'good' ELSE 'void' END;
    v_secret bytea := chips.b64url_decode(msg->'object'->>'secret');
    v_proved boolean;
    v_result text := 'ignored';
BEGIN
    FOR l IN SELECT * FROM chips.lifts x
             WHERE x.lift_uuid = v_lift AND x.kind IN ('linear', 'circular') AND x.role <> 'origin'
             ORDER BY x.id FOR UPDATE LOOP
        v_proved := chips._lift_opens(v_secret, CASE v_status WHEN 'good' THEN l.condition ELSE l.void_cond END);
        IF NOT v_proved AND NOT (msg->'from'->>'agent' = l.origin->>'agent' AND v_status = 'void') THEN
            RETURN 'refused: the secret does not open the lift''s lock';
        END IF;
        CONTINUE WHEN l.status = v_status;
        IF l.status <> 'pend' THEN
            RAISE EXCEPTION 'lift % is % here, and the origin says %', l.lift_uuid, l.status, v_status
                USING ERRCODE = '55000';
        END IF;
        UPDATE chips.lifts x SET secret = CASE WHEN v_status = 'good' THEN v_secret END,
            void_secret = CASE WHEN v_status = 'void' AND v_proved THEN v_secret END
        WHERE x.id = l.id;
        IF l.tally_out IS NOT NULL THEN
            PERFORM chips._lift_send(l.tally_out, msg->>'action', msg->'object');
        END IF;
        PERFORM chips._lift_settle(l.id, v_status, CASE WHEN v_status = 'void' THEN 'voided by the origin' END);
        v_result := v_status;
    END LOOP;
    RETURN v_result;
END
$$;

-- status {lift}: a site that prepared asks the origin for the decision; the origin answers
-- directly when it has one.
CREATE FUNCTION chips._recv_lift_status(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._msg_lift(msg, 'origin');
BEGIN
    IF l.id IS NULL AND (chips._msg_lift(msg)).id IS NOT NULL THEN
        RETURN 'ignored';       -- it only passes this site
    END IF;
    IF l.id IS NULL THEN
        -- never started here: there is no decision to wait for
        PERFORM chips._send(msg->'to', msg->'from', 'lift', 'void',
            pg_catalog.jsonb_build_object('lift', msg->'object'->>'lift'));
        RETURN 'void';
    END IF;
    IF l.role <> 'origin' THEN
        RETURN 'ignored';
    END IF;
    IF chips._lift_dead(l) THEN
        -- a way refused on the way and replaced: void, on the origin's word (the void secret
        -- would void the payment's live parts too)
        PERFORM chips._send(msg->'to', msg->'from', 'lift', 'void',
            pg_catalog.jsonb_build_object('lift', l.lift_uuid));
        RETURN 'void';
    END IF;
    IF l.status = 'pend' AND pg_catalog.now() >= l.expires THEN
        PERFORM chips._lift_decide(chips._lift_payment(l), 'void', 'expired');
        SELECT * INTO l FROM chips.lifts x WHERE x.id = l.id;
    END IF;
    IF l.status IN ('good', 'void') THEN
        PERFORM chips._send(msg->'to', msg->'from', 'lift',
            CASE l.status WHEN 'good' THEN 'commit' ELSE 'void' END,
            pg_catalog.jsonb_build_object('lift', l.lift_uuid, 'secret', chips.b64url_encode(
                CASE l.status WHEN 'good' THEN l.secret ELSE l.void_secret END)));
        RETURN l.status;
    END IF;
    RETURN 'pending';
END
$$;

------------------------------------------------------------------------------------------------
-- The user API and the timer
------------------------------------------------------------------------------------------------

-- A lift originated here: kind linear (a payment from p_payer to p_find) or circular (p_find is
-- p_payer), with its secrets, their locks and its expiry.
CREATE FUNCTION chips._lift_originate(p_kind text, p_payer text, p_find jsonb, p_units bigint,
                                      p_status text)
RETURNS chips.lifts
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.lift_settings := chips._lift_set();
    l chips.lifts;
    v_secret bytea := chips.new_seed();
    v_void bytea := chips.new_seed();
BEGIN
    INSERT INTO chips.lifts (lift_uuid, kind, status, units, role, origin, find, payer, query,
                             condition, void_cond, secret, void_secret, expires)
    VALUES (pg_catalog.gen_random_uuid(), p_kind, p_status, p_units, 'origin', chips._cert(p_payer)->'chad',
            p_find, p_payer, pg_catalog.gen_random_uuid()::text,
            chips._lift_condition(v_secret), chips._lift_condition(v_void), v_secret, v_void,
            pg_catalog.now() + s.life)
    RETURNING * INTO l;
    RETURN l;
END
$$;

-- Sends the route queries of a lift in 'seek' (or answers from the cache).
CREATE FUNCTION chips._lift_seek(p_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.lift_settings := chips._lift_set();
    l chips.lifts;
    v_in bigint;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id;
    -- a payment asks for routes that carry at least an even part of it (it may be split over up
    -- to `parts` routes); a circle for its least units
    INSERT INTO chips.lift_routes (query, dir, tally, lift, find, units, want, expires)
    VALUES (l.query, 'in', NULL, l.lift_uuid, l.find,
            CASE WHEN l.kind = 'linear' THEN (l.units + s.parts - 1) / s.parts ELSE l.units END,
            CASE WHEN l.kind = 'linear' THEN l.units END, least(l.expires, pg_catalog.now() + s.query_life))
    RETURNING id INTO v_in;
    PERFORM chips._route_ask(v_in, l.payer, s.max_depth);
END
$$;

-- Payment `p_id`, which found no way that carries it, asks again (a new route query: the ways
-- that refused it hold nothing now), if it has tries left and time for the query; whether it
-- did.
CREATE FUNCTION chips._lift_again(p_id bigint) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.lift_settings := chips._lift_set();
    l chips.lifts;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id FOR UPDATE;
    IF l.kind <> 'linear' OR l.status NOT IN ('seek', 'pend') OR l.parent IS NOT NULL
       OR pg_catalog.now() + s.query_life + s.hop_step >= l.expires
       OR (SELECT count(*) FROM chips.lift_routes x WHERE x.lift = l.lift_uuid AND x.dir = 'in') >= s.tries THEN
        RETURN false;
    END IF;
    UPDATE chips.lifts x SET status = 'seek', query = pg_catalog.gen_random_uuid()::text WHERE x.id = l.id;
    PERFORM chips._lift_seek(l.id);
    RETURN true;
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

-- The payment document a payer signs (canonical JSON, RFC 8785).
CREATE FUNCTION chips._pay_doc(l chips.lifts, p_memo text, p_reference jsonb) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'lift', l.lift_uuid, 'from', l.origin, 'to', l.find, 'units', l.units,
        'condition', chips.b64url_encode(l.condition), 'void', chips.b64url_encode(l.void_cond),
        'date', chips._iso(l.created), 'memo', p_memo, 'ref', p_reference))
$$;

-- Pays a CHIP address at another site through intermediaries (a linear lift): the caller signs
-- the payment (a custodial user: the database signs; else it waits in 'draft' for
-- chips.pay_address_sign). Returns the lift; its state is in chips.lifts_list / events.
CREATE FUNCTION chips.pay_address(address jsonb, units bigint, memo text DEFAULT NULL,
                                  reference jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    v_find jsonb := chips._chad(pay_address.address);
    l chips.lifts;
    v_doc jsonb;
    v_sig text;
BEGIN
    IF pay_address.units IS NULL OR pay_address.units < 1 OR pay_address.units > 1000000000000000 THEN
        RAISE EXCEPTION 'units must be between 1 and 10^15' USING ERRCODE = '22023';
    END IF;
    IF v_me.pubkey IS NULL THEN
        RAISE EXCEPTION 'user % has no public key to sign the payment with', v_me.ent USING ERRCODE = '55000';
    END IF;
    IF chips._local_ent(v_find) = v_me.ent THEN
        RAISE EXCEPTION 'a payment to yourself' USING ERRCODE = '22023';
    END IF;
    l := chips._lift_originate('linear', v_me.ent, v_find, pay_address.units, 'draft');
    v_doc := chips._pay_doc(l, pay_address.memo, pay_address.reference);
    v_sig := chips._custodial_sign(v_me.ent, v_doc);
    UPDATE chips.lifts x SET pay = pg_catalog.jsonb_build_object('doc', v_doc, 'key', v_me.pubkey, 'sign', v_sig)
    WHERE x.id = l.id;
    IF v_sig IS NOT NULL THEN
        PERFORM chips._pay_go(l.id);
    END IF;
    RETURN l.lift_uuid;
END
$$;

-- The payment document of a draft payment (to sign), and the signature that starts it.
CREATE FUNCTION chips.pay_address_json(lift uuid) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (chips._my_payment(chips._me(), pay_address_json.lift)).pay->'doc';
END
$$;

-- The caller's payment `p_lift`, locked; 42704 when there is none.
CREATE FUNCTION chips._my_payment(p_me chips.users, p_lift uuid) RETURNS chips.lifts
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.lift_uuid = p_lift AND x.payer = p_me.ent
      AND x.role = 'origin' AND x.kind = 'linear' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you have no payment %', p_lift USING ERRCODE = '42704';
    END IF;
    RETURN l;
END
$$;

CREATE FUNCTION chips.pay_address_sign(lift uuid, signature text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    l chips.lifts := chips._my_payment(v_me, pay_address_sign.lift);
BEGIN
    IF l.status <> 'draft' THEN
        RAISE EXCEPTION 'payment % is % already', l.lift_uuid, l.status USING ERRCODE = '55000';
    END IF;
    IF NOT coalesce(chips.verify_signature(v_me.pubkey, l.pay->'doc', pay_address_sign.signature), false) THEN
        RAISE EXCEPTION 'the signature is not yours over payment %', l.lift_uuid USING ERRCODE = '28000';
    END IF;
    UPDATE chips.lifts x SET pay = x.pay || pg_catalog.jsonb_build_object('sign', pay_address_sign.signature)
    WHERE x.id = l.id;
    PERFORM chips._pay_go(l.id);
    SELECT * INTO l FROM chips.lifts x WHERE x.id = l.id;
    RETURN l.status;
END
$$;

-- A signed payment goes: over local tallies at once when the payee is here, else a route query;
-- 55000 (and nothing changes) when it cannot go anywhere now.
CREATE FUNCTION chips._pay_go(p_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v_payee text;
    g record;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_id FOR UPDATE;
    v_payee := chips._local_ent(l.find);
    IF v_payee IS NULL THEN
        UPDATE chips.lifts x SET status = 'seek' WHERE x.id = l.id;
        PERFORM chips._lift_seek(l.id);
        IF (SELECT x.status FROM chips.lifts x WHERE x.id = l.id) = 'void' THEN
            RAISE EXCEPTION 'no tally of yours leads towards % with % units free', l.find->>'cuid', l.units
                USING ERRCODE = '55000';
        END IF;
        RETURN;
    END IF;
    g := chips._route(l.payer, v_payee, l.units);
    IF NOT g.ok OR chips._lift_lock(g.tallies, g.payers, g.receivers, l.units) <> 0 THEN
        RAISE EXCEPTION 'no route from you to % carries % units', l.find->>'cuid', l.units
            USING ERRCODE = '55000';
    END IF;
    UPDATE chips.lifts x SET status = 'pend', payee = v_payee WHERE x.id = l.id RETURNING * INTO l;
    PERFORM chips._lift_write(l, g.tallies, g.payers, g.receivers, NULL);
    PERFORM chips._lift_settle(l.id, 'good');
END
$$;

-- Starts circular lifts through other sites: for each user with a tally to another site that can
-- carry min_units out, and no circular lift of theirs under way,
-- asks for a route back to them. Returns how many it started. Part of automatic clearing.
CREATE FUNCTION chips.lift_circles(min_units bigint DEFAULT 1, max_lifts integer DEFAULT 10)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    l chips.lifts;
    n integer := 0;
BEGIN
    IF lift_circles.min_units IS NULL OR lift_circles.min_units < 1
       OR lift_circles.max_lifts IS NULL OR lift_circles.max_lifts < 0 THEN
        RAISE EXCEPTION 'min_units must be >= 1 and max_lifts >= 0' USING ERRCODE = '22023';
    END IF;
    FOR u IN
        SELECT x.ent FROM chips.users x
        WHERE x.status = 'active'
          AND EXISTS (SELECT 1 FROM chips.tallies t WHERE t.ent = x.ent AND t.part_ent IS NULL
                      AND chips._send_capacity(t) >= lift_circles.min_units)
          AND NOT EXISTS (SELECT 1 FROM chips.lifts l2 WHERE l2.payer = x.ent AND l2.kind = 'circular'
                          AND l2.status IN ('seek', 'pend'))
        ORDER BY x.ent
        LIMIT lift_circles.max_lifts
    LOOP
        l := chips._lift_originate('circular', u.ent, chips._cert(u.ent)->'chad', lift_circles.min_units, 'seek');
        PERFORM chips._lift_seek(l.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The timer of distributed lifts (chipsd calls it every lift_tick_ms; cron will do): route queries
-- past their time are answered none; the origin decides void for a lift not ready by its expiry;
-- a site that prepared and is past its expiry asks the origin for the decision (every
-- ask_every); old route rows and cache entries go.
CREATE FUNCTION chips.lift_tick(OUT queries integer, OUT voided integer, OUT asked integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    s chips.lift_settings := chips._lift_set();
    r record;
BEGIN
    queries := 0; voided := 0; asked := 0;
    FOR r IN SELECT x.id FROM chips.lift_routes x
             WHERE x.dir = 'in' AND x.status = 'pend' AND x.expires <= pg_catalog.now() LOOP
        UPDATE chips.lift_routes x SET status = 'none'
        WHERE x.query = (SELECT y.query FROM chips.lift_routes y WHERE y.id = r.id)
          AND x.dir = 'out' AND x.status = 'pend' AND x.asker = r.id;
        PERFORM chips._route_answer(r.id);
        queries := queries + 1;
    END LOOP;
    FOR r IN SELECT x.id, x.status FROM chips.lifts x
             WHERE x.role = 'origin' AND x.status IN ('draft', 'seek', 'pend') AND x.parent IS NULL
               AND x.expires <= pg_catalog.now() LOOP
        PERFORM chips._lift_decide(r.id, 'void', 'expired');
        voided := voided + 1;
    END LOOP;
    FOR r IN SELECT x.* FROM chips.lifts x
             WHERE x.role IN ('relay', 'terminus') AND x.status = 'pend' AND x.expires <= pg_catalog.now()
               AND (x.asked IS NULL OR x.asked + s.ask_every <= pg_catalog.now()) LOOP
        PERFORM chips._send(
            (SELECT t.hold_cert->'chad' FROM chips.tallies t WHERE t.tally_uuid = r.tally_in AND t.part_ent IS NULL),
            r.origin, 'lift', 'status', pg_catalog.jsonb_build_object('lift', r.lift_uuid));
        UPDATE chips.lifts x SET asked = pg_catalog.now() WHERE x.id = r.id;
        asked := asked + 1;
    END LOOP;
    DELETE FROM chips.lift_routes x WHERE x.expires < pg_catalog.now() - interval '10 minutes';
    DELETE FROM chips.lift_route_cache c WHERE c.expires < pg_catalog.now();
    -- and the timers of clearing rounds (sql/rounds.sql)
    PERFORM chips.round_tick();
END
$$;
