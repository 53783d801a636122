-- chips install SQL, part 4: credit lifts executed inside one site. Functions only.
--
-- A clearing pass: chips.clearing_plan (Rust: the exact optimum over this site's local tallies,
-- from balances, both holders' trading variables and the credit limits they granted) proposes
-- circles without locking anything; chips._lift_run then takes each circle in turn, locks its
-- tallies (every half, in id order), re-checks every step's capacity against the tally as it
-- is now (a payment or a settings change since the plan may have shrunk it: the lift shrinks
-- with it, or is skipped), and writes the lift and one lift chit on both halves of every tally
-- of the circle, chained like any good chit: all of it, or nothing.

-- The circles of the plan, one row each (steps in order).
CREATE FUNCTION chips._plan_circles(p_min_units bigint, p_max_len integer, p_through text,
                                    p_max_margin double precision)
RETURNS TABLE (uuids uuid[], debtors text[], creditors text[], costed boolean[], planned bigint,
               margin double precision)
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
    SELECT array_agg(q.tally ORDER BY q.step), array_agg(q.debtor ORDER BY q.step),
           array_agg(q.creditor ORDER BY q.step), array_agg(q.costed ORDER BY q.step),
           min(q.units), min(q.margin)
    FROM chips.clearing_plan(p_min_units, p_max_len, 0, p_through, p_max_margin) q
    GROUP BY q.circle ORDER BY q.circle
$$;

-- One circle: lock its tallies (every half, in id order), re-check every step's capacity as the
-- tallies are now, and (with p_execute) write the lift and one lift chit on both halves of
-- every step, chained. Anything that is not a circle of open local tallies is refused.
CREATE FUNCTION chips._lift_circle(p_uuids uuid[], p_debtors text[], p_creditors text[],
                                   p_costed boolean[], p_planned bigint, p_margin double precision,
                                   p_min_units bigint, p_execute boolean, p_through text,
                                   p_max_margin double precision)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    n integer := coalesce(pg_catalog.cardinality(p_uuids), 0);
    v_units bigint := p_planned;
    v_cap bigint;
    v_lift uuid;
    v_id bigint;
    v_doc jsonb;
    h chips.tallies;     -- the half of the step's debtor: its position rises
    p chips.tallies;     -- the creditor's half: its position drops (it issues the lift chit)
    cf chips.chits;
    cs chips.chits;
BEGIN
    IF n < 2 OR pg_catalog.cardinality(p_debtors) IS DISTINCT FROM n
       OR pg_catalog.cardinality(p_creditors) IS DISTINCT FROM n
       OR pg_catalog.cardinality(p_costed) IS DISTINCT FROM n
       OR p_planned IS NULL OR p_planned < 1 OR p_min_units IS NULL OR p_min_units < 1
       OR p_max_margin IS NULL THEN
        RAISE EXCEPTION 'a lift is a circle of at least 2 steps, with units >= 1' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1..n LOOP
        IF p_creditors[i] IS DISTINCT FROM p_debtors[i % n + 1] THEN
            RAISE EXCEPTION 'step % of the lift does not lead to the next step''s debtor', i
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    PERFORM 1 FROM chips.tallies x WHERE x.tally_uuid = ANY (p_uuids) ORDER BY x.id FOR UPDATE;
    FOR i IN 1..n LOOP
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i] AND x.ent = p_debtors[i];
        SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i] AND x.ent = p_creditors[i];
        v_cap := CASE
            WHEN h.id IS NULL OR p.id IS NULL OR h.side = p.side
                 OR h.status <> 'open' OR p.status <> 'open'
                 OR h.net_good <> h.net_pend OR p.net_good <> p.net_pend THEN 0
            ELSE chips._recv_capacity(h, p.clutch, p_max_margin, coalesce(p_costed[i], false)) END;
        v_units := least(v_units, coalesce(v_cap, 0));   -- least() skips nulls: never here
    END LOOP;
    lift := NULL;
    units := greatest(v_units, 0);
    tallies := n;
    IF v_units < p_min_units THEN
        status := 'skipped';        -- payments since the plan used the capacity up
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT coalesce(p_execute, false) THEN
        status := 'planned';
        RETURN NEXT;
        RETURN;
    END IF;
    v_lift := pg_catalog.gen_random_uuid();
    INSERT INTO chips.lifts (lift_uuid, kind, status, units, tallies, debtors, through, margin)
    VALUES (v_lift, 'local', 'good', v_units, p_uuids, p_debtors, p_through, coalesce(p_margin, 0))
    RETURNING id INTO v_id;
    FOR i IN 1..n LOOP
        SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i] AND x.ent = p_creditors[i];
        v_doc := chips.chit_doc_make(p_uuids[i], p.side, 'lift', pg_catalog.gen_random_uuid(),
                                     (extract(epoch FROM pg_catalog.now()) * 1000)::bigint,
                                     v_units, pg_catalog.jsonb_build_object('lift', v_lift), NULL);
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i] AND x.side = 'foil';
        cf := chips._chit_insert(h, v_doc, 'good', NULL, v_id);
        SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i] AND x.side = 'stock';
        cs := chips._chit_insert(h, v_doc, 'good', NULL, v_id);
        PERFORM chips._chit_good(cf.tally_id, cf);     -- chains both halves
        PERFORM chips._chit_effects(cs.tally_id, cs);
        PERFORM pg_catalog.pg_notify('chips_user_' || x.ent, pg_catalog.json_build_object(
            'target', 'lift', 'lift', v_lift, 'tally', p_uuids[i], 'units', v_units)::text)
        FROM chips.tallies x WHERE x.tally_uuid = p_uuids[i];
    END LOOP;
    lift := v_lift;
    status := 'good';
    RETURN NEXT;
