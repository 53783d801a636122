-- chips install SQL, part 4: credit lifts executed inside one site. Functions only.
--
-- A clearing pass: chips.clearing_plan (Rust: the exact optimum over this site's local tallies,
-- from balances, both holders' trading variables and the credit limits they granted) proposes
-- circles without locking anything; chips._lift_run then takes each circle in turn, locks its
-- tallies (every half, in id order), re-checks every step's capacity against the tally as it
-- is now (a payment or a settings change since the plan may have shrunk it: the lift shrinks
-- with it, or is skipped), and writes the lift and one lift chit on both halves of every tally
-- of the circle, chained like any good chit: all of it, or nothing.

CREATE FUNCTION chips._lift_run(p_execute boolean, p_min_units bigint, p_max_len integer,
                                p_through text, p_max_margin double precision)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql
AS $$
DECLARE
    c record;
    v_units bigint;
    v_cap bigint;
    v_lift uuid;
    v_id bigint;
    v_doc jsonb;
    v_margin double precision := coalesce(p_max_margin,
        (SELECT x.max_margin FROM chips.clearing_settings x), 0);
    h chips.tallies;     -- the half of the step's debtor: its position rises
    p chips.tallies;     -- the creditor's half: its position drops (it issues the lift chit)
    cf chips.chits;
    cs chips.chits;
    n integer;
BEGIN
    IF p_min_units IS NULL OR p_min_units < 1 OR p_max_len IS NULL OR p_max_len < 0 THEN
        RAISE EXCEPTION 'min_units must be >= 1 and max_len >= 0' USING ERRCODE = '22023';
    END IF;
    FOR c IN SELECT q.circle, array_agg(q.tally ORDER BY q.step) AS uuids,
                    array_agg(q.debtor ORDER BY q.step) AS debtors,
                    array_agg(q.creditor ORDER BY q.step) AS creditors,
                    array_agg(q.costed ORDER BY q.step) AS costed,
                    min(q.units) AS planned, min(q.margin) AS margin
             FROM chips.clearing_plan(p_min_units, p_max_len, 0, p_through, v_margin) q
             GROUP BY q.circle ORDER BY q.circle LOOP
        n := pg_catalog.array_length(c.uuids, 1);
        PERFORM 1 FROM chips.tallies x WHERE x.tally_uuid = ANY (c.uuids) ORDER BY x.id FOR UPDATE;
        v_units := c.planned;
        FOR i IN 1..n LOOP
            SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.ent = c.debtors[i];
            SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.ent = c.creditors[i];
            v_cap := CASE
                WHEN h.status IS DISTINCT FROM 'open' OR p.status IS DISTINCT FROM 'open'
                     OR h.net_good <> h.net_pend OR p.net_good <> p.net_pend THEN 0
                ELSE chips._lift_capacity(h.net_good, h.target, h.bound, h.reward, p.clutch,
                                         coalesce((h.hold_terms->>'limit')::bigint, 0),
                                         v_margin, c.costed[i]) END;
            v_units := least(v_units, coalesce(v_cap, 0));   -- least() skips nulls: never here
        END LOOP;
        lift := NULL;
        units := greatest(v_units, 0);
        tallies := n;
        IF v_units < p_min_units THEN
            status := 'skipped';        -- payments since the plan used the capacity up
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF NOT p_execute THEN
            status := 'planned';
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_lift := pg_catalog.gen_random_uuid();
        INSERT INTO chips.lifts (lift_uuid, kind, status, units, tallies, debtors, through, margin)
        VALUES (v_lift, 'local', 'good', v_units, c.uuids, c.debtors, p_through, c.margin)
        RETURNING id INTO v_id;
        FOR i IN 1..n LOOP
            SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.ent = c.creditors[i];
            v_doc := chips.chit_doc_make(c.uuids[i], p.side, 'lift', pg_catalog.gen_random_uuid(),
                                         (extract(epoch FROM pg_catalog.now()) * 1000)::bigint,
                                         v_units, pg_catalog.jsonb_build_object('lift', v_lift), NULL);
            SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.side = 'foil';
            cf := chips._chit_insert(h, v_doc, 'good', NULL, v_id);
            SELECT * INTO h FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.side = 'stock';
            cs := chips._chit_insert(h, v_doc, 'good', NULL, v_id);
            PERFORM chips._chit_good(cf.tally_id, cf);     -- chains both halves
            PERFORM chips._chit_effects(cs.tally_id, cs);
            PERFORM pg_catalog.pg_notify('chips_user_' || x.ent, pg_catalog.json_build_object(
                'target', 'lift', 'lift', v_lift, 'tally', c.uuids[i], 'units', v_units)::text)
            FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i];
        END LOOP;
        lift := v_lift;
        status := 'good';
        RETURN NEXT;
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

-- Runs a clearing pass if automatic clearing is on and one is due; otherwise does nothing.
-- Cheap to call often (chipsd calls it every few seconds; or schedule it with cron). Two callers
-- at once: one runs, the other returns at once.
CREATE FUNCTION chips.clearing_tick()
RETURNS TABLE (ran boolean, lifts integer, units numeric)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    s chips.clearing_settings;
    n integer := 0;
    total numeric := 0;
    r record;
BEGIN
    ran := false; lifts := 0; units := 0;
    SELECT * INTO s FROM chips.clearing_settings;
    IF NOT FOUND OR NOT s.enabled
       OR (s.last_run IS NOT NULL AND pg_catalog.now() < s.last_run + s.every)
       OR NOT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('chips.clearing_tick')) THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- another session may have run it just before this one took the lock
    SELECT * INTO s FROM chips.clearing_settings;
    IF s.last_run IS NOT NULL AND pg_catalog.now() < s.last_run + s.every THEN
        RETURN NEXT;
        RETURN;
    END IF;
    FOR r IN SELECT * FROM chips._lift_run(true, s.min_units, s.max_len, NULL, s.max_margin) x
             WHERE x.status = 'good' LOOP
        n := n + 1;
        total := total + r.units::numeric * r.tallies;
    END LOOP;
    UPDATE chips.clearing_settings x SET last_run = pg_catalog.now(), last_lifts = n, last_units = total;
    ran := true; lifts := n; units := total;
    RETURN NEXT;
END
$$;
