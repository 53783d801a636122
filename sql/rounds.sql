-- chips install SQL: clearing rounds across sites (docs/protocol.md, "Clearing rounds").
--
-- A coordinator (any site whose round_settings say coordinate) runs rounds for the sites that
-- joined it (round/join). A round, every message applied in one transaction where it lands:
--
--   open      coordinator -> members: the round, its void lock (SHA-256 of a secret only the
--             coordinator knows), its expiry and the date of its lift chits.
--   graph     member -> coordinator, in parts: the member's arcs, users named by per-round
--             pseudonyms, tallies with other sites cut at per-round link tokens
--             (chips_core::round; Rust chips._round_graph), and its lock: SHA-256 of a share, a
--             secret of its own.
--   flows     coordinator -> each member, in parts: the flows on that member's arcs only, from
--             the min-cost circulation over the union (Rust chips._round_solve), and every
--             member's lock.
--   prepare   each member, when it has all its flows: checks them against what it offered and
--             against its users' net positions, re-checks every move against its tallies as they
--             are now, writes pending lift chits for its moves, and tells every partner site the
--             moves on the tallies they share (agree); when each partner told it the same moves,
--             it answers ready, with its share. A member whose tallies can carry less now
--             answers refuse with the capacities it has now: the coordinator solves again without
--             them (a new attempt).
--   decision  the coordinator, once: good (every member's share) when every member is ready,
--             void (the void secret) on a refusal it cannot solve around, on too many attempts,
--             or at the expiry. Members settle their lift good or void, and past the expiry ask
--             for the decision (status).
--
-- A member settles good only with every member's share, which each reveals only for flows it
-- checked and its partners agreed with, and only for the attempt it said ready for: no
-- coordinator can make a round good that a member refused. A member that never said ready may
-- void alone at the expiry; one that did waits for the decision. What a coordinator can still
-- do, like a lift's origin, is never decide, or tell some sites good and others void. The
-- coordinator never sees a user's ent, cuid, name or key, nor a tally's uuid or digest.

------------------------------------------------------------------------------------------------
-- Settings and membership
------------------------------------------------------------------------------------------------

-- The settings; the first call writes the row (with a fresh secret), so a pg_dump restore never
-- collides with a row the install made.
CREATE FUNCTION chips._round_set() RETURNS chips.round_settings
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.round_settings;
BEGIN
    SELECT * INTO s FROM chips.round_settings;
    IF NOT FOUND THEN
        INSERT INTO chips.round_settings (secret, agent)
        VALUES (chips.new_seed(), (SELECT min(a.agent) FROM chips.agents a WHERE a.local))
        ON CONFLICT (one) DO NOTHING;
        SELECT * INTO s FROM chips.round_settings;
    END IF;
    RETURN s;
END
$$;

-- The address this site speaks in rounds with: its agent, as a site (cuid `_site`).
CREATE FUNCTION chips._round_me() RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.round_settings := chips._round_set();
    v jsonb;
BEGIN
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'cuid', '_site', 'agent', a.agent, 'host', a.host, 'port', a.port))
    INTO v FROM chips.agents a WHERE a.agent = s.agent AND a.local;
    IF v IS NULL THEN
        RAISE EXCEPTION 'this site has no agent to take part in clearing rounds'
            USING ERRCODE = '55000', HINT = 'Register it first: chips.agent_register(..., local => true).';
    END IF;
    RETURN v;
END
$$;

-- Clearing rounds: the coordinator this site takes part with (`agent@host:port`; '' to leave),
-- and, as a coordinator, whether it runs rounds, how often, for how long each may take and how
-- many attempts one may make. NULL leaves a setting as it is. Returns the settings and how
-- many sites have joined this one as their coordinator.
CREATE FUNCTION chips.round_configure(coordinator text DEFAULT NULL, coordinate boolean DEFAULT NULL,
                                      every interval DEFAULT NULL, life interval DEFAULT NULL,
                                      attempts integer DEFAULT NULL)