END
$$;

-- A whole pass in the caller's transaction.
CREATE FUNCTION chips._lift_run(p_execute boolean, p_min_units bigint, p_max_len integer,
                                p_through text, p_max_margin double precision)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql
AS $$
DECLARE
    c record;
    v_margin double precision := coalesce(p_max_margin,
        (SELECT x.max_margin FROM chips.clearing_settings x), 0);
BEGIN
    IF p_min_units IS NULL OR p_min_units < 1 OR p_max_len IS NULL OR p_max_len < 0 THEN
        RAISE EXCEPTION 'min_units must be >= 1 and max_len >= 0' USING ERRCODE = '22023';
    END IF;
    FOR c IN SELECT * FROM chips._plan_circles(p_min_units, p_max_len, p_through, v_margin) LOOP
        RETURN QUERY SELECT * FROM chips._lift_circle(c.uuids, c.debtors, c.creditors, c.costed,
            c.planned, c.margin, p_min_units, p_execute, p_through, v_margin);
    END LOOP;
END
$$;

-- A clearing pass over the whole site, or through one user (every circle starts and ends at
-- that user). Dry run unless execute.
CREATE FUNCTION chips.clear(execute boolean DEFAULT false, min_units bigint DEFAULT 1,
                            max_len integer DEFAULT 0, through text DEFAULT NULL)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF clear.through IS NOT NULL AND NOT EXISTS (SELECT 1 FROM chips.users u WHERE u.ent = clear.through) THEN
        RAISE EXCEPTION 'no user %', clear.through USING ERRCODE = '42704';
    END IF;
    RETURN QUERY SELECT * FROM chips._lift_run(coalesce(clear.execute, false), clear.min_units,
                                               clear.max_len, clear.through, NULL);
END
$$;

-- What a user asks for: the lifts that lower their own debts and what they are owed, through
-- themselves. Other users' tallies move only within the trading variables and limits they set.
CREATE FUNCTION chips.lift_through_me(execute boolean DEFAULT false, min_units bigint DEFAULT 1,
                                      max_len integer DEFAULT 0)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    RETURN QUERY SELECT * FROM chips._lift_run(coalesce(lift_through_me.execute, false),
                                               lift_through_me.min_units, lift_through_me.max_len,
                                               v_me.ent, NULL);
END
$$;

-- Automatic clearing: the site's settings. NULL leaves a setting as it is.
CREATE FUNCTION chips.clearing_configure(enabled boolean DEFAULT NULL, every interval DEFAULT NULL,
                                         min_units bigint DEFAULT NULL, max_len integer DEFAULT NULL,
                                         max_margin double precision DEFAULT NULL)
