-- chips install SQL, part 4: credit lifts executed inside one site. Functions only.
--
-- A local clearing pass: chips.clearing_plan (Rust: the exact optimum over this site's local
-- tallies) proposes circles without locking anything; chips.clear then takes each circle in
-- turn, locks its tallies (every half, in id order), re-checks the capacity against the
-- balances as they are now (a payment since the plan may have shrunk a debt: the lift shrinks
-- with it, or is skipped), and writes the lift and one lift chit on both halves of every tally
-- of the circle, chained like any good chit: all of it, or nothing.

CREATE FUNCTION chips.clear(execute boolean DEFAULT false, min_units bigint DEFAULT 1,
                            max_len integer DEFAULT 0)
RETURNS TABLE (lift uuid, units bigint, tallies integer, status text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    c record;
    v_units bigint;
    v_cap bigint;
    v_lift uuid;
    v_id bigint;
    v_by text;
    v_doc jsonb;
    s chips.tallies;
    f chips.tallies;
    cf chips.chits;
    cs chips.chits;
    n integer;
BEGIN
    IF clear.min_units IS NULL OR clear.min_units < 1 OR clear.max_len IS NULL OR clear.max_len < 0 THEN
        RAISE EXCEPTION 'min_units must be >= 1 and max_len >= 0' USING ERRCODE = '22023';
    END IF;
    FOR c IN SELECT p.circle, array_agg(p.tally ORDER BY p.step) AS uuids,
                    array_agg(p.debtor ORDER BY p.step) AS debtors, min(p.units) AS planned
             FROM chips.clearing_plan(clear.min_units, clear.max_len) p
             GROUP BY p.circle ORDER BY p.circle LOOP
        n := pg_catalog.array_length(c.uuids, 1);
        PERFORM 1 FROM chips.tallies x WHERE x.tally_uuid = ANY (c.uuids) ORDER BY x.id FOR UPDATE;
        v_units := c.planned;
        FOR i IN 1..n LOOP
            SELECT * INTO s FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.side = 'stock';
            v_cap := CASE WHEN s.status <> 'open' THEN 0
                          WHEN s.part_ent = c.debtors[i] THEN s.net_good
                          ELSE -s.net_good END;
            v_units := least(v_units, v_cap);
        END LOOP;
        lift := NULL;
        units := greatest(v_units, 0);
        tallies := n;
        IF v_units < clear.min_units THEN
            status := 'skipped';        -- payments since the plan used the capacity up
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF NOT clear.execute THEN
            status := 'planned';
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_lift := pg_catalog.gen_random_uuid();
        INSERT INTO chips.lifts (lift_uuid, kind, status, units, tallies)
        VALUES (v_lift, 'local', 'good', v_units, c.uuids) RETURNING id INTO v_id;
        FOR i IN 1..n LOOP
            SELECT * INTO s FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.side = 'stock';
            SELECT * INTO f FROM chips.tallies x WHERE x.tally_uuid = c.uuids[i] AND x.side = 'foil';
            -- the creditor's side issues the lift chit: its balance goes down, the debtor's up
            v_by := CASE WHEN s.part_ent = c.debtors[i] THEN 'stock' ELSE 'foil' END;
            v_doc := chips.chit_doc_make(c.uuids[i], v_by, 'lift', pg_catalog.gen_random_uuid(),
                                         (extract(epoch FROM pg_catalog.now()) * 1000)::bigint,
                                         v_units, pg_catalog.jsonb_build_object('lift', v_lift), NULL);
            cf := chips._chit_insert(f, v_doc, 'good', NULL);
            cs := chips._chit_insert(s, v_doc, 'good', NULL);
            UPDATE chips.chits y SET lift_id = v_id WHERE y.id IN (cf.id, cs.id);
            PERFORM chips._chit_good(f.id, cf);     -- chains both halves
            PERFORM chips._chit_effects(s.id, cs);
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
