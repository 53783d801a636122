-- chips install SQL, part 2: the tally API (identity, tickets, tallies, peer messages) and the
-- trigger functions that guard tallies. Functions only: the triggers, views, row-level security
-- and grants are in sql/finalize.sql, which runs after every function exists.
--
-- Conventions
-- * Functions whose names start with '_' are internal: revoked from PUBLIC, granted to nobody.
-- * User functions are SECURITY DEFINER and act for the user mapped to the calling role
--   (chips.outer_role(): the role after SET ROLE, not the definer).
-- * Every function sets search_path, and every object is schema-qualified.
-- * Errors carry standard SQLSTATEs (docs/sql-api.md, "Errors"):
--   22023 bad value, 22P02 malformed text, 28000 signature does not verify,
--   42501 not allowed, 42704 no such object, 55000 not in a state that allows it,
--   23505 already exists.

------------------------------------------------------------------------------------------------
-- Identity
------------------------------------------------------------------------------------------------

-- The entity id of the user the calling role acts for, or null.
CREATE FUNCTION chips.my_ent() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_ent text := (SELECT u.ent FROM chips.users u WHERE u.username = chips.outer_role());
BEGIN
    -- through the gateway, only within a session the user opened (sql/access.sql)
    IF v_ent IS NOT NULL AND chips._via_gateway() AND v_ent IS DISTINCT FROM chips._session_ent() THEN
        RETURN NULL;
    END IF;
    RETURN v_ent;
END
$$;

-- The calling user's row; 42501 when the role is no active chips user.
CREATE FUNCTION chips._me() RETURNS chips.users
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_role text := chips.outer_role();
    v_user chips.users;
BEGIN
    SELECT * INTO v_user FROM chips.users u WHERE u.username = v_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role % does not act for any chips user', v_role
            USING ERRCODE = '42501',
                  HINT = 'SET ROLE to the role chips.user_create made for the user (chips.users.username).';
    END IF;
    IF v_user.status <> 'active' THEN
        RAISE EXCEPTION 'user % is %', v_user.ent, v_user.status USING ERRCODE = '42501';
    END IF;
    IF chips._via_gateway() AND v_user.ent IS DISTINCT FROM chips._session_ent() THEN
        RAISE EXCEPTION 'no live session for user %', v_user.ent USING ERRCODE = '42501',
            HINT = 'Log in again: chips.login_challenge and chips.login_finish.';
    END IF;
    RETURN v_user;
END
$$;

------------------------------------------------------------------------------------------------
-- Small helpers
------------------------------------------------------------------------------------------------

-- A timestamp as the documents write it: YYYY-MM-DDTHH:MM:SS.mmmZ (UTC).
CREATE FUNCTION chips._iso(ts timestamptz) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

-- When something given `p_lifetime` expires: 22023 unless the lifetime is positive and at most
-- `p_max` (tickets, logins, sessions; `p_what` names it in the message).
CREATE FUNCTION chips._expiry(p_lifetime interval, p_max text, p_what text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_lifetime IS NULL OR p_lifetime <= interval '0' OR p_lifetime > p_max::interval THEN
        RAISE EXCEPTION '%''s lifetime must be positive and at most %', p_what, p_max
            USING ERRCODE = '22023';
    END IF;
    RETURN pg_catalog.now() + p_lifetime;
END
$$;

CREATE FUNCTION chips._other(side text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE side WHEN 'stock' THEN 'foil' WHEN 'foil' THEN 'stock' END $$;

-- Whether two CHIP addresses name the same party (cuid and agent; host and port may differ).
CREATE FUNCTION chips._same_party(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(a->>'cuid' = b->>'cuid' AND a->>'agent' = b->>'agent', false) $$;

-- The certificate of a user of this site.
CREATE FUNCTION chips._cert(p_ent text) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'chad', pg_catalog.jsonb_build_object('cuid', u.cuid, 'agent', u.agent,
                                              'host', a.host, 'port', a.port),
        'name', u.name,
        'public', u.pubkey,
        'type', u.ent_type))
    FROM chips.users u JOIN chips.agents a ON a.agent = u.agent
    WHERE u.ent = p_ent
$$;

-- The certificate of the calling user; 55000 while the user has no public key.
CREATE FUNCTION chips._my_cert(p_me chips.users) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_me.pubkey IS NULL THEN
        RAISE EXCEPTION 'user % has no public key yet', p_me.ent
            USING ERRCODE = '55000',
                  HINT = 'An administrator registers it with chips.user_set_key(ent, pubkey).';
    END IF;
    RETURN chips._cert(p_me.ent);
END
$$;

-- The user of this site at a CHIP address, or null.
CREATE FUNCTION chips._local_ent(p_chad jsonb) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT u.ent FROM chips.users u JOIN chips.agents a ON a.agent = u.agent AND a.local
            WHERE u.cuid = p_chad->>'cuid' AND u.agent = p_chad->>'agent');
END
$$;

-- The document both parties sign, built from one half. Both halves of a tally build the same one.
CREATE FUNCTION chips._tally_doc(t chips.tallies) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'version', t.version,
        'revision', t.revision,
        'uuid', t.tally_uuid,
        'date', chips._iso(t.tally_date),
        'memo', t.memo,
        'agree', t.contract,
        t.side, pg_catalog.jsonb_build_object('cert', t.hold_cert, 'terms', t.hold_terms),
        chips._other(t.side), pg_catalog.jsonb_build_object('cert', t.part_cert, 'terms', t.part_terms)))
$$;

-- The state a person sees (draft, P.draft, H.offer, P.offer, open, closing, closed, void).
CREATE FUNCTION chips._state(t chips.tallies) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN chips.tally_state(t.status, t.hold_sig IS NOT NULL, t.part_sig IS NOT NULL,
                             t.part_cert IS NOT NULL);
END
$$;

