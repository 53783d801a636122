-- chips install SQL: peer messages. Everything a site sends goes through chips._send (applied
-- at once when the addressee is served by this database, else queued in chips.outbox); what
-- arrives comes in through chips.peer_receive, the sidecar's entry point, and chips._apply
-- hands each message to its receiver (chips._recv_*, in the file of its concern). The sidecar
-- claims, acknowledges and gives back outbox messages (outbox_claim, outbox_ack,
-- outbox_release). Functions only (sql/finalize.sql has the triggers and grants).

------------------------------------------------------------------------------------------------
-- Peer messages: outbox, inbox, local delivery
------------------------------------------------------------------------------------------------

-- Remember a partner's agent (and where it listens) so the sidecar can reach it.
CREATE FUNCTION chips._agent_seen(p_chad jsonb) RETURNS void
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

-- The address of another site's agent, as a site.
CREATE FUNCTION chips._site_address(p_agent text) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'cuid', '_site', 'agent', a.agent, 'host', a.host, 'port', a.port))
    FROM chips.agents a WHERE a.agent = p_agent
$$;

-- Send a message: applied at once when the addressee is served by this database, else queued
-- in the outbox (same transaction as the change it announces) for the sidecar to deliver.
CREATE FUNCTION chips._send(p_from jsonb, p_to jsonb, p_target text, p_action text, p_object jsonb)
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

-- Apply one message addressed to this site. Returns what it did.
CREATE FUNCTION chips._apply(msg jsonb) RETURNS text
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

-- Entry point for the sidecar: apply a message that arrived from agent `from_agent` (as
-- authenticated by the transport). Idempotent: a message id already applied returns 'duplicate'.
CREATE FUNCTION chips.peer_receive(from_agent text, msg jsonb) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_result text;
BEGIN
    IF msg IS NULL OR pg_catalog.jsonb_typeof(msg) <> 'object'
       OR NOT (msg ?& ARRAY['id', 'target', 'action', 'from', 'to', 'object']) THEN
        RAISE EXCEPTION 'a peer message is a JSON object with id, target, action, from, to and object'
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        v_id := (msg->>'id')::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'message id % is not a UUID', msg->>'id' USING ERRCODE = '22P02';
    END;
    IF msg->'from'->>'agent' IS DISTINCT FROM peer_receive.from_agent THEN
        RAISE EXCEPTION 'message % claims to come from agent % but arrived from agent %',
            v_id, msg->'from'->>'agent', peer_receive.from_agent USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.agents a WHERE a.agent = msg->'to'->>'agent' AND a.local) THEN
        RAISE EXCEPTION 'message % is for agent %, which this site does not serve',
            v_id, msg->'to'->>'agent' USING ERRCODE = '22023';
    END IF;
    INSERT INTO chips.inbox (msg_id, from_agent, target, action, result)
    VALUES (v_id, peer_receive.from_agent, msg->>'target', msg->>'action', 'applying')
    ON CONFLICT (msg_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    v_result := chips._apply(msg);
    UPDATE chips.inbox i SET result = v_result WHERE i.msg_id = v_id;
    RETURN v_result;
END
$$;

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

-- Mark outbox messages delivered (the peer applied them or reported them duplicate).
CREATE FUNCTION chips.outbox_ack(ids bigint[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE chips.outbox o SET delivered = pg_catalog.now(), claimed_until = NULL
    WHERE o.id = ANY (outbox_ack.ids) AND o.delivered IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Give back claims before their lease runs out, so the messages can be claimed again at once:
-- `unsent` were never tried (their claim does not count as an attempt), `tried` were sent and
-- not applied (the peer refused, or did not answer). Returns how many claims it gave back.
CREATE FUNCTION chips.outbox_release(unsent bigint[], tried bigint[] DEFAULT '{}') RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE chips.outbox o
    SET claimed_until = NULL,
        attempts = CASE WHEN o.id = ANY (outbox_release.unsent) THEN greatest(o.attempts - 1, 0)
                        ELSE o.attempts END
    WHERE (o.id = ANY (outbox_release.unsent) OR o.id = ANY (outbox_release.tried))
      AND o.delivered IS NULL AND o.claimed_until IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Tell the site's sidecar(s) (channel chips_agent) that a message waits in the outbox.
CREATE FUNCTION chips._outbox_notify() RETURNS trigger
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
