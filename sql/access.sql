-- chips install SQL: user access through the gateway (chipsd's websocket server), the users'
-- event streams, lists for clients, and stored documents.
--
-- Login: an admin issues a one-time login ticket (chips.login_ticket); its holder registers a
-- connection key (chips.login_register); the key logs in by signing a challenge the database
-- made (chips.login_challenge, chips.login_finish), which opens a session. The gateway role
-- (chips_gateway) may SET ROLE to any user's role, but chips._me() and chips.my_ent() accept a
-- gateway call only inside a live session of that user (the session id travels in the setting
-- chips.session): a compromised gateway can act only for users who are logged in, and can never
-- sign for a user who holds their own key.
--
-- Events: every change to a user's tallies, chits and lifts makes one row of chips.events,
-- numbered 1, 2, 3... per user in commit order, so a client that holds its last number (its
-- cursor) gets exactly what it missed (chips.events_since), whatever happened in between.

------------------------------------------------------------------------------------------------
-- Sessions
------------------------------------------------------------------------------------------------

-- Is this connection the gateway's? chips._via_gateway() (extension/src/crypto.rs): its login
-- role is a member of chips_gateway, superuser or not.

-- The user of the live session named by the setting chips.session, or null.
CREATE FUNCTION chips._session_ent() RETURNS text
LANGUAGE sql STABLE
SET search_path = chips, pg_catalog, pg_temp
AS $$
    SELECT s.ent FROM chips.sessions s
    WHERE s.id = pg_catalog.current_setting('chips.session', true)
      AND s.ended IS NULL AND s.expires > pg_catalog.now()
$$;

-- A one-time login ticket for a user: whoever holds it may register one connection key.
CREATE FUNCTION chips.login_ticket(ent text, lifetime interval DEFAULT '24 hours') RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_user chips.users;
    v_token text := chips.new_token();
    v_expires timestamptz;
BEGIN
    SELECT * INTO v_user FROM chips.users u WHERE u.ent = login_ticket.ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user %', login_ticket.ent USING ERRCODE = '42704';
    END IF;
    IF v_user.status <> 'active' THEN
        RAISE EXCEPTION 'user % is %', v_user.ent, v_user.status USING ERRCODE = '55000';
    END IF;
    v_expires := chips._expiry(login_ticket.lifetime, '30 days', 'a login ticket');
    INSERT INTO chips.login_tickets (token, ent, expires) VALUES (v_token, v_user.ent, v_expires);
    RETURN pg_catalog.jsonb_build_object('ent', v_user.ent, 'token', v_token,
                                         'expires', chips._iso(v_expires));
END
$$;

-- Redeem a login ticket: registers the connection key for the ticket's user. Returns the ent.
CREATE FUNCTION chips.login_register(token text, pubkey text, label text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    k chips.login_tickets;
BEGIN
    IF login_register.pubkey IS NULL THEN
        RAISE EXCEPTION 'give the connection key (pubkey)' USING ERRCODE = '22023';
    END IF;
    PERFORM chips.pubkey_check(login_register.pubkey);
    IF pg_catalog.char_length(login_register.label) > 200 THEN
        RAISE EXCEPTION 'a key''s label is at most 200 characters' USING ERRCODE = '22023';
    END IF;
    DELETE FROM chips.login_tickets x WHERE x.token = login_register.token RETURNING * INTO k;
    IF NOT FOUND OR k.expires <= pg_catalog.now() THEN
        RAISE EXCEPTION 'this login ticket is unknown, used or expired' USING ERRCODE = '28000',
            HINT = 'Ask the site''s administrator for a new one.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chips.users u WHERE u.ent = k.ent AND u.status = 'active') THEN
        RAISE EXCEPTION 'user % is not active', k.ent USING ERRCODE = '28000';
    END IF;
    INSERT INTO chips.device_keys (ent, pubkey, label) VALUES (k.ent, login_register.pubkey, login_register.label)
    ON CONFLICT ON CONSTRAINT device_keys_pkey DO UPDATE SET label = coalesce(EXCLUDED.label, chips.device_keys.label);
    RETURN k.ent;
END
$$;

-- A challenge for a connection key to sign: the document to sign (its canonical JSON). Made for
-- any ent and key, registered or not, so that it tells nothing; valid two minutes, once.
CREATE FUNCTION chips.login_challenge(ent text, pubkey text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_nonce text := chips.new_token();
BEGIN
    IF login_challenge.ent IS NULL OR pg_catalog.char_length(login_challenge.ent) > 100 THEN
        RAISE EXCEPTION 'give the user''s ent' USING ERRCODE = '22023';
    END IF;
    IF login_challenge.pubkey IS NULL THEN
        RAISE EXCEPTION 'give the connection key (pubkey)' USING ERRCODE = '22023';
    END IF;
    PERFORM chips.pubkey_check(login_challenge.pubkey);
    DELETE FROM chips.login_challenges c WHERE c.expires < pg_catalog.now();
    INSERT INTO chips.login_challenges (nonce, ent, pubkey, expires)
    VALUES (v_nonce, login_challenge.ent, login_challenge.pubkey, pg_catalog.now() + interval '2 minutes');
    RETURN pg_catalog.jsonb_build_object('challenge', v_nonce, 'ent', login_challenge.ent);
END
$$;

-- Finish a login: the signature over the challenge's document by a registered key of the user
-- opens a session. Returns {session, ent, role, expires}.
CREATE FUNCTION chips.login_finish(challenge text, signature text,
                                   lifetime interval DEFAULT '12 hours') RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    c chips.login_challenges;
    v_user chips.users;
    v_id text := chips.new_token();
    v_expires timestamptz;
BEGIN
    v_expires := chips._expiry(login_finish.lifetime, '7 days', 'a session');
    DELETE FROM chips.login_challenges x WHERE x.nonce = login_finish.challenge RETURNING * INTO c;
    IF NOT FOUND OR c.expires <= pg_catalog.now() THEN
        RAISE EXCEPTION 'this challenge is unknown, used or expired' USING ERRCODE = '28000',
            HINT = 'Ask for a new one (chips.login_challenge).';
    END IF;
    SELECT * INTO v_user FROM chips.users u WHERE u.ent = c.ent AND u.status = 'active';
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM chips.device_keys k WHERE k.ent = c.ent AND k.pubkey = c.pubkey)
       OR login_finish.signature IS NULL
       OR NOT chips.verify_signature(c.pubkey,
              pg_catalog.jsonb_build_object('challenge', c.nonce, 'ent', c.ent), login_finish.signature) THEN
        -- one answer for every failure: no key, wrong key, bad signature, inactive user
        RAISE EXCEPTION 'login refused' USING ERRCODE = '28000';
    END IF;
    UPDATE chips.device_keys k SET last_login = pg_catalog.now() WHERE k.ent = c.ent AND k.pubkey = c.pubkey;
    INSERT INTO chips.sessions (id, ent, pubkey, expires) VALUES (v_id, c.ent, c.pubkey, v_expires);
    RETURN pg_catalog.jsonb_build_object('session', v_id, 'ent', c.ent, 'role', v_user.username,
                                         'expires', chips._iso(v_expires));
END
$$;

-- End a session (a client logs out, or its connection closed). True if it was live.
CREATE FUNCTION chips.login_end(session text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE chips.sessions s SET ended = pg_catalog.now()
    WHERE s.id = login_end.session AND s.ended IS NULL;
    RETURN FOUND;
END
$$;

-- Withdraw a user's connection key (or all of them) and end the sessions it opened.
CREATE FUNCTION chips.login_revoke(ent text, pubkey text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM chips.users u WHERE u.ent = login_revoke.ent) THEN
        RAISE EXCEPTION 'no user %', login_revoke.ent USING ERRCODE = '42704';
    END IF;
    DELETE FROM chips.device_keys k
    WHERE k.ent = login_revoke.ent AND (login_revoke.pubkey IS NULL OR k.pubkey = login_revoke.pubkey);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE chips.sessions s SET ended = pg_catalog.now()
    WHERE s.ent = login_revoke.ent AND s.ended IS NULL
      AND (login_revoke.pubkey IS NULL OR s.pubkey = login_revoke.pubkey);
    RETURN n;
END
$$;

------------------------------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------------------------------

-- Append an event for a local user; numbered when the transaction commits. Rows loaded by COPY
-- (pg_restore) make no events: the events of the restored history are restored themselves.
CREATE FUNCTION chips._event(p_ent text, p_kind text, p_body jsonb) RETURNS void
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
CREATE FUNCTION chips._events_number() RETURNS trigger
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

-- A row limit argument of the list functions, checked: 1 to 10,000.
CREATE FUNCTION chips._max_rows(p_name text, p_n integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_n IS NULL OR p_n NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION '% must be 1 to 10000', p_name USING ERRCODE = '22023';
    END IF;
    RETURN p_n;
END
$$;

-- The caller's events after `cursor` (the last seq the client has), oldest first.
CREATE FUNCTION chips.events_since(cursor bigint DEFAULT 0, max_events integer DEFAULT 500)
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

-- The caller's last event number (0 before any): a new client reads the current state (the
-- lists) after this and subscribes from it.
CREATE FUNCTION chips.events_head() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    RETURN coalesce((SELECT h.seq FROM chips.event_heads h WHERE h.ent = v_me.ent), 0);
END
$$;

-- Delete events older than `older_than`; returns how many. Clients whose cursor is older get
-- 55000 from events_since and read the current state instead.
CREATE FUNCTION chips.events_prune(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF events_prune.older_than IS NULL OR events_prune.older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be an interval of zero or more' USING ERRCODE = '22023';
    END IF;
    WITH gone AS (
        DELETE FROM chips.events e
        WHERE e.created < pg_catalog.now() - events_prune.older_than AND e.seq IS NOT NULL
        RETURNING e.ent, e.seq),
    tops AS (SELECT g.ent, pg_catalog.max(g.seq) AS seq, pg_catalog.count(*) AS n FROM gone g GROUP BY g.ent),
    marked AS (
        UPDATE chips.event_heads h SET pruned = GREATEST(h.pruned, t.seq) FROM tops t
        WHERE h.ent = t.ent RETURNING t.n)
    SELECT coalesce(pg_catalog.sum(m.n), 0) INTO n FROM marked m;
    RETURN n;
END
$$;

------------------------------------------------------------------------------------------------
-- Trading variables in one call
------------------------------------------------------------------------------------------------

-- Change the caller's trading variables on a tally (a `set` chit), for custodial users; users
-- with their own key sign chips.chit_json(tally, NULL, memo, settings) and call chit_issue.
CREATE FUNCTION chips.tally_trade(tally uuid, settings jsonb, memo text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    IF tally_trade.settings IS NULL THEN
        RAISE EXCEPTION 'give the settings to change (target, bound, reward, clutch)' USING ERRCODE = '22023';
    END IF;
    RETURN chips._custodial_issue(v_me, tally_trade.tally, NULL, tally_trade.memo,
                                  chips.settings_check(tally_trade.settings));
END
$$;

------------------------------------------------------------------------------------------------
-- Documents by hash
------------------------------------------------------------------------------------------------

-- Store a file; returns its address, base64url(SHA-256(data)).
CREATE FUNCTION chips.file_add(data bytea, media_type text DEFAULT 'application/octet-stream')
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

-- A document by its SHA-256 (base64url, 43 characters, or hex, 64): a contract (as its
-- canonical JSON) or a stored file. No row when there is none.
CREATE FUNCTION chips.document(hash text) RETURNS TABLE (media_type text, body bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_key text := document.hash;
BEGIN
    IF v_key ~ '^[0-9a-fA-F]{64}$' THEN
        v_key := chips.b64url_encode(pg_catalog.decode(v_key, 'hex'));
    ELSIF v_key IS NULL OR v_key !~ '^[A-Za-z0-9_-]{43}$' THEN
        RAISE EXCEPTION 'a document hash is SHA-256 as base64url (43 characters) or hex (64)'
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT 'application/json'::text, pg_catalog.convert_to(chips.canonical_json(c.doc), 'UTF8')
        FROM chips.contracts c WHERE c.rid = v_key
        UNION ALL
        SELECT f.media_type, f.data FROM chips.files f WHERE f.digest = v_key
        LIMIT 1;
END
$$;