-- Raises 28000 unless both signatures of a tally half verify over its document.
CREATE FUNCTION chips._check_signed(t chips.tallies) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_doc jsonb := chips._tally_doc(t);
BEGIN
    IF t.hold_sig IS NULL OR t.part_sig IS NULL OR t.part_cert IS NULL THEN
        RAISE EXCEPTION 'tally % needs both parties'' signatures to be open', t.tally_uuid
            USING ERRCODE = '28000';
    END IF;
    PERFORM chips._verify(v_doc, t.side, t.hold_sig);
    PERFORM chips._verify(v_doc, chips._other(t.side), t.part_sig);
END
$$;

-- The caller's half of a tally, locked. Both halves of a local tally are locked in id order
-- first, so that two users acting on one tally at once never deadlock.
CREATE FUNCTION chips._my_tally(p_me chips.users, p_uuid uuid) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    x chips.tallies;
BEGIN
    -- both halves locked (in id order, like every writer), one read
    FOR x IN SELECT * FROM chips.tallies y WHERE y.tally_uuid = p_uuid ORDER BY y.id FOR UPDATE LOOP
        IF t.id IS NULL AND x.ent = p_me.ent THEN
            t := x;
        END IF;
    END LOOP;
    IF t.id IS NULL THEN
        RAISE EXCEPTION 'you have no tally %', p_uuid USING ERRCODE = '42704';
    END IF;
    RETURN t;
END
$$;

