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