RETURNS chips.clearing_settings
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    r chips.clearing_settings;
BEGIN
    IF clearing_configure.every < interval '1 second' OR clearing_configure.min_units < 1
       OR clearing_configure.max_len < 0
       OR NOT clearing_configure.max_margin BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'every must be at least 1 second, min_units >= 1, max_len >= 0 and max_margin within [0, 1]'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO chips.clearing_settings AS x DEFAULT VALUES ON CONFLICT (one) DO NOTHING;
    UPDATE chips.clearing_settings x SET
        enabled = coalesce(clearing_configure.enabled, x.enabled),
        every = coalesce(clearing_configure.every, x.every),
        min_units = coalesce(clearing_configure.min_units, x.min_units),
        max_len = coalesce(clearing_configure.max_len, x.max_len),
        max_margin = coalesce(clearing_configure.max_margin, x.max_margin)
    RETURNING * INTO r;
    RETURN r;
END
$$;

-- An executing pass that commits every `batch` lifts: each lift holds its tallies' locks only
-- until its batch commits, and a long pass never keeps row versions alive for its whole run.
-- A procedure (CALL it outside a transaction block); not SECURITY DEFINER (a procedure that is
-- may not commit): it needs EXECUTE on chips._plan_circles and chips._lift_circle.
CREATE PROCEDURE chips.clearing_run(INOUT lifts integer DEFAULT NULL, INOUT units numeric DEFAULT NULL,
                                    min_units bigint DEFAULT NULL, max_len integer DEFAULT NULL,
                                    batch integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
    s record;
    c record;
    r record;
    k integer := 0;
BEGIN
    SELECT coalesce(clearing_run.min_units, x.min_units, 1) AS min_units,
           coalesce(clearing_run.max_len, x.max_len, 0) AS max_len,
           coalesce(x.max_margin, 0) AS max_margin
    INTO s FROM (SELECT 1) one LEFT JOIN chips.clearing_settings x ON true;
    IF s.min_units < 1 OR s.max_len < 0 OR coalesce(clearing_run.batch, 0) < 1 THEN
        RAISE EXCEPTION 'min_units and batch must be >= 1 and max_len >= 0' USING ERRCODE = '22023';
    END IF;
    lifts := 0; units := 0;
    FOR c IN SELECT * FROM chips._plan_circles(s.min_units, s.max_len, NULL, s.max_margin) LOOP
        SELECT * INTO r FROM chips._lift_circle(c.uuids, c.debtors, c.creditors, c.costed,
            c.planned, c.margin, s.min_units, true, NULL, s.max_margin) x;
        IF r.status = 'good' THEN
            lifts := lifts + 1;
            units := units + r.units::numeric * r.tallies;
        END IF;
        k := k + 1;
        IF k % clearing_run.batch = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END
$$;

-- Runs a clearing pass if automatic clearing is on and one is due; otherwise does nothing.
-- Cheap to call often (chipsd calls it every few seconds; or schedule it with cron). The caller
-- that moves last_run claims the pass (others see it not due) and commits before running it.
CREATE PROCEDURE chips.clearing_tick(INOUT ran boolean DEFAULT NULL, INOUT lifts integer DEFAULT NULL,
                                     INOUT units numeric DEFAULT NULL)
LANGUAGE plpgsql
AS $$
BEGIN
    ran := false; lifts := 0; units := 0;
    IF NOT chips._clearing_claim() THEN
        RETURN;
    END IF;
    COMMIT;
    CALL chips.clearing_run(lifts, units);
    PERFORM chips._clearing_done(lifts, units);
    -- circles through other sites: asked for now, they clear as their sites answer
    PERFORM chips.lift_circles(coalesce((SELECT x.min_units FROM chips.clearing_settings x), 1));
    ran := true;
END
$$;

CREATE FUNCTION chips._clearing_claim() RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
    WITH claimed AS (
        UPDATE chips.clearing_settings x SET last_run = pg_catalog.now(), last_lifts = 0, last_units = 0
        WHERE x.enabled AND (x.last_run IS NULL OR pg_catalog.now() >= x.last_run + x.every)
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM claimed)
$$;

CREATE FUNCTION chips._clearing_done(p_lifts integer, p_units numeric) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
    UPDATE chips.clearing_settings SET last_lifts = p_lifts, last_units = p_units
$$;