RETURNS TABLE (site_coordinator text, site_agent text, coordinating boolean, round_every interval,
               round_life interval, round_attempts integer, round_members bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    s chips.round_settings := chips._round_set();
    v_new jsonb;
BEGIN
    BEGIN
        UPDATE chips.round_settings x SET
            coordinate = coalesce(round_configure.coordinate, x.coordinate),
            every = coalesce(round_configure.every, x.every),
            life = coalesce(round_configure.life, x.life),
            attempts = coalesce(round_configure.attempts, x.attempts),
            -- switched on, the first automatic round comes one `every` later (sites join first)
            last_round = CASE WHEN round_configure.coordinate AND NOT x.coordinate THEN pg_catalog.now()
                              ELSE x.last_round END;
    EXCEPTION WHEN check_violation THEN
        RAISE EXCEPTION 'every and life must be at least 1 second, attempts 1 to 10' USING ERRCODE = '22023';
    END;
    IF round_configure.coordinator IS NOT NULL THEN
        IF round_configure.coordinator <> '' THEN
            v_new := chips.address_parse('_site:' || round_configure.coordinator);
            IF v_new->>'host' IS NULL THEN
                RAISE EXCEPTION 'a coordinator is named agent@host:port' USING ERRCODE = '22023';
            END IF;
        END IF;
        IF s.coordinator IS NOT NULL AND s.coordinator->>'agent' IS DISTINCT FROM v_new->>'agent' THEN
            PERFORM chips._send(chips._round_me(), s.coordinator, 'round', 'leave', '{}');
        END IF;
        IF v_new IS NOT NULL THEN
            PERFORM chips._send(chips._round_me(), v_new, 'round', 'join', '{}');
        END IF;
        UPDATE chips.round_settings x SET coordinator = v_new;
    END IF;
    RETURN QUERY
    SELECT CASE WHEN x.coordinator IS NULL THEN NULL
                ELSE (x.coordinator->>'agent') || '@' || (x.coordinator->>'host') || ':' || (x.coordinator->>'port') END,
           x.agent, x.coordinate, x.every, x.life, x.attempts,
           (SELECT count(*) FROM chips.round_members)
    FROM chips.round_settings x;
END
$$;

-- A site asks to take part in this coordinator's rounds (or leaves them).
CREATE FUNCTION chips._recv_round_join(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT (chips._round_set()).coordinate THEN
        RAISE EXCEPTION 'this site coordinates no clearing rounds' USING ERRCODE = '55000';
    END IF;
    PERFORM chips.address_check(msg->'from');
    INSERT INTO chips.round_members (agent, address) VALUES (msg->'from'->>'agent', msg->'from')
    ON CONFLICT (agent) DO UPDATE SET address = EXCLUDED.address;
    RETURN 'joined';
END
$$;

CREATE FUNCTION chips._recv_round_leave(msg jsonb) RETURNS text
LANGUAGE sql
AS $$
    DELETE FROM chips.round_members m WHERE m.agent = msg->'from'->>'agent';
    SELECT 'left';
$$;

------------------------------------------------------------------------------------------------
-- The coordinator
------------------------------------------------------------------------------------------------

-- Opens a round for every member: returns its id.
CREATE FUNCTION chips._round_open() RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    s chips.round_settings := chips._round_set();
    v_void bytea := chips.new_seed();
    r chips.rounds;
BEGIN
    INSERT INTO chips.rounds (round_uuid, status, void_secret, void_cond, chit_date, collect_until,
                              expires)
    VALUES (pg_catalog.gen_random_uuid(), 'collect', v_void, pg_catalog.sha256(v_void),
            pg_catalog.now(), pg_catalog.now() + s.life / 3, pg_catalog.now() + s.life)
    RETURNING * INTO r;
    INSERT INTO chips.round_sites (round_id, agent, address, status)
    SELECT r.id, m.agent, m.address, 'invited' FROM chips.round_members m;
    PERFORM chips._send(chips._round_me(), m.address, 'round', 'open', pg_catalog.jsonb_build_object(
                'round', r.round_uuid, 'void', chips.b64url_encode(r.void_cond),
                'expires', chips._iso(r.expires), 'date', chips._iso(r.chit_date)))
    FROM chips.round_members m ORDER BY m.agent;
    UPDATE chips.round_settings x SET last_round = r.created;
    RETURN r.id;
END
$$;

-- The coordinator's round a member's message is about, locked; the sender must be one of its
-- sites.
CREATE FUNCTION chips._round_of(msg jsonb) RETURNS chips.rounds
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds;
BEGIN
    SELECT * INTO r FROM chips.rounds x WHERE x.round_uuid = (msg->'object'->>'round')::uuid FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no round %', msg->'object'->>'round' USING ERRCODE = '42704';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.round_sites x WHERE x.round_id = r.id AND x.agent = msg->'from'->>'agent') THEN
        RAISE EXCEPTION 'agent % takes no part in round %', msg->'from'->>'agent', r.round_uuid
            USING ERRCODE = '42501';
    END IF;
    RETURN r;
END
$$;

-- A part of a member's graph.
CREATE FUNCTION chips._recv_round_graph(msg jsonb) RETURNS text
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

-- Solves a round over the graphs it has and sends each site the flows on its arcs.
CREATE FUNCTION chips._round_flows(p_round bigint) RETURNS void
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

-- The coordinator decides, once: good (every site ready) or void. The secret that opens the
-- lock goes to every site that took part.
CREATE FUNCTION chips._round_decide(p_round bigint, p_status text, p_reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds;
BEGIN
    UPDATE chips.rounds y SET status = p_status, decided = pg_catalog.now(), reason = p_reason
    WHERE y.id = p_round AND y.status IN ('collect', 'prepare')
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM chips._round_tell(r, x.address)
    FROM chips.round_sites x WHERE x.round_id = r.id AND x.status <> 'absent' ORDER BY x.agent;
END
$$;

-- A decided round's decision, to one site.
CREATE FUNCTION chips._round_tell(r chips.rounds, p_to jsonb) RETURNS void
LANGUAGE sql
AS $$
    SELECT chips._send(chips._round_me(), p_to, 'round', r.status, CASE r.status
        WHEN 'good' THEN pg_catalog.jsonb_build_object('round', r.round_uuid, 'attempt', r.attempt,
            'shares', (SELECT pg_catalog.jsonb_agg(chips.b64url_encode(y.share) ORDER BY y.lock)
                       FROM chips.round_sites y WHERE y.round_id = r.id AND y.status <> 'absent'))
        ELSE pg_catalog.jsonb_build_object('round', r.round_uuid, 'attempt', r.attempt,
            'secret', chips.b64url_encode(r.void_secret), 'reason', r.reason) END)
    WHERE r.status IN ('good', 'void');
$$;

CREATE FUNCTION chips._recv_round_ready(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds := chips._round_of(msg);
BEGIN
    IF r.status <> 'prepare' OR (msg->'object'->>'attempt')::integer IS DISTINCT FROM r.attempt THEN
        RETURN 'ignored';
    END IF;
    UPDATE chips.round_sites y SET status = 'ready', share = chips.b64url_decode(msg->'object'->>'share')
    WHERE y.round_id = r.id AND y.agent = msg->'from'->>'agent'
      AND y.lock = pg_catalog.sha256(chips.b64url_decode(msg->'object'->>'share'));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'that is not the share of agent % in round %', msg->'from'->>'agent', r.round_uuid
            USING ERRCODE = '28000';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.round_sites y WHERE y.round_id = r.id AND y.status = 'solved') THEN
        PERFORM chips._round_decide(r.id, 'good');
    END IF;
    RETURN 'ready';
END
$$;

-- A site cannot carry its part: with the capacities it has now (arcs [k, cap]) the coordinator
-- solves again (a new attempt, while attempts last); without (it refuses the flows themselves),
-- the round is void.
CREATE FUNCTION chips._recv_round_refuse(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds := chips._round_of(msg);
    s chips.round_settings := chips._round_set();
    v_caps jsonb := msg->'object'->'caps';
BEGIN
    IF r.status <> 'prepare' OR (msg->'object'->>'attempt')::integer IS DISTINCT FROM r.attempt THEN
        RETURN 'ignored';
    END IF;
    IF coalesce(pg_catalog.jsonb_typeof(v_caps) <> 'array' OR pg_catalog.jsonb_array_length(v_caps) = 0, true)
       OR r.attempt >= s.attempts OR pg_catalog.now() >= r.expires THEN
        PERFORM chips._round_decide(r.id, 'void', coalesce(msg->'object'->>'reason', 'refused by a site'));
        RETURN 'void';
    END IF;
    UPDATE chips.round_arcs a SET cap = least(a.cap, greatest((c.v->>1)::bigint, 0)), flow = 0
    FROM pg_catalog.jsonb_array_elements(v_caps) c(v)
    WHERE a.round_id = r.id AND a.agent = msg->'from'->>'agent' AND a.k = (c.v->>0)::integer;
    UPDATE chips.rounds y SET attempt = y.attempt + 1 WHERE y.id = r.id;
    UPDATE chips.round_sites y SET status = 'graph' WHERE y.round_id = r.id AND y.status <> 'absent';
    PERFORM chips._round_flows(r.id);
    RETURN 'again';
END
$$;

-- A member asks for a decided round's decision.
CREATE FUNCTION chips._recv_round_status(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    r chips.rounds := chips._round_of(msg);
BEGIN
    PERFORM chips._round_tell(r, msg->'from');
    RETURN r.status;
END
$$;

------------------------------------------------------------------------------------------------
-- A member
------------------------------------------------------------------------------------------------

-- This site's lift of the round a coordinator's message is about, locked; the sender must be
-- the coordinator this site takes part with.
CREATE FUNCTION chips._round_lift(msg jsonb) RETURNS chips.lifts
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
BEGIN
    SELECT * INTO l FROM chips.lifts x
    WHERE x.lift_uuid = (msg->'object'->>'round')::uuid AND x.kind = 'round' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no round %', msg->'object'->>'round' USING ERRCODE = '42704';
    END IF;
    IF l.origin->>'agent' IS DISTINCT FROM msg->'from'->>'agent' THEN
        RAISE EXCEPTION 'round % is coordinated by another agent', l.lift_uuid USING ERRCODE = '42501';
    END IF;
    RETURN l;
END
$$;

CREATE FUNCTION chips._recv_round_open(msg jsonb) RETURNS text
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

-- What a round's members' locks (base64url, any order) add up to: SHA-256 of them in order.
CREATE FUNCTION chips._round_condition(p_locks jsonb) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $$
    SELECT pg_catalog.sha256(pg_catalog.string_agg(chips.b64url_decode(x.v #>> '{}'), ''::bytea
                                                   ORDER BY chips.b64url_decode(x.v #>> '{}')))
    FROM pg_catalog.jsonb_array_elements(p_locks) x(v)
$$;

-- A member's arcs of a round, in messages of at most about 40 kB (at least one, maybe empty).
CREATE FUNCTION chips._round_parts_of(p_lift bigint) RETURNS TABLE (arcs jsonb)
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(p.tail, p.head, p.cap, p.cost)
                                         ORDER BY p.k) FILTER (WHERE p.k IS NOT NULL), '[]')
    FROM (SELECT x.*, (x.k / 500) AS chunk FROM chips.round_parts x WHERE x.lift_id = p_lift) p
    RIGHT JOIN pg_catalog.generate_series(0, greatest(
        (SELECT (max(x.k)) / 500 FROM chips.round_parts x WHERE x.lift_id = p_lift), 0)) g(chunk)
        ON g.chunk = p.chunk
    GROUP BY g.chunk ORDER BY g.chunk
$$;

-- Flows for this site's arcs.
CREATE FUNCTION chips._recv_round_flows(msg jsonb) RETURNS text
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

-- All flows are in: check them and each move against the tallies as they are now (or refuse),
-- and keep the moves for chips.round_work to reserve piece by piece. Nothing is locked here.
CREATE FUNCTION chips._round_prepare(p_lift bigint) RETURNS void
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

-- The tally halves a piece of work takes: a member's work on a round is cut into pieces of at
-- most this many tallies, each its own transaction, so that a payment on a tally the round
-- moves waits at most one piece.
CREATE FUNCTION chips._round_piece() RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 32 $$;

-- Gives a member's lift `p_lift` its work (chips.round_work does it) and wakes chipsd.
CREATE FUNCTION chips._round_work_on(p_lift bigint, p_work text, p_reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chips.round_state x SET work = p_work, reason = p_reason WHERE x.lift_id = p_lift;
    PERFORM pg_catalog.pg_notify('chips_round', '');
END
$$;

-- One piece of a member's work on lift `p_lift`, in the caller's transaction. Returns false when
-- there is none left. Settling and releasing take the reserved moves in their order; with none
-- left, what may still be pending goes in one last step (nothing, normally), and a settled lift
-- takes its status.
CREATE FUNCTION chips._round_step(p_lift bigint) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    st chips.round_state;
    v_tallies uuid[];
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_lift FOR UPDATE;
    SELECT * INTO st FROM chips.round_state x WHERE x.lift_id = p_lift;
    IF st.work IS NULL THEN
        RETURN false;
    END IF;
    IF st.work IN ('reserve', 'release') AND l.status <> 'draft' THEN
        -- decided meanwhile: nothing more to reserve or release
        UPDATE chips.round_state x SET work = NULL WHERE x.lift_id = l.id;
        RETURN true;
    END IF;
    IF st.work = 'reserve' THEN
        PERFORM chips._round_reserve(l);
        RETURN true;
    END IF;
    v_tallies := ARRAY(SELECT m.tally FROM chips.round_moves m WHERE m.lift_id = l.id AND m.stage = 1
                       ORDER BY m.n LIMIT chips._round_piece());
    IF pg_catalog.cardinality(v_tallies) > 0 THEN
        IF st.work = 'release' THEN
            PERFORM chips._lift_release(l.id, v_tallies);
        ELSE
            PERFORM chips._lift_settle(l.id, st.work, st.reason, v_tallies);
        END IF;
        UPDATE chips.round_moves m SET stage = 2 WHERE m.lift_id = l.id AND m.tally = ANY (v_tallies);
        RETURN true;
    END IF;
    UPDATE chips.round_state x SET work = NULL WHERE x.lift_id = l.id;
    IF st.work = 'release' THEN
        PERFORM chips._lift_release(l.id);
        DELETE FROM chips.round_moves m WHERE m.lift_id = l.id;
        -- the next attempt's flows, all in meanwhile
        IF st.got = st.parts AND st.prepared IS DISTINCT FROM l.attempt THEN
            PERFORM chips._round_prepare(l.id);
        END IF;
    ELSE
        PERFORM chips._lift_settle(l.id, st.work, st.reason);
    END IF;
    RETURN true;
END
$$;

-- One piece of a member's reservation: the next moves, checked again under lock (or a refusal
-- naming every arc whose tally no longer carries its move, and what earlier pieces reserved is
-- released), then a pending lift
-- chit, issued by the side whose balance goes down, on every half of those tallies held here
-- (one statement; the chits triggers hold the amounts back); the same document at the
-- partner's site. With every move reserved: the lift is pending, each partner site hears the
-- moves on the tallies it shares with this one, and this site is ready once they agree.
CREATE FUNCTION chips._round_reserve(l chips.lifts) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_tallies uuid[];
    v_caps jsonb;
    v_partners text[];
BEGIN
    v_tallies := ARRAY(SELECT m.tally FROM chips.round_moves m WHERE m.lift_id = l.id AND m.stage = 0
                       ORDER BY m.n LIMIT chips._round_piece());
    IF pg_catalog.cardinality(v_tallies) > 0 THEN
        v_caps := chips._round_caps(l.id, v_tallies, true);
        IF pg_catalog.jsonb_array_length(v_caps) > 0 THEN
            -- and every other move not reserved yet that its tallies no longer carry: the next
            -- attempt leaves them all out
            v_caps := chips._round_caps(l.id, ARRAY(SELECT m.tally FROM chips.round_moves m
                                                    WHERE m.lift_id = l.id AND m.stage = 0), false);
            PERFORM chips._send(chips._round_me(), l.origin, 'round', 'refuse', pg_catalog.jsonb_build_object(
                'round', l.lift_uuid, 'attempt', l.attempt, 'caps', v_caps));
            UPDATE chips.round_state x SET work = 'release' WHERE x.lift_id = l.id;
            RETURN;
        END IF;
        INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, chit_date,
                                 status, value, lift_id)
        SELECT h.id, d.uuid, 'lift', m.by, m.units, d.ref, l.chit_date, 'pend',
               chips.chit_value(chips.chit_doc_make(m.tally, m.by, 'lift', d.uuid, d.ms, m.units, d.ref, NULL), h.side),
               l.id
        FROM chips.round_moves m
        CROSS JOIN LATERAL (SELECT chips._round_chit_uuid(l.lift_uuid, l.attempt, m.tally) AS uuid,
                                   pg_catalog.jsonb_build_object('lift', l.lift_uuid) AS ref,
                                   (extract(epoch FROM l.chit_date) * 1000)::bigint AS ms) d
        JOIN chips.tallies h ON h.tally_uuid = m.tally
        WHERE m.lift_id = l.id AND m.tally = ANY (v_tallies)
        ORDER BY h.id;
        UPDATE chips.round_moves m SET stage = 1 WHERE m.lift_id = l.id AND m.tally = ANY (v_tallies);
        RETURN;
    END IF;
    UPDATE chips.round_state x SET work = NULL WHERE x.lift_id = l.id;
    UPDATE chips.lifts x SET status = 'pend',
        units = (SELECT coalesce(sum(m.units), 0) FROM chips.round_moves m WHERE m.lift_id = l.id),
        tallies = ARRAY(SELECT m.tally FROM chips.round_moves m WHERE m.lift_id = l.id ORDER BY m.n),
        debtors = ARRAY(SELECT m.debtor FROM chips.round_moves m WHERE m.lift_id = l.id ORDER BY m.n)
    WHERE x.id = l.id;
    -- tell each partner site the moves on the tallies it shares with this one ([tally, units
    -- its holder's position rises by])
    SELECT coalesce(pg_catalog.array_agg(DISTINCT t.part_cert->'chad'->>'agent'), '{}') INTO v_partners
    FROM chips.round_moves m JOIN chips.tallies t ON t.tally_uuid = m.tally AND t.part_ent IS NULL
    WHERE m.lift_id = l.id AND NOT m.local;
    UPDATE chips.round_state x SET partners = v_partners WHERE x.lift_id = l.id;
    -- (500 moves to a message, each under the size limit: two busy sites share thousands)
    PERFORM chips._send(chips._round_me(), chips._site_address(p.agent), 'round', 'agree',
        pg_catalog.jsonb_build_object('round', l.lift_uuid, 'attempt', l.attempt, 'part', p.part,
                                      'parts', p.parts, 'moves', p.moves))
    FROM (SELECT m.agent, m.n / 500 + 1 AS part, pg_catalog.max(m.total - 1) / 500 + 1 AS parts,
                 pg_catalog.jsonb_agg(m.move ORDER BY m.n) AS moves
          FROM (SELECT t.part_cert->'chad'->>'agent' AS agent,
                       pg_catalog.jsonb_build_array(t.tally_uuid, y.flow) AS move,
                       pg_catalog.row_number() OVER w - 1 AS n, pg_catalog.count(*) OVER w AS total
                FROM chips.round_moves y
                JOIN chips.tallies t ON t.tally_uuid = y.tally AND t.part_ent IS NULL
                WHERE y.lift_id = l.id AND NOT y.local
                WINDOW w AS (PARTITION BY t.part_cert->'chad'->>'agent' ORDER BY t.tally_uuid
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) m
          GROUP BY m.agent, m.n / 500
          ORDER BY m.agent, m.n / 500) p;
    PERFORM chips._round_agreed(l.id);
END
$$;

-- A member's work on its rounds, piece by piece, each piece committed on its own (chipsd calls
-- it when woken on channel chips_round, and every second; CALL it outside a transaction
-- block). Returns how many pieces it did.
CREATE PROCEDURE chips.round_work(INOUT pieces integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_lift bigint;
BEGIN
    pieces := 0;
    LOOP
        v_lift := chips._round_next();
        EXIT WHEN v_lift IS NULL;
        IF chips._round_work_step(v_lift) THEN
            pieces := pieces + 1;
        END IF;
        COMMIT;
    END LOOP;
END
$$;

-- The lift with round work to do next, if any, locked (the lift first, as every message about
-- the round locks it before its state: no deadlock with them).
CREATE FUNCTION chips._round_next() RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
    SELECT l.id FROM chips.lifts l JOIN chips.round_state x ON x.lift_id = l.id
    WHERE x.work IS NOT NULL ORDER BY l.id LIMIT 1 FOR UPDATE OF l
$$;

-- chips._round_step for the agent (SECURITY DEFINER: the procedure that commits cannot be).
CREATE FUNCTION chips._round_work_step(p_lift bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$ SELECT chips._round_step(p_lift) $$;

-- A partner site's moves on the tallies it shares with this one ([tally, units its holder's
-- position rises by]).
CREATE FUNCTION chips._recv_round_agree(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    v_attempt integer := (msg->'object'->>'attempt')::integer;
    v_part integer := coalesce((msg->'object'->>'part')::integer, 1);
    v_parts integer := coalesce((msg->'object'->>'parts')::integer, 1);
BEGIN
    SELECT * INTO l FROM chips.lifts x
    WHERE x.lift_uuid = (msg->'object'->>'round')::uuid AND x.kind = 'round' FOR UPDATE;
    IF NOT FOUND OR l.status IN ('good', 'void') OR v_attempt IS NULL OR v_attempt < l.attempt THEN
        RETURN 'ignored';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.tallies t
                   WHERE t.part_ent IS NULL AND t.part_cert->'chad'->>'agent' = msg->'from'->>'agent') THEN
        RETURN 'ignored';   -- a site this one shares no tally with
    END IF;
    IF pg_catalog.jsonb_typeof(msg->'object'->'moves') IS DISTINCT FROM 'array'
       OR v_parts < 1 OR v_parts > 100000 OR v_part NOT BETWEEN 1 AND v_parts THEN
        RAISE EXCEPTION 'an agreement is {round, attempt, part, parts, moves: [[tally, units], ...]}'
            USING ERRCODE = '22023';
    END IF;
    -- its parts gather in one row; a part already in changes nothing
    INSERT INTO chips.round_agrees AS a (lift_id, agent, attempt, moves, parts, got)
    VALUES (l.id, msg->'from'->>'agent', v_attempt, msg->'object'->'moves', v_parts, ARRAY[v_part])
    ON CONFLICT (lift_id, agent, attempt) DO UPDATE
        SET moves = a.moves || EXCLUDED.moves, got = a.got || EXCLUDED.got
        WHERE a.parts = EXCLUDED.parts AND NOT (v_part = ANY (a.got));
    PERFORM chips._round_agreed(l.id);
    RETURN 'agree';
END
$$;

-- When this site has reserved its part and every partner site said the same moves on the
-- tallies they share: ready (or, on any difference, refuse).
CREATE FUNCTION chips._round_agreed(p_lift bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts;
    st chips.round_state;
    v_bad text;
BEGIN
    SELECT * INTO l FROM chips.lifts x WHERE x.id = p_lift;
    SELECT * INTO st FROM chips.round_state x WHERE x.lift_id = p_lift;
    IF l.status <> 'pend' OR st.work IS NOT NULL THEN
        RETURN;     -- not reserved yet, or already ending
    END IF;
    -- every site that told its moves must have been told the opposite of this site's on exactly
    -- the tallies they share
    SELECT pg_catalog.string_agg(a.agent, ', ') INTO v_bad
    FROM chips.round_agrees a
    WHERE a.lift_id = p_lift AND a.attempt = l.attempt AND pg_catalog.cardinality(a.got) = a.parts
      AND NOT chips._round_moves_match(p_lift, a.agent, a.moves);
    IF v_bad IS NOT NULL THEN
        PERFORM chips._round_work_on(l.id, 'void',
            'the moves on tallies shared with ' || v_bad || ' differ between the sites');
        PERFORM chips._send(chips._round_me(), l.origin, 'round', 'refuse', pg_catalog.jsonb_build_object(
            'round', l.lift_uuid, 'attempt', l.attempt,
            'reason', 'the moves on tallies shared with another site differ between the sites'));
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.unnest(st.partners) p
               WHERE NOT EXISTS (SELECT 1 FROM chips.round_agrees a
                                 WHERE a.lift_id = p_lift AND a.attempt = l.attempt AND a.agent = p
                                   AND pg_catalog.cardinality(a.got) = a.parts)) THEN
        RETURN;     -- waiting for a partner (or the rest of its agreement)
    END IF;
    UPDATE chips.round_state x SET ready = l.attempt WHERE x.lift_id = l.id;
    PERFORM chips._send(chips._round_me(), l.origin, 'round', 'ready', pg_catalog.jsonb_build_object(
        'round', l.lift_uuid, 'attempt', l.attempt, 'share', chips.b64url_encode(l.secret)));
END
$$;

-- Whether a partner's moves are the opposite of this site's on exactly the tallies they share.
CREATE FUNCTION chips._round_moves_match(p_lift bigint, p_agent text, p_moves jsonb) RETURNS boolean
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

-- The decision.
CREATE FUNCTION chips._recv_round_good(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._round_lift(msg);
BEGIN
    IF l.status IN ('good', 'void')
       OR (SELECT x.work FROM chips.round_state x WHERE x.lift_id = l.id) IN ('good', 'void') THEN
        RETURN 'ignored';   -- decided here already (settled, or settling)
    END IF;
    IF pg_catalog.jsonb_typeof(msg->'object'->'shares') <> 'array'
       OR chips._round_condition((SELECT pg_catalog.jsonb_agg(chips.b64url_encode(pg_catalog.sha256(
                                      chips.b64url_decode(x.v #>> '{}')))) FROM pg_catalog.jsonb_array_elements(msg->'object'->'shares') x(v)))
          IS DISTINCT FROM l.condition THEN
        RAISE EXCEPTION 'those are not the shares of every member of round %', l.lift_uuid USING ERRCODE = '28000';
    END IF;
    -- only what this site said ready for: its part reserved and agreed with its partners
    IF l.status <> 'pend' OR (msg->'object'->>'attempt')::integer IS DISTINCT FROM l.attempt
       OR (SELECT x.ready FROM chips.round_state x WHERE x.lift_id = l.id) IS DISTINCT FROM l.attempt THEN
        RAISE EXCEPTION 'this site is not ready for attempt % of round %', msg->'object'->>'attempt', l.lift_uuid
            USING ERRCODE = '55000';
    END IF;
    -- settled piece by piece (chips.round_work)
    PERFORM chips._round_work_on(l.id, 'good');
    RETURN 'good';
END
$$;

CREATE FUNCTION chips._recv_round_void(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    l chips.lifts := chips._round_lift(msg);
    v_work text := (SELECT x.work FROM chips.round_state x WHERE x.lift_id = l.id);
BEGIN
    IF l.status = 'good' OR v_work = 'good' THEN
        RETURN 'ignored';
    END IF;
    IF pg_catalog.sha256(chips.b64url_decode(msg->'object'->>'secret')) IS DISTINCT FROM l.void_cond THEN
        RAISE EXCEPTION 'that is not the void secret of round %', l.lift_uuid USING ERRCODE = '28000';
    END IF;
    UPDATE chips.lifts x SET void_secret = chips.b64url_decode(msg->'object'->>'secret') WHERE x.id = l.id;
    IF l.status <> 'void' AND v_work IS DISTINCT FROM 'void' THEN
        -- what this site reserved is released piece by piece (chips.round_work)
        PERFORM chips._round_work_on(l.id, 'void', coalesce(msg->'object'->>'reason', 'the round is void'));
    END IF;
    RETURN 'void';
END
$$;

------------------------------------------------------------------------------------------------
-- Timers
------------------------------------------------------------------------------------------------

-- The timers of clearing rounds (called by chips.lift_tick): a coordinator opens a round when
-- one is due and none is under way, solves one whose sites did not all send their graphs in
-- time without them, and voids one past its expiry; a member that prepared asks the coordinator
-- for the decision past the expiry. Returns what it did.
CREATE FUNCTION chips.round_tick(OUT opened integer, OUT solved integer, OUT voided integer,
                                 OUT asked integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    s chips.round_settings;
    r record;
BEGIN
    opened := 0; solved := 0; voided := 0; asked := 0;
    SELECT * INTO s FROM chips.round_settings;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR r IN SELECT x.id FROM chips.rounds x
             WHERE x.status IN ('collect', 'prepare') AND x.expires <= pg_catalog.now() FOR UPDATE LOOP
        PERFORM chips._round_decide(r.id, 'void', 'expired');
        voided := voided + 1;
    END LOOP;
    FOR r IN SELECT x.id FROM chips.rounds x
             WHERE x.status = 'collect' AND x.collect_until <= pg_catalog.now() FOR UPDATE LOOP
        IF EXISTS (SELECT 1 FROM chips.round_sites y WHERE y.round_id = r.id AND y.status = 'graph') THEN
            PERFORM chips._round_flows(r.id);
            solved := solved + 1;
        ELSE
            PERFORM chips._round_decide(r.id, 'void', 'no site sent its graph');
            voided := voided + 1;
        END IF;
    END LOOP;
    IF s.coordinate AND (s.last_round IS NULL OR s.last_round + s.every <= pg_catalog.now())
       AND NOT EXISTS (SELECT 1 FROM chips.rounds x WHERE x.status IN ('collect', 'prepare'))
       AND EXISTS (SELECT 1 FROM chips.round_members) THEN
        PERFORM chips._round_open();
        opened := 1;
    END IF;
    -- a member past the expiry: a part it never said ready for is void here at once (nothing
    -- can make it good); one it said ready for waits for the coordinator's decision, and asks
    FOR r IN SELECT x.*, y.ready FROM chips.lifts x JOIN chips.round_state y ON y.lift_id = x.id
             WHERE x.kind = 'round' AND x.status IN ('draft', 'pend') AND x.expires <= pg_catalog.now()
               AND y.work IS DISTINCT FROM 'good' AND y.work IS DISTINCT FROM 'void'
               AND (x.asked IS NULL OR x.asked + interval '2 seconds' <= pg_catalog.now()) LOOP
        IF r.ready IS DISTINCT FROM r.attempt THEN
            PERFORM chips._round_work_on(r.id, 'void', 'expired before this site was ready');
            voided := voided + 1;
            CONTINUE;
        END IF;
        PERFORM chips._send(chips._round_me(), r.origin, 'round', 'status',
                            pg_catalog.jsonb_build_object('round', r.lift_uuid));
        UPDATE chips.lifts x SET asked = pg_catalog.now() WHERE x.id = r.id;
        asked := asked + 1;
    END LOOP;
END
$$;

-- Runs a round now (a coordinator's admin, or a test): opens it whatever `every` says.
CREATE FUNCTION chips.round_open() RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF NOT (chips._round_set()).coordinate THEN
        RAISE EXCEPTION 'this site coordinates no clearing rounds' USING ERRCODE = '55000',
            HINT = 'chips.round_configure(coordinate => true)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.round_members) THEN
        RAISE EXCEPTION 'no site has joined this coordinator' USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM chips.rounds x WHERE x.status IN ('collect', 'prepare')) THEN
        RAISE EXCEPTION 'a round is under way' USING ERRCODE = '55000';
    END IF;
    v_id := chips._round_open();
    RETURN (SELECT x.round_uuid FROM chips.rounds x WHERE x.id = v_id);
END
$$;