-- Raises 28000 unless `p_sig` is `p_side`'s signature over `p_doc` (null or empty included:
-- chips.tally_verify is strict, and a strict function returns null for a null argument).
CREATE FUNCTION chips._verify(p_doc jsonb, p_side text, p_sig text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_sig IS NULL OR p_sig = '' THEN
        RAISE EXCEPTION 'tally % carries no % signature', p_doc->>'uuid', p_side
            USING ERRCODE = '28000';
    END IF;
    PERFORM chips.tally_verify(p_doc, p_side, p_sig);
END
$$;

CREATE FUNCTION chips._refuse(t chips.tallies, p_action text, p_allowed text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'cannot % tally %: it is %', p_action, t.tally_uuid, chips._state(t)
        USING ERRCODE = '55000', HINT = p_allowed;
END
$$;

------------------------------------------------------------------------------------------------
-- Peer messages: outbox, inbox, local delivery
------------------------------------------------------------------------------------------------

-- Remember a partner's agent (and where it listens) so the sidecar can reach it.
CREATE FUNCTION chips._agent_seen(p_chad jsonb) RETURNS void
LANGUAGE sql
AS $$
    -- Every message to a peer passes here: it must not lock the agent's row when nothing
    -- changes (ON CONFLICT DO UPDATE would, to commit), or every transaction sending to one peer
    -- would wait for the last, and deadlock with one that locked tallies first.
    INSERT INTO chips.agents (agent, host, port)
    VALUES (p_chad->>'agent', p_chad->>'host', (p_chad->>'port')::integer)
    ON CONFLICT (agent) DO NOTHING;
    UPDATE chips.agents a
    SET host = coalesce(a.host, p_chad->>'host'), port = coalesce(a.port, (p_chad->>'port')::integer)
    WHERE a.agent = p_chad->>'agent' AND NOT a.local
      AND ((a.host IS NULL AND p_chad->>'host' IS NOT NULL)
           OR (a.port IS NULL AND p_chad->>'port' IS NOT NULL));
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
    IF pg_catalog.octet_length(v_msg::text) > 60000 THEN
        RAISE EXCEPTION 'a message to another site may be at most 60000 bytes; this % message is %',
            p_target || '/' || p_action, pg_catalog.octet_length(v_msg::text)
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
BEGIN
    CASE (msg->>'target') || '/' || (msg->>'action')
        WHEN 'tally/ticket' THEN RETURN chips._recv_ticket(msg);
        WHEN 'tally/offer' THEN RETURN chips._recv_offer(msg);
        WHEN 'tally/open' THEN RETURN chips._recv_open(msg);
        WHEN 'tally/void' THEN RETURN chips._recv_void(msg);
        WHEN 'tally/close' THEN RETURN chips._recv_close(msg);
        WHEN 'chit/pend' THEN RETURN chips._recv_chit_pend(msg);
        WHEN 'chit/good' THEN RETURN chips._recv_chit_good(msg);
        WHEN 'chit/void' THEN RETURN chips._recv_chit_void(msg);
        WHEN 'chit/chain' THEN RETURN chips._recv_chain(msg);
        WHEN 'chit/chains' THEN RETURN chips._recv_chains(msg);
        WHEN 'lift/query' THEN RETURN chips._recv_lift_query(msg);
        WHEN 'lift/answer' THEN RETURN chips._recv_lift_answer(msg);
        WHEN 'lift/prepare' THEN RETURN chips._recv_lift_prepare(msg);
        WHEN 'lift/ready' THEN RETURN chips._recv_lift_ready(msg);
        WHEN 'lift/reject' THEN RETURN chips._recv_lift_reject(msg);
        WHEN 'lift/commit' THEN RETURN chips._recv_lift_decision(msg);
        WHEN 'lift/void' THEN RETURN chips._recv_lift_decision(msg);
        WHEN 'lift/status' THEN RETURN chips._recv_lift_status(msg);
        WHEN 'round/join' THEN RETURN chips._recv_round_join(msg);
        WHEN 'round/leave' THEN RETURN chips._recv_round_leave(msg);
        WHEN 'round/open' THEN RETURN chips._recv_round_open(msg);
        WHEN 'round/graph' THEN RETURN chips._recv_round_graph(msg);
        WHEN 'round/flows' THEN RETURN chips._recv_round_flows(msg);
        WHEN 'round/refuse' THEN RETURN chips._recv_round_refuse(msg);
        WHEN 'round/agree' THEN RETURN chips._recv_round_agree(msg);
        WHEN 'round/ready' THEN RETURN chips._recv_round_ready(msg);
        WHEN 'round/good' THEN RETURN chips._recv_round_good(msg);
        WHEN 'round/void' THEN RETURN chips._recv_round_void(msg);
        WHEN 'round/status' THEN RETURN chips._recv_round_status(msg);
        ELSE
            RAISE EXCEPTION 'unknown peer message %/%', msg->>'target', msg->>'action'
                USING ERRCODE = '22023';
    END CASE;
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

------------------------------------------------------------------------------------------------
-- Administration
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips.agent_register(agent text, host text DEFAULT NULL, port integer DEFAULT NULL,
                                     local boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    -- validates the agent id, host and port together
    PERFORM chips.address_check(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'cuid', 'x', 'agent', agent_register.agent, 'host', agent_register.host,
        'port', agent_register.port)));
    INSERT INTO chips.agents AS a (agent, host, port, local)
    VALUES (agent_register.agent, agent_register.host, agent_register.port,
            coalesce(agent_register.local, false))
    ON CONFLICT ON CONSTRAINT agents_pkey DO UPDATE
        SET host = EXCLUDED.host, port = EXCLUDED.port, local = EXCLUDED.local;
    RETURN agent_register.agent;
END
$$;

CREATE FUNCTION chips.user_create(name text, cuid text DEFAULT NULL, pubkey text DEFAULT NULL,
                                  ent_type text DEFAULT 'p', agent text DEFAULT NULL,
                                  username name DEFAULT NULL, custodial boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_agent text := user_create.agent;
    v_ent text;
    v_cuid text;
    v_role name;
    v_n integer;
    v_seed bytea;
BEGIN
    IF user_create.ent_type IS NULL OR user_create.ent_type NOT IN ('p', 'o') THEN
        RAISE EXCEPTION 'ent_type must be ''p'' (person) or ''o'' (organization)'
            USING ERRCODE = '22023';
    END IF;
    IF user_create.name IS NULL OR pg_catalog.btrim(user_create.name) = ''
       OR pg_catalog.char_length(user_create.name) > 200 THEN
        RAISE EXCEPTION 'a user''s name must be 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    IF v_agent IS NULL THEN
        SELECT pg_catalog.count(*), pg_catalog.min(a.agent) INTO v_n, v_agent
        FROM chips.agents a WHERE a.local;
        IF v_n = 0 THEN
            RAISE EXCEPTION 'this site has no agent yet' USING ERRCODE = '55000',
                HINT = 'Register it first: chips.agent_register(agent, host, port, local => true).';
        ELSIF v_n > 1 THEN
            RAISE EXCEPTION 'this site serves % agents: say which one the user belongs to', v_n
                USING ERRCODE = '22023';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM chips.agents a WHERE a.agent = v_agent AND a.local) THEN
        RAISE EXCEPTION 'agent % is not served by this site', v_agent USING ERRCODE = '22023';
    END IF;
    IF user_create.pubkey IS NOT NULL THEN
        PERFORM chips.pubkey_check(user_create.pubkey);
        IF user_create.custodial THEN
            RAISE EXCEPTION 'a custodial user''s key is made by the database: give no pubkey'
                USING ERRCODE = '22023';
        END IF;
    END IF;
    IF user_create.custodial THEN
        v_seed := chips.new_seed();
    END IF;
    v_ent := user_create.ent_type || pg_catalog.nextval('chips.ent_seq');
    v_cuid := coalesce(user_create.cuid, v_ent);
    PERFORM chips.cuid_check(v_cuid);
    IF EXISTS (SELECT 1 FROM chips.users u WHERE u.cuid = v_cuid AND u.agent = v_agent) THEN
        RAISE EXCEPTION 'CHIP user id % is already taken at this agent', v_cuid
            USING ERRCODE = '23505';
    END IF;
    v_role := coalesce(user_create.username,
                       pg_catalog.left('chips_' || pg_catalog.current_database() || '_' || v_ent, 63));
    IF EXISTS (SELECT 1 FROM chips.users u WHERE u.username = v_role) THEN
        RAISE EXCEPTION 'role % already acts for another user', v_role USING ERRCODE = '23505';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = v_role) THEN
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                   WHERE r.rolname = v_role AND (r.rolsuper OR r.rolbypassrls)) THEN
            RAISE EXCEPTION 'role % bypasses row-level security and cannot act for a user', v_role
                USING ERRCODE = '22023';
        END IF;
        IF v_role IN ('chips_admin', 'chips_agent', 'chips_gateway', 'chips_user')
           OR pg_catalog.pg_has_role(v_role, 'chips_admin', 'MEMBER')
           OR pg_catalog.pg_has_role(v_role, 'chips_agent', 'MEMBER')
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                      WHERE r.rolname = v_role AND r.rolcreaterole) THEN
            -- the gateway may SET ROLE to a user's role: it must carry no more than a user's rights
            RAISE EXCEPTION 'role % has rights beyond a user''s (admin, agent or createrole) and cannot act for a user', v_role
                USING ERRCODE = '22023';
        END IF;
        EXECUTE pg_catalog.format('GRANT chips_user TO %I', v_role);
    ELSE
        EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN IN ROLE chips_user', v_role);
    END IF;
    -- the gateway may act as the user, within sessions the user opens (sql/access.sql)
    EXECUTE pg_catalog.format('GRANT %I TO chips_gateway', v_role);
    INSERT INTO chips.users (ent, ent_type, cuid, agent, name, pubkey, username)
    VALUES (v_ent, user_create.ent_type, v_cuid, v_agent, user_create.name,
            coalesce(user_create.pubkey, chips.seed_public(v_seed)), v_role);
    IF v_seed IS NOT NULL THEN
        INSERT INTO chips.custody (ent, seed) VALUES (v_ent, v_seed);
    END IF;
    RETURN v_ent;
