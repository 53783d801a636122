------------------------------------------------------------------------------------------------
-- The admin view (chipsd serves it at /admin): an admin ticket, issued by a database admin,
-- opens one admin session; every admin call names its session and the database checks it, so
-- the sidecar never decides what an admin may do or see. (Its tables, admin_tickets and
-- admin_sessions, are in sql/schema.sql.)
------------------------------------------------------------------------------------------------

-- A one-time admin ticket (for a database admin: chipsd admin-ticket prints it as a link).
CREATE FUNCTION chips.admin_ticket(lifetime interval DEFAULT '1 hour') RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_token text := chips.new_token();
    v_expires timestamptz;
BEGIN
    v_expires := chips._expiry(admin_ticket.lifetime, '7 days', 'an admin ticket');
    INSERT INTO chips.admin_tickets (token, expires) VALUES (v_token, v_expires);
    RETURN pg_catalog.jsonb_build_object('token', v_token, 'expires', chips._iso(v_expires));
END
$$;

-- Redeems an admin ticket (once) for an admin session of `lifetime`.
CREATE FUNCTION chips.admin_login(token text, lifetime interval DEFAULT '8 hours') RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_id text := chips.new_token();
    v_expires timestamptz;
BEGIN
    v_expires := chips._expiry(admin_login.lifetime, '24 hours', 'an admin session');
    DELETE FROM chips.admin_tickets x
    WHERE x.token = admin_login.token AND x.expires > pg_catalog.now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this admin ticket is unknown, used or expired' USING ERRCODE = '28000';
    END IF;
    INSERT INTO chips.admin_sessions (id, expires) VALUES (v_id, v_expires);
    RETURN pg_catalog.jsonb_build_object('session', v_id, 'expires', chips._iso(v_expires));
END
$$;

-- Refuses (28000) anything but a live admin session.
CREATE FUNCTION chips._admin_check(p_session text) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM chips.admin_sessions s
                   WHERE s.id = p_session AND s.ended IS NULL AND s.expires > pg_catalog.now()) THEN
        RAISE EXCEPTION 'no live admin session' USING ERRCODE = '28000';
    END IF;
END
$$;

CREATE FUNCTION chips.admin_logout(session text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
    WITH e AS (UPDATE chips.admin_sessions s SET ended = pg_catalog.now()
               WHERE s.id = admin_logout.session AND s.ended IS NULL RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM e)
$$;

-- What the admin view shows: this site's agent, its users with their net positions, every tally
-- half with its partner and balances, the latest lifts (with the tallies they moved here), and
-- the peers with what waits in the outbox for each.
CREATE FUNCTION chips.admin_overview(session text, max_lifts integer DEFAULT 20) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM chips._admin_check(admin_overview.session);
    IF admin_overview.max_lifts IS NULL OR admin_overview.max_lifts NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'max_lifts must be between 0 and 1000' USING ERRCODE = '22023';
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'agent', (SELECT a.agent FROM chips.agents a WHERE a.local ORDER BY a.agent LIMIT 1),
        'users', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'ent', u.ent, 'name', u.name, 'cuid', u.cuid, 'status', u.status,
                     'net', coalesce((SELECT sum(t.net_good) FROM chips.tallies t WHERE t.ent = u.ent), 0))
                     ORDER BY u.ent) FROM chips.users u), '[]'),
        'tallies', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'tally', t.tally_uuid, 'ent', t.ent, 'side', t.side, 'status', t.status,
                     'part_ent', t.part_ent, 'part_cuid', t.part_cert->'chad'->>'cuid',
                     'part_agent', t.part_cert->'chad'->>'agent', 'part_name', t.part_cert->>'name',
                     'net', t.net_good, 'pending', t.net_pend - t.net_good) ORDER BY t.id)
                     FROM chips.tallies t WHERE t.status IN ('open', 'closing')), '[]'),
        'lifts', coalesce((SELECT pg_catalog.jsonb_agg(x.j ORDER BY x.created DESC) FROM (
                     SELECT l.created, pg_catalog.jsonb_build_object(
                         'lift', l.lift_uuid, 'kind', l.kind, 'role', l.role, 'status', l.status,
                         'units', l.units, 'tallies', l.tallies, 'created', chips._iso(l.created)) j
                     FROM chips.lifts l WHERE l.status <> 'draft'
                     ORDER BY l.created DESC LIMIT admin_overview.max_lifts) x), '[]'),
        'peers', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'agent', a.agent, 'host', a.host, 'port', a.port,
                     'backlog', (SELECT count(*) FROM chips.outbox o WHERE o.to_agent = a.agent AND o.delivered IS NULL),
                     'oldest', (SELECT chips._iso(min(o.created)) FROM chips.outbox o
                                WHERE o.to_agent = a.agent AND o.delivered IS NULL),
                     'last_delivered', (SELECT chips._iso(max(o.delivered)) FROM chips.outbox o
                                        WHERE o.to_agent = a.agent)) ORDER BY a.agent)
                     FROM chips.agents a WHERE NOT a.local), '[]'),
        'backlog', (SELECT count(*) FROM chips.outbox o WHERE o.delivered IS NULL),
        -- clearing rounds: the coordinator this site takes part with, and, when it coordinates,
        -- its members and latest rounds
        'rounds', (SELECT pg_catalog.jsonb_build_object(
                     'coordinator', CASE WHEN x.coordinator IS NOT NULL THEN (x.coordinator->>'agent') || '@'
                                         || (x.coordinator->>'host') || ':' || (x.coordinator->>'port') END,
                     'coordinating', x.coordinate, 'every', x.every::text,
                     'members', (SELECT count(*) FROM chips.round_members),
                     'recent', coalesce((SELECT pg_catalog.jsonb_agg(y.j ORDER BY y.id DESC) FROM (
                         SELECT r.id, pg_catalog.jsonb_build_object(
                             'round', r.round_uuid, 'status', r.status, 'attempt', r.attempt,
                             'created', chips._iso(r.created), 'reason', r.reason,
                             'ms', round((extract(epoch FROM r.decided - r.created) * 1000)::numeric, 1),
                             'sites', (SELECT count(*) FROM chips.round_sites s WHERE s.round_id = r.id AND s.status <> 'absent'),
                             'arcs', r.stats->'arcs', 'moved', r.stats->'arcs_with_flow') j
                         FROM chips.rounds r ORDER BY r.id DESC LIMIT 10) y), '[]'))
                   FROM chips.round_settings x));
END
$$;

-- Adds a user (chips.user_create: no key yet; a login ticket lets them register one).
CREATE FUNCTION chips.admin_user_add(session text, name text, cuid text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_ent text;
BEGIN
    PERFORM chips._admin_check(admin_user_add.session);
    v_ent := chips.user_create(admin_user_add.name, admin_user_add.cuid);
    RETURN (SELECT pg_catalog.jsonb_build_object('ent', u.ent, 'name', u.name, 'cuid', u.cuid)
            FROM chips.users u WHERE u.ent = v_ent);
END
$$;

-- A one-time login ticket for a user (chips.login_ticket), for the admin to hand over.
CREATE FUNCTION chips.admin_login_ticket(session text, ent text, lifetime interval DEFAULT '24 hours')
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM chips._admin_check(admin_login_ticket.session);
    RETURN chips.login_ticket(admin_login_ticket.ent, admin_login_ticket.lifetime);
END
$$;
