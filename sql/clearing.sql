-- chips install SQL, part 4: clearing inside one site. Functions only.
--
-- A clearing pass is chips._clearing_pass (Rust, extension/src/clearing.rs): it reads this
-- site's open local tallies without locking anything, solves the exact optimum (the most debt
-- cleared, within both holders' trading variables and the credit limits they granted), and,
-- executing, writes the optimum as one circulation: it locks the tallies it moves (every half,
-- in id order), re-checks each move against the tally as it is now (a payment since the plan may
-- have used some of it: the circles through that tally shrink, or go), and writes one lift with
-- one lift chit on both halves of every tally it moves, chained, in one INSERT (the statement
-- triggers move balances and chain tips and tell the holders, set-based), with the circles kept
-- in chips.pass_circles. All of it, or nothing.

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
    RETURN QUERY SELECT * FROM chips._clearing_pass(coalesce(clear.execute, false), clear.min_units,
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
    RETURN QUERY SELECT * FROM chips._clearing_pass(coalesce(lift_through_me.execute, false),
                                                    lift_through_me.min_units, lift_through_me.max_len,
                                                    v_me.ent, NULL);
END
$$;

-- Automatic clearing: the site's settings. NULL leaves a setting as it is.
CREATE FUNCTION chips.clearing_configure(enabled boolean DEFAULT NULL, every interval DEFAULT NULL,
                                         min_units bigint DEFAULT NULL, max_len integer DEFAULT NULL,
                                         max_margin double precision DEFAULT NULL,
                                         piece integer DEFAULT NULL, continuous boolean DEFAULT NULL)
RETURNS chips.clearing_settings
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    r chips.clearing_settings;
BEGIN
    IF clearing_configure.every < interval '1 second' OR clearing_configure.min_units < 1
       OR clearing_configure.max_len < 0
       OR NOT clearing_configure.max_margin BETWEEN 0 AND 1 OR clearing_configure.piece < 0 THEN
        RAISE EXCEPTION 'every must be at least 1 second, min_units >= 1, max_len >= 0, max_margin within [0, 1] and piece >= 0'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO chips.clearing_settings AS x DEFAULT VALUES ON CONFLICT (one) DO NOTHING;
    UPDATE chips.clearing_settings x SET
        enabled = coalesce(clearing_configure.enabled, x.enabled),
        every = coalesce(clearing_configure.every, x.every),
        min_units = coalesce(clearing_configure.min_units, x.min_units),
        max_len = coalesce(clearing_configure.max_len, x.max_len),
        max_margin = coalesce(clearing_configure.max_margin, x.max_margin),
        piece = coalesce(clearing_configure.piece, x.piece),
        continuous = coalesce(clearing_configure.continuous, x.continuous)
    RETURNING * INTO r;
    RETURN r;
END
$$;

-- An executing pass with the site's settings (min_units, max_len, max_margin); `lifts` counts
-- the circles lifted, `units` the units moved. In the caller's transaction, all or nothing;
-- with `piece` > 0, cut into pieces of at most that many tallies, each a circulation of whole
-- circles committed on its own (a lift each): a payment then waits at most one piece's write
-- for a tally the pass moves, and a pass cut short leaves every committed piece whole. A
-- procedure (CALL it outside a transaction block when it commits pieces).
CREATE PROCEDURE chips.clearing_run(INOUT lifts integer DEFAULT NULL, INOUT units numeric DEFAULT NULL,
                                    min_units bigint DEFAULT NULL, max_len integer DEFAULT NULL,
                                    piece integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    s record;
    k integer;
    n integer;
    u numeric;
BEGIN
    SELECT coalesce(clearing_run.min_units, x.min_units, 1) AS min_units,
           coalesce(clearing_run.max_len, x.max_len, 0) AS max_len,
           coalesce(clearing_run.piece, x.piece, 0) AS piece
    INTO s FROM (SELECT 1) one LEFT JOIN chips.clearing_settings x ON true;
    SELECT count(*) FILTER (WHERE p.status = 'good'),
           coalesce(sum(p.units::numeric * p.tallies) FILTER (WHERE p.status = 'good'), 0)
    INTO lifts, units
    FROM chips._clearing_pass(true, s.min_units, s.max_len, NULL, NULL, s.piece) p;
    IF s.piece = 0 THEN
        RETURN;
    END IF;
    LOOP
        COMMIT;
        SELECT count(*), count(*) FILTER (WHERE p.status = 'good'),
               coalesce(sum(p.units::numeric * p.tallies) FILTER (WHERE p.status = 'good'), 0)
        INTO k, n, u FROM chips._clearing_next() p;
        EXIT WHEN k = 0;
        lifts := lifts + n;
        units := units + u;
    END LOOP;
END
$$;

-- Continuous clearing: with automatic clearing on and `continuous` set, a tick that lifts the
-- circles through the tallies that changed since the last tick of this session
-- (chips._clearing_continuous, extension/src/continuous.rs; the session keeps the site's graph,
-- so call it from one long-lived connection: chipsd calls it every continuous_ms). Otherwise it
-- does nothing. `lifts` counts the circles lifted, `units` the units moved.
CREATE FUNCTION chips.clearing_continuous(OUT lifts integer, OUT units numeric)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    s chips.clearing_settings;
BEGIN
    lifts := 0; units := 0;
    SELECT * INTO s FROM chips.clearing_settings x;
    IF NOT FOUND OR NOT s.enabled OR NOT s.continuous THEN
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE p.status = 'good'),
           coalesce(sum(p.units::numeric * p.tallies) FILTER (WHERE p.status = 'good'), 0)
    INTO lifts, units
    FROM chips._clearing_continuous(s.min_units, s.max_len) p;
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
    COMMIT;
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