END
$$;

-- Register or replace a user's public key. Unsigned drafts take the new certificate.
CREATE FUNCTION chips.user_set_key(ent text, pubkey text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM chips.pubkey_check(user_set_key.pubkey);
    IF EXISTS (SELECT 1 FROM chips.custody k WHERE k.ent = user_set_key.ent) THEN
        RAISE EXCEPTION 'user % is custodial: the database holds their key', user_set_key.ent
            USING ERRCODE = '55000';
    END IF;
    UPDATE chips.users u SET pubkey = user_set_key.pubkey, updated = pg_catalog.now()
    WHERE u.ent = user_set_key.ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user %', user_set_key.ent USING ERRCODE = '42704';
    END IF;
    UPDATE chips.tallies t SET hold_cert = chips._cert(t.ent)
    WHERE t.ent = user_set_key.ent AND t.status = 'draft';
END
$$;

CREATE FUNCTION chips.user_set_status(ent text, status text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF user_set_status.status IS NULL OR user_set_status.status NOT IN ('active', 'locked', 'off') THEN
        RAISE EXCEPTION 'status must be active, locked or off' USING ERRCODE = '22023';
    END IF;
    UPDATE chips.users u SET status = user_set_status.status, updated = pg_catalog.now()
    WHERE u.ent = user_set_status.ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user %', user_set_status.ent USING ERRCODE = '42704';
    END IF;
END
$$;

-- Store a contract document; returns its rid (base64url SHA-256 of its canonical JSON).
CREATE FUNCTION chips.contract_add(doc jsonb, title text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_title text := coalesce(contract_add.title, contract_add.doc->>'title');
    v_rid text;
BEGIN
    IF contract_add.doc IS NULL OR pg_catalog.jsonb_typeof(contract_add.doc) <> 'object' THEN
        RAISE EXCEPTION 'a contract is a JSON object' USING ERRCODE = '22023';
    END IF;
    IF v_title IS NULL OR pg_catalog.btrim(v_title) = '' THEN
        RAISE EXCEPTION 'a contract needs a title (argument or "title" member)' USING ERRCODE = '22023';
    END IF;
    v_rid := chips.b64url_encode(chips.json_digest(contract_add.doc));
    INSERT INTO chips.contracts (rid, title, doc) VALUES (v_rid, v_title, contract_add.doc)
    ON CONFLICT (rid) DO NOTHING;
    RETURN v_rid;
END
$$;

------------------------------------------------------------------------------------------------
-- The user API: certificates, tickets, tallies
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips.user_cert() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$ BEGIN RETURN chips._my_cert(chips._me()); END $$;

CREATE FUNCTION chips.tally_create(side text, contract text DEFAULT NULL,
                                   hold_terms jsonb DEFAULT '{}', part_terms jsonb DEFAULT '{}',
                                   memo text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    v_cert jsonb := chips._my_cert(v_me);
    v_contract text := tally_create.contract;
    v_uuid uuid := pg_catalog.gen_random_uuid();
BEGIN
    IF tally_create.side IS NULL OR tally_create.side NOT IN ('stock', 'foil') THEN
        RAISE EXCEPTION 'side must be ''stock'' (you are the vendor and extend credit) or ''foil'' (you are the client)'
            USING ERRCODE = '22023';
    END IF;
    IF v_contract IS NULL THEN
        SELECT c.rid INTO v_contract FROM chips.contracts c ORDER BY c.created DESC, c.rid LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'this site has no contract yet' USING ERRCODE = '42704',
                HINT = 'An administrator adds one with chips.contract_add(doc).';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM chips.contracts c WHERE c.rid = v_contract) THEN
        RAISE EXCEPTION 'no contract %', v_contract USING ERRCODE = '42704';
    END IF;
    IF pg_catalog.char_length(tally_create.memo) > 1000 THEN
        RAISE EXCEPTION 'memo is longer than 1000 characters' USING ERRCODE = '22023';
    END IF;
    INSERT INTO chips.tallies (ent, tally_uuid, side, memo, contract, hold_cert, hold_terms, part_terms)
    VALUES (v_me.ent, v_uuid, tally_create.side, tally_create.memo, v_contract, v_cert,
            chips.terms_check(coalesce(tally_create.hold_terms, '{}')),
            chips.terms_check(coalesce(tally_create.part_terms, '{}')));
    RETURN v_uuid;
END
$$;

CREATE FUNCTION chips.tally_update(tally uuid, hold_terms jsonb DEFAULT NULL,
                                   part_terms jsonb DEFAULT NULL, memo text DEFAULT NULL,
                                   contract text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_update.tally);
BEGIN
    IF t.status <> 'draft' THEN
        PERFORM chips._refuse(t, 'change', 'Only a draft can be changed; counter an offer first.');
    END IF;
    IF tally_update.contract IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM chips.contracts c WHERE c.rid = tally_update.contract) THEN
        RAISE EXCEPTION 'no contract %', tally_update.contract USING ERRCODE = '42704';
    END IF;
    IF pg_catalog.char_length(tally_update.memo) > 1000 THEN
        RAISE EXCEPTION 'memo is longer than 1000 characters' USING ERRCODE = '22023';
    END IF;
    UPDATE chips.tallies x SET
        hold_terms = coalesce(chips.terms_check(tally_update.hold_terms), x.hold_terms),
        part_terms = coalesce(chips.terms_check(tally_update.part_terms), x.part_terms),
        memo = coalesce(tally_update.memo, x.memo),
        contract = coalesce(tally_update.contract, x.contract),
        hold_cert = chips._my_cert(v_me)
    WHERE x.id = t.id
    RETURNING * INTO t;
    RETURN chips._state(t);
END
$$;

-- The tally document of the caller's half: what tally_offer and tally_accept want signed
-- (sign the bytes of chips.canonical_json(doc)).
CREATE FUNCTION chips.tally_json(tally uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.tally_uuid = tally_json.tally AND x.ent = v_me.ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you have no tally %', tally_json.tally USING ERRCODE = '42704';
    END IF;
    RETURN chips._tally_doc(t);
END
$$;

CREATE FUNCTION chips.ticket_create(tally uuid, reusable boolean DEFAULT false,
                                    lifetime interval DEFAULT '48 hours')
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, ticket_create.tally);
    v_token text := chips.new_token();
    v_expires timestamptz;
BEGIN
    IF t.status <> 'draft' OR t.part_cert IS NOT NULL THEN
        PERFORM chips._refuse(t, 'invite a partner to', 'Only a draft without a partner can be offered by ticket.');
    END IF;
    v_expires := chips._expiry(ticket_create.lifetime, '90 days', 'a ticket');
    INSERT INTO chips.tickets (token, ent, tally_id, reusable, expires)
    VALUES (v_token, v_me.ent, t.id, coalesce(ticket_create.reusable, false), v_expires);
    RETURN pg_catalog.jsonb_build_object('token', v_token, 'chad', t.hold_cert->'chad',
                                         'expires', chips._iso(v_expires));
END
$$;

-- Redeem a ticket for the holder of p_cert: the ticket's draft gets a partner (one-time ticket),
-- or a copy of it does (reusable ticket). Returns the tally's uuid.
CREATE FUNCTION chips._ticket_use(p_token text, p_cert jsonb) RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    tk chips.tickets;
    t chips.tallies;
    v_uuid uuid;
    v_part_ent text := chips._local_ent(p_cert->'chad');
BEGIN
    SELECT * INTO tk FROM chips.tickets k WHERE k.token = p_token FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown ticket' USING ERRCODE = '42704';
    END IF;
    IF tk.expires <= pg_catalog.now() THEN
        RAISE EXCEPTION 'this ticket expired at %', chips._iso(tk.expires) USING ERRCODE = '55000';
    END IF;
    IF NOT tk.reusable AND tk.uses > 0 THEN
        RAISE EXCEPTION 'this ticket has already been used' USING ERRCODE = '55000';
    END IF;
    SELECT * INTO t FROM chips.tallies x WHERE x.id = tk.tally_id FOR UPDATE;
    IF t.status <> 'draft' OR t.part_cert IS NOT NULL THEN
        RAISE EXCEPTION 'the tally this ticket offers is no longer open to a partner'
            USING ERRCODE = '55000';
    END IF;
    IF chips._same_party(t.hold_cert->'chad', p_cert->'chad') THEN
        RAISE EXCEPTION 'you cannot open a tally with yourself' USING ERRCODE = '22023';
    END IF;
    IF tk.reusable THEN
        INSERT INTO chips.tallies (ent, tally_uuid, side, memo, contract, hold_cert, part_cert,
                                   hold_terms, part_terms, part_ent)
        VALUES (t.ent, pg_catalog.gen_random_uuid(), t.side, t.memo, t.contract, t.hold_cert, p_cert,
                t.hold_terms, t.part_terms, v_part_ent)
        RETURNING tally_uuid INTO v_uuid;
    ELSE
        UPDATE chips.tallies x SET part_cert = p_cert, part_ent = v_part_ent WHERE x.id = t.id;
        v_uuid := t.tally_uuid;
    END IF;
    UPDATE chips.tickets k SET uses = k.uses + 1, used = pg_catalog.now() WHERE k.token = p_token;
    PERFORM chips._agent_seen(p_cert->'chad');
    RETURN v_uuid;
END
$$;

-- Redeem a ticket someone gave the caller. For a ticket of this site the tally's uuid is
-- returned at once; for another site's ticket the redemption is sent there and null returned
-- (the offer arrives later as a P.offer tally).
CREATE FUNCTION chips.ticket_redeem(ticket jsonb) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    v_cert jsonb := chips._my_cert(v_me);
    v_chad jsonb;
BEGIN
    IF ticket_redeem.ticket IS NULL OR pg_catalog.jsonb_typeof(ticket_redeem.ticket) <> 'object'
       OR pg_catalog.jsonb_typeof(ticket_redeem.ticket->'token') <> 'string'
       OR ticket_redeem.ticket->'chad' IS NULL THEN
        RAISE EXCEPTION 'a ticket is {"token": "...", "chad": {"cuid": ..., "agent": ..., "host": ..., "port": ...}}'
            USING ERRCODE = '22023';
    END IF;
    v_chad := chips.address_check(ticket_redeem.ticket->'chad');
    IF EXISTS (SELECT 1 FROM chips.agents a WHERE a.agent = v_chad->>'agent' AND a.local) THEN
        RETURN chips._ticket_use(ticket_redeem.ticket->>'token', v_cert);
    END IF;
    PERFORM chips._send(v_cert->'chad', v_chad, 'tally', 'ticket',
                        pg_catalog.jsonb_build_object('token', ticket_redeem.ticket->>'token',
                                                      'cert', v_cert));
    RETURN NULL;
END
$$;

-- Sign a draft and offer it to the partner.
CREATE FUNCTION chips.tally_offer(tally uuid, signature text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_offer.tally);
    v_doc jsonb;
    v_sig text;
BEGIN
    IF t.status <> 'draft' THEN
        PERFORM chips._refuse(t, 'offer', 'Only a draft can be offered.');
    END IF;
    IF t.part_cert IS NULL THEN
        RAISE EXCEPTION 'tally % has no partner yet', t.tally_uuid USING ERRCODE = '55000',
            HINT = 'Give someone a ticket for it (chips.ticket_create) and wait until they redeem it.';
    END IF;
    v_doc := chips._tally_doc(t);
    v_sig := coalesce(tally_offer.signature, chips._custodial_sign(v_me.ent, v_doc));
    PERFORM chips._verify(v_doc, t.side, v_sig);
    UPDATE chips.tallies x SET status = 'offer', hold_sig = v_sig, part_sig = NULL
    WHERE x.id = t.id RETURNING * INTO t;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'tally', 'offer',
        pg_catalog.jsonb_build_object('tally', v_doc,
            'sign', pg_catalog.jsonb_build_object(t.side, v_sig)));
    RETURN chips._state(t);
END
$$;

-- Sign the partner's offer: the tally opens on both halves.
CREATE FUNCTION chips.tally_accept(tally uuid, signature text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_accept.tally);
    v_doc jsonb;
    v_sig text;
BEGIN
    IF t.status <> 'offer' OR t.part_sig IS NULL OR t.hold_sig IS NOT NULL THEN
        PERFORM chips._refuse(t, 'accept', 'Only an offer from your partner (P.offer) can be accepted.');
    END IF;
    v_doc := chips._tally_doc(t);
    v_sig := coalesce(tally_accept.signature, chips._custodial_sign(v_me.ent, v_doc));
    PERFORM chips._verify(v_doc, t.side, v_sig);
    UPDATE chips.tallies x SET status = 'open', hold_sig = v_sig
    WHERE x.id = t.id RETURNING * INTO t;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'tally', 'open',
        pg_catalog.jsonb_build_object('tally', v_doc,
            'sign', pg_catalog.jsonb_build_object(t.side, t.hold_sig,
                                                  chips._other(t.side), t.part_sig)));
    RETURN chips._state(t);
