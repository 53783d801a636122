-- chips install SQL: identity and users. Who the caller is (chips.my_ent, chips._me), users,
-- agents and contracts (the administration API), certificates, and small helpers every other
-- file uses. Functions only: the triggers, views, row-level security and grants are in
-- sql/finalize.sql, which runs after every function exists.
--
-- Conventions (every file of sql/):
-- * Functions whose names start with '_' are internal: revoked from PUBLIC (sql/finalize.sql)
--   and called by the public functions, whose rights and search_path they run with.
-- * Public functions are SECURITY DEFINER with a fixed search_path, and act for the user mapped
--   to the calling role (chips.outer_role(): the role after SET ROLE, not the definer); every
--   object is schema-qualified.
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

-- A timestamp as the documents write it, YYYY-MM-DDTHH:MM:SS.mmmZ: chips._iso(ts), core's
-- chit::iso_millis (extension/src/tally.rs), created before this file.

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
-- Certificates
------------------------------------------------------------------------------------------------

-- The calling user's certificate (name, CHIP address, public key).
CREATE FUNCTION chips.user_cert() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$ BEGIN RETURN chips._my_cert(chips._me()); END $$;