END
$$;

-- Turn the partner's offer back into a draft (next revision) to change it and offer it back.
CREATE FUNCTION chips.tally_counter(tally uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_counter.tally);
BEGIN
    IF t.status <> 'offer' OR t.part_sig IS NULL OR t.hold_sig IS NOT NULL THEN
        PERFORM chips._refuse(t, 'counter', 'Only an offer from your partner (P.offer) can be countered.');
    END IF;
    UPDATE chips.tallies x SET status = 'draft', revision = x.revision + 1, hold_sig = NULL,
        part_sig = NULL, hold_cert = chips._my_cert(v_me)
    WHERE x.id = t.id RETURNING * INTO t;
    RETURN chips._state(t);
END
$$;

-- Withdraw a draft or an offer (one's own or the partner's).
CREATE FUNCTION chips.tally_void(tally uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_void.tally);
BEGIN
    IF t.status NOT IN ('draft', 'offer') THEN
        PERFORM chips._refuse(t, 'void', 'Only a draft or an offer can be voided; close an open tally.');
    END IF;
    UPDATE chips.tallies x SET status = 'void' WHERE x.id = t.id RETURNING * INTO t;
    IF t.part_cert IS NOT NULL THEN
        PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'tally', 'void',
            pg_catalog.jsonb_build_object('uuid', t.tally_uuid, 'revision', t.revision));
    END IF;
    RETURN chips._state(t);
END
$$;

-- Closes a closing tally whose balance is zero.
CREATE FUNCTION chips._close_if_settled(p_id bigint) RETURNS void
LANGUAGE sql
AS $$
    UPDATE chips.tallies x SET status = 'closed'
    WHERE x.id = p_id AND x.status = 'closing' AND x.net_good = 0 AND x.net_pend = 0
$$;

-- Ask to close an open tally: it closes once its balance is zero.
CREATE FUNCTION chips.tally_close(tally uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, tally_close.tally);
BEGIN
    IF t.status <> 'open' THEN
        PERFORM chips._refuse(t, 'close', 'Only an open tally can be closed.');
    END IF;
    UPDATE chips.tallies x SET status = 'closing' WHERE x.id = t.id;
    PERFORM chips._close_if_settled(t.id);
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'tally', 'close',
        pg_catalog.jsonb_build_object('uuid', t.tally_uuid));
    SELECT * INTO t FROM chips.tallies x WHERE x.id = t.id;
    RETURN chips._state(t);
END
$$;

------------------------------------------------------------------------------------------------
-- Receiving tally messages (from a peer through chips.peer_receive, or locally through _send)
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips._recv_ticket(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_cert jsonb := chips.cert_check(msg->'object'->'cert');
    v_owner jsonb;
BEGIN
    IF NOT chips._same_party(v_cert->'chad', msg->'from') THEN
        RAISE EXCEPTION 'a ticket must be redeemed with the sender''s own certificate'
            USING ERRCODE = '42501';
    END IF;
    SELECT t.hold_cert->'chad' INTO v_owner
    FROM chips.tickets k JOIN chips.tallies t ON t.id = k.tally_id
    WHERE k.token = msg->'object'->>'token';
    IF NOT FOUND OR NOT chips._same_party(v_owner, msg->'to') THEN
        RAISE EXCEPTION 'unknown ticket' USING ERRCODE = '42704';
    END IF;
    PERFORM chips._ticket_use(msg->'object'->>'token', v_cert);
    RETURN 'ticket';
END
$$;

-- Which half of the tally document the message is for, and the local user holding it.
CREATE FUNCTION chips._recipient(p_doc jsonb, msg jsonb, OUT side text, OUT ent text)
LANGUAGE plpgsql
AS $$
BEGIN
    IF chips._same_party(p_doc->'stock'->'cert'->'chad', msg->'to') THEN
        side := 'stock';
    ELSIF chips._same_party(p_doc->'foil'->'cert'->'chad', msg->'to') THEN
        side := 'foil';
    ELSE
        RAISE EXCEPTION 'tally % is not addressed to one of its parties', p_doc->>'uuid'
            USING ERRCODE = '22023';
    END IF;
    IF NOT chips._same_party(p_doc->chips._other(side)->'cert'->'chad', msg->'from') THEN
        RAISE EXCEPTION 'tally % does not come from its other party', p_doc->>'uuid'
            USING ERRCODE = '42501';
    END IF;
    ent := chips._local_ent(msg->'to');
    IF ent IS NULL THEN
        RAISE EXCEPTION 'no user %:% at this site', msg->'to'->>'cuid', msg->'to'->>'agent'
            USING ERRCODE = '42704';
    END IF;
END
$$;

-- Store the document fields of a received tally in an existing half.
CREATE FUNCTION chips._store_doc(p_id bigint, p_doc jsonb, p_side text) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
BEGIN
    UPDATE chips.tallies x SET
        version = (p_doc->>'version')::integer,
        revision = (p_doc->>'revision')::integer,
        tally_date = (p_doc->>'date')::timestamptz,
        memo = p_doc->>'memo',
        contract = p_doc->>'agree',
        hold_cert = p_doc->p_side->'cert',
        part_cert = p_doc->chips._other(p_side)->'cert',
        hold_terms = p_doc->p_side->'terms',
        part_terms = p_doc->chips._other(p_side)->'terms'
    WHERE x.id = p_id RETURNING * INTO t;
    RETURN t;
END
$$;

-- Guard: what a half stores must rebuild the exact document that was signed.
CREATE FUNCTION chips._check_faithful(t chips.tallies, p_doc jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF chips.canonical_json(chips._tally_doc(t)) <> chips.canonical_json(p_doc) THEN
        RAISE EXCEPTION 'tally % cannot be stored exactly as it was signed', t.tally_uuid
            USING ERRCODE = '22023', DETAIL = chips.canonical_json(p_doc);
    END IF;
END
$$;

CREATE FUNCTION chips._recv_offer(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb := chips.tally_doc_check(msg->'object'->'tally');
    v_rev integer := (v_doc->>'revision')::integer;
    r record;
    v_sig text;
    t chips.tallies;
BEGIN
    SELECT * INTO r FROM chips._recipient(v_doc, msg);
    v_sig := msg->'object'->'sign'->>chips._other(r.side);
    IF v_sig IS NULL THEN
        RAISE EXCEPTION 'an offer must carry the offerer''s signature' USING ERRCODE = '22023';
    END IF;
    PERFORM chips._verify(v_doc, chips._other(r.side), v_sig);
    SELECT * INTO t FROM chips.tallies x
    WHERE x.tally_uuid = (v_doc->>'uuid')::uuid AND x.side = r.side FOR UPDATE;
    IF NOT FOUND THEN
        -- a void for this revision overtook the offer: the offer is withdrawn already
        IF EXISTS (SELECT 1 FROM chips.tally_tombstones z
                   WHERE z.tally_uuid = (v_doc->>'uuid')::uuid AND z.ent = r.ent AND z.revision >= v_rev) THEN
            RETURN 'ignored';
        END IF;
        INSERT INTO chips.tallies (ent, tally_uuid, side, version, revision, status, tally_date, memo,
                                   contract, hold_cert, part_cert, hold_terms, part_terms, part_sig,
                                   part_ent)
        VALUES (r.ent, (v_doc->>'uuid')::uuid, r.side, (v_doc->>'version')::integer, v_rev, 'offer',
                (v_doc->>'date')::timestamptz, v_doc->>'memo', v_doc->>'agree',
                v_doc->r.side->'cert', v_doc->chips._other(r.side)->'cert',
                v_doc->r.side->'terms', v_doc->chips._other(r.side)->'terms', v_sig,
                chips._local_ent(msg->'from'))
        RETURNING * INTO t;
    ELSE
        IF t.ent <> r.ent THEN
            RAISE EXCEPTION 'tally % is held here by another user', t.tally_uuid USING ERRCODE = '22023';
        END IF;
        -- an open tally, an older revision, or one we signed ourselves stays as it is
        IF t.status IN ('open', 'closing', 'closed') OR v_rev < t.revision
           OR (v_rev = t.revision AND t.hold_sig IS NOT NULL) THEN
            RETURN 'ignored';
        END IF;
        UPDATE chips.tallies x SET status = 'offer', hold_sig = NULL, part_sig = v_sig
        WHERE x.id = t.id;
        t := chips._store_doc(t.id, v_doc, r.side);
    END IF;
    PERFORM chips._check_faithful(t, v_doc);
    RETURN 'offer';
END
$$;

CREATE FUNCTION chips._recv_open(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb := chips.tally_doc_check(msg->'object'->'tally');
    r record;
    v_hold_sig text;
    v_part_sig text;
    t chips.tallies;
BEGIN
    SELECT * INTO r FROM chips._recipient(v_doc, msg);
    v_hold_sig := msg->'object'->'sign'->>r.side;
    v_part_sig := msg->'object'->'sign'->>chips._other(r.side);
    IF v_hold_sig IS NULL OR v_part_sig IS NULL THEN
        RAISE EXCEPTION 'an open tally must carry both signatures' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM chips.tallies x
    WHERE x.tally_uuid = (v_doc->>'uuid')::uuid AND x.side = r.side FOR UPDATE;
    IF NOT FOUND OR t.ent <> r.ent THEN
        RAISE EXCEPTION 'no tally % here to open', v_doc->>'uuid' USING ERRCODE = '42704';
    END IF;
    IF t.status IN ('open', 'closing', 'closed') OR (v_doc->>'revision')::integer < t.revision THEN
        RETURN 'ignored';
    END IF;
    PERFORM chips._verify(v_doc, r.side, v_hold_sig);
    PERFORM chips._verify(v_doc, chips._other(r.side), v_part_sig);
    t := chips._store_doc(t.id, v_doc, r.side);
    UPDATE chips.tallies x SET hold_sig = v_hold_sig, part_sig = v_part_sig, status = 'open'
    WHERE x.id = t.id RETURNING * INTO t;
    PERFORM chips._check_faithful(t, v_doc);
    RETURN 'open';
END
$$;

-- The partner's half of a tally addressed by a message carrying {uuid}; null when unknown.
CREATE FUNCTION chips._partner_half(msg jsonb) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    v_ent text := chips._local_ent(msg->'to');
    t chips.tallies;
BEGIN
    SELECT * INTO t FROM chips.tallies x
    WHERE x.tally_uuid = (msg->'object'->>'uuid')::uuid AND x.ent = v_ent FOR UPDATE;
    IF FOUND AND NOT chips._same_party(t.part_cert->'chad', msg->'from') THEN
        RAISE EXCEPTION 'only the partner of tally % can do that', t.tally_uuid USING ERRCODE = '42501';
    END IF;
    RETURN t;
END
$$;

CREATE FUNCTION chips._recv_void(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._partner_half(msg);
    v_ent text := chips._local_ent(msg->'to');
BEGIN
    IF t.id IS NULL AND v_ent IS NOT NULL THEN
        -- the void overtook its offer: remember it so the offer is ignored when it comes
        INSERT INTO chips.tally_tombstones AS z (tally_uuid, ent, revision)
        VALUES ((msg->'object'->>'uuid')::uuid, v_ent, (msg->'object'->>'revision')::integer)
        ON CONFLICT (tally_uuid, ent) DO UPDATE SET revision = greatest(z.revision, EXCLUDED.revision);
        RETURN 'ignored';
    END IF;
    IF t.id IS NULL OR t.status NOT IN ('draft', 'offer')
       OR (msg->'object'->>'revision')::integer < t.revision THEN
        RETURN 'ignored';
    END IF;
    UPDATE chips.tallies x SET status = 'void' WHERE x.id = t.id;
    RETURN 'void';
END
$$;

CREATE FUNCTION chips._recv_close(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._partner_half(msg);
BEGIN
    IF t.id IS NULL THEN
        RAISE EXCEPTION 'no tally % here to close', msg->'object'->>'uuid' USING ERRCODE = '42704';
    END IF;
    IF t.status <> 'open' THEN
        RETURN 'ignored';
    END IF;
    UPDATE chips.tallies x SET status = 'closing' WHERE x.id = t.id;
    PERFORM chips._close_if_settled(t.id);
    SELECT * INTO t FROM chips.tallies x WHERE x.id = t.id;
    RETURN t.status;
END
$$;

------------------------------------------------------------------------------------------------
-- Triggers: the rules hold for every writer, admins and direct SQL included
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips._tallies_bi() RETURNS trigger
LANGUAGE plpgsql
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.status IN ('open', 'closing', 'closed') THEN
        PERFORM chips._check_signed(NEW);
        NEW.digest := chips.json_digest(chips._tally_doc(NEW));
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION chips._tallies_bu() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF (NEW.id, NEW.ent, NEW.tally_uuid, NEW.side) IS DISTINCT FROM
       (OLD.id, OLD.ent, OLD.tally_uuid, OLD.side) THEN
        RAISE EXCEPTION 'the identity of tally % cannot change', OLD.tally_uuid USING ERRCODE = '55000';
    END IF;
    IF NEW.status <> OLD.status AND NOT chips.tally_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'tally % cannot go from % to %', OLD.tally_uuid, OLD.status, NEW.status
            USING ERRCODE = '55000';
    END IF;
    IF OLD.status IN ('open', 'closing', 'closed')
       AND (NEW.version, NEW.revision, NEW.tally_date, NEW.memo, NEW.contract, NEW.hold_cert,
            NEW.part_cert, NEW.hold_terms, NEW.part_terms, NEW.hold_sig, NEW.part_sig, NEW.digest)
           IS DISTINCT FROM
           (OLD.version, OLD.revision, OLD.tally_date, OLD.memo, OLD.contract, OLD.hold_cert,
            OLD.part_cert, OLD.hold_terms, OLD.part_terms, OLD.hold_sig, OLD.part_sig, OLD.digest) THEN
        RAISE EXCEPTION 'tally % is signed by both parties: its document cannot change', OLD.tally_uuid
            USING ERRCODE = '55000';
    END IF;
    IF NEW.status = 'open' AND OLD.status <> 'open' THEN
        PERFORM chips._check_signed(NEW);
        NEW.digest := chips.json_digest(chips._tally_doc(NEW));
    END IF;
    NEW.updated := pg_catalog.now();
    RETURN NEW;
END
$$;

-- Tell the holder (channel chips_user_<ent>) whenever its half changes state.
CREATE FUNCTION chips._tallies_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR (NEW.status, NEW.revision, NEW.part_cert IS NULL, NEW.hold_sig IS NULL, NEW.part_sig IS NULL)
          IS DISTINCT FROM
          (OLD.status, OLD.revision, OLD.part_cert IS NULL, OLD.hold_sig IS NULL, OLD.part_sig IS NULL) THEN
        PERFORM pg_catalog.pg_notify('chips_user_' || NEW.ent, pg_catalog.json_build_object(
            'target', 'tally', 'uuid', NEW.tally_uuid, 'state', chips._state(NEW),
            'revision', NEW.revision)::text);
        PERFORM chips._event(NEW.ent, 'tally', pg_catalog.jsonb_build_object(
            'tally', NEW.tally_uuid, 'state', chips._state(NEW), 'status', NEW.status,
            'revision', NEW.revision, 'side', NEW.side, 'part', NEW.part_cert->'chad'));
    END IF;
    RETURN NULL;
END
$$;

-- Tell the site's sidecar(s) (channel chips_agent) that a message waits in the outbox.
CREATE FUNCTION chips._outbox_notify() RETURNS trigger
LANGUAGE plpgsql
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('chips_agent', pg_catalog.json_build_object(
        'outbox', NEW.id, 'from', NEW.from_agent, 'to', NEW.to_agent)::text);
    RETURN NULL;
END
$$;
