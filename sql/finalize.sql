-- chips install SQL, last part: triggers, views, row-level security and grants. Runs after every
-- function (Rust and SQL) exists.

------------------------------------------------------------------------------------------------
-- Triggers: the rules hold for every writer, admins and direct SQL included
------------------------------------------------------------------------------------------------

CREATE TRIGGER tallies_bi BEFORE INSERT ON chips.tallies
    FOR EACH ROW EXECUTE FUNCTION chips._tallies_bi();
-- The WHEN clauses (evaluated without calling the function) skip what the functions would do
-- nothing for: an update of the working columns only (balances, chain, trading variables) that
-- already sets `updated` (every chit's balance update), and updates that change nothing the
-- holder is told about. The column lists skip even the WHEN clauses (compiled at every statement,
-- evaluated on every row) for the one update every chit makes, the chits statement trigger's
-- balances and chain tip (net_good, net_pend, net_hold, chain_len, chain_tip and updated): a
-- column not named in an UPDATE's SET list cannot change, so the rules hold. A new column of
-- chips.tallies goes into tallies_bu's list.
CREATE TRIGGER tallies_bu BEFORE UPDATE OF id, ent, tally_uuid, side, version, revision, status,
        tally_date, memo, contract, hold_cert, part_cert, hold_terms, part_terms, hold_sig, part_sig,
        digest, part_ent, target, bound, reward, clutch, part_sets, chain_conf, chain_seen, created
    ON chips.tallies
    FOR EACH ROW
    WHEN ((OLD.id, OLD.ent, OLD.tally_uuid, OLD.side, OLD.status, OLD.version, OLD.revision,
           OLD.tally_date, OLD.memo, OLD.contract, OLD.hold_cert, OLD.part_cert, OLD.hold_terms,
           OLD.part_terms, OLD.hold_sig, OLD.part_sig, OLD.digest)
          IS DISTINCT FROM
          (NEW.id, NEW.ent, NEW.tally_uuid, NEW.side, NEW.status, NEW.version, NEW.revision,
           NEW.tally_date, NEW.memo, NEW.contract, NEW.hold_cert, NEW.part_cert, NEW.hold_terms,
           NEW.part_terms, NEW.hold_sig, NEW.part_sig, NEW.digest)
          OR NEW.updated IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION chips._tallies_bu();
CREATE TRIGGER tallies_notify AFTER INSERT ON chips.tallies
    FOR EACH ROW EXECUTE FUNCTION chips._tallies_notify();
CREATE TRIGGER tallies_notify_update AFTER UPDATE OF status, revision, part_cert, hold_sig, part_sig
    ON chips.tallies
    FOR EACH ROW
    WHEN ((OLD.status, OLD.revision, OLD.part_cert IS NULL, OLD.hold_sig IS NULL, OLD.part_sig IS NULL)
          IS DISTINCT FROM
          (NEW.status, NEW.revision, NEW.part_cert IS NULL, NEW.hold_sig IS NULL, NEW.part_sig IS NULL))
    EXECUTE FUNCTION chips._tallies_notify();
-- A new chit is checked only when it is a good chit that needs a signature (the WHEN clause
-- skips the function for lift chits and invoices) and the set-based payment writer has not
-- checked it itself (chips._chit_checked, extension/src/pay.rs); every update is checked.
CREATE TRIGGER chits_bi BEFORE INSERT ON chips.chits
    FOR EACH ROW WHEN (NEW.status = 'good' AND NEW.chit_type <> 'lift'
                       AND NOT chips._chit_checked(NEW.tally_id, NEW.chit_uuid, NEW.signature))
    EXECUTE FUNCTION chips._chits_biu();
CREATE TRIGGER chits_bu BEFORE UPDATE ON chips.chits
    FOR EACH ROW EXECUTE FUNCTION chips._chits_biu();
-- Balances, chain tips and events: once per statement, set-based (sql/chits.sql).
CREATE TRIGGER chits_ins AFTER INSERT ON chips.chits
    REFERENCING NEW TABLE AS new_chits
    FOR EACH STATEMENT EXECUTE FUNCTION chips._chits_ins();
CREATE TRIGGER chits_upd AFTER UPDATE ON chips.chits
    REFERENCING OLD TABLE AS old_chits NEW TABLE AS new_chits
    FOR EACH STATEMENT EXECUTE FUNCTION chips._chits_upd();
CREATE TRIGGER outbox_notify AFTER INSERT ON chips.outbox
    FOR EACH ROW EXECUTE FUNCTION chips._outbox_notify();
-- Events are numbered at commit (sql/access.sql, chips._events_number): its first firing numbers
-- every event of the transaction, so a statement that writes many (a payment's two, a clearing
-- pass's thousands) queues it for its first row only (`fire`), not once a row.
CREATE CONSTRAINT TRIGGER events_number AFTER INSERT ON chips.events_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.fire) EXECUTE FUNCTION chips._events_number();

------------------------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------------------------

CREATE VIEW chips.tallies_v WITH (security_invoker = true) AS
SELECT t.id, t.ent, t.tally_uuid, t.side, t.status, chips._state(t) AS state, t.revision,
       t.tally_date, t.memo, t.contract, t.part_cert->'chad' AS part_chad,
       t.part_cert->>'name' AS part_name, t.part_ent, t.hold_terms, t.part_terms,
       t.target, t.bound, t.reward, t.clutch, t.net_good, t.net_pend,
       chips.b64url_encode(t.digest) AS digest, chips._tally_doc(t) AS doc, t.created, t.updated
FROM chips.tallies t;

CREATE VIEW chips.chits_v WITH (security_invoker = true) AS
SELECT c.id, t.ent, t.tally_uuid, c.chit_uuid, c.chit_type, c.issuer,
       CASE WHEN c.issuer = t.side THEN 'L' ELSE 'A' END || '.' || c.status AS state,
       c.status, c.units, c.value, c.reference, c.memo, c.chit_date, c.chain_idx,
       chips.b64url_encode(c.chain_hash) AS chain_hash, chips._chit_doc(c, t.tally_uuid) AS doc,
       c.signature, c.created, c.updated
FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id;

-- Users' events with their bodies: a chit's event is read from the user's half of the chit and
-- the status the event recorded (sql/schema.sql, chips.events).
CREATE VIEW chips.events_v WITH (security_invoker = true) AS
SELECT e.ent, e.seq, e.kind,
       coalesce(e.body, chips._chit_event(t, c.chit_uuid, c.chit_type, c.issuer, e.status, c.units,
                                          c.memo)) AS body,
       e.created
FROM chips.events e
LEFT JOIN chips.chits c ON c.id = e.chit
LEFT JOIN chips.tallies t ON t.id = c.tally_id;

-- Lifts, one row per lift and tally half: what the lift did to that holder's balance
-- (positive: the holder owes less, or is owed more). A reservation released on the way of a
-- lift that ended good (a payment refused on one way and sent on another) did nothing: not shown.
CREATE VIEW chips.lifts_v WITH (security_invoker = true) AS
SELECT coalesce(l.parent, l.lift_uuid) AS lift,  -- a part of a split payment shows as the payment
       l.kind, l.status, l.units, pg_catalog.cardinality(l.tallies) AS tallies,
       l.through, l.margin, t.ent, t.tally_uuid AS tally, t.side,
       chips._chit_change(t.side, c.issuer, c.units) AS change,
       c.chain_idx, l.created
FROM chips.lifts l
JOIN chips.chits c ON c.lift_id = l.id AND NOT (c.status = 'void' AND l.status = 'good')
JOIN chips.tallies t ON t.id = c.tally_id;

------------------------------------------------------------------------------------------------
-- Lists for clients: the caller's own rows of the views, like every user function (definer,
-- filtered by the caller's ent). Here, not in sql/access.sql: they return the views' row types.
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips.tallies_list() RETURNS SETOF chips.tallies_v
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    RETURN QUERY SELECT * FROM chips.tallies_v v WHERE v.ent = v_me.ent ORDER BY v.id;
END
$$;

CREATE FUNCTION chips.chits_list(tally uuid DEFAULT NULL, max_chits integer DEFAULT 100)
RETURNS SETOF chips.chits_v
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    RETURN QUERY SELECT * FROM chips.chits_v v
    WHERE v.ent = v_me.ent AND (chits_list.tally IS NULL OR v.tally_uuid = chits_list.tally)
    ORDER BY v.id DESC LIMIT chips._max_rows('max_chits', chits_list.max_chits);
END
$$;

CREATE FUNCTION chips.lifts_list(max_lifts integer DEFAULT 100) RETURNS SETOF chips.lifts_v
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
BEGIN
    RETURN QUERY SELECT * FROM chips.lifts_v v WHERE v.ent = v_me.ent
    ORDER BY v.created DESC LIMIT chips._max_rows('max_lifts', lifts_list.max_lifts);
END
$$;

------------------------------------------------------------------------------------------------
-- Row-level security: users see their own rows; admins see everything
------------------------------------------------------------------------------------------------

ALTER TABLE chips.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE chips.tallies ENABLE ROW LEVEL SECURITY;
ALTER TABLE chips.tickets ENABLE ROW LEVEL SECURITY;
ALTER TABLE chips.chits ENABLE ROW LEVEL SECURITY;

CREATE POLICY users_own ON chips.users FOR SELECT TO chips_user
    USING (ent = (SELECT chips.my_ent()));
CREATE POLICY tallies_own ON chips.tallies FOR SELECT TO chips_user
    USING (ent = (SELECT chips.my_ent()));
CREATE POLICY tickets_own ON chips.tickets FOR SELECT TO chips_user
    USING (ent = (SELECT chips.my_ent()));
CREATE POLICY chits_own ON chips.chits FOR SELECT TO chips_user
    USING (tally_id IN (SELECT t.id FROM chips.tallies t WHERE t.ent = (SELECT chips.my_ent())));
CREATE POLICY chits_admin ON chips.chits FOR SELECT TO chips_admin USING (true);
ALTER TABLE chips.lifts ENABLE ROW LEVEL SECURITY;
CREATE POLICY lifts_own ON chips.lifts FOR SELECT TO chips_user
    USING (id IN (SELECT c.lift_id FROM chips.chits c WHERE c.lift_id IS NOT NULL));
CREATE POLICY lifts_admin ON chips.lifts FOR SELECT TO chips_admin USING (true);
CREATE POLICY users_admin ON chips.users FOR SELECT TO chips_admin USING (true);
CREATE POLICY tallies_admin ON chips.tallies FOR SELECT TO chips_admin USING (true);
CREATE POLICY tickets_admin ON chips.tickets FOR SELECT TO chips_admin USING (true);
ALTER TABLE chips.admin_tickets ENABLE ROW LEVEL SECURITY;
ALTER TABLE chips.admin_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE chips.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY events_own ON chips.events FOR SELECT TO chips_user
    USING (ent = (SELECT chips.my_ent()));
CREATE POLICY events_admin ON chips.events FOR SELECT TO chips_admin USING (true);

------------------------------------------------------------------------------------------------
-- Grants
------------------------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA chips FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA chips FROM PUBLIC;
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA chips FROM PUBLIC;   -- functions and procedures

-- Pure functions anyone may use.
GRANT EXECUTE ON FUNCTION
    chips.canonical_json(jsonb), chips.json_digest(jsonb), chips.b64url_encode(bytea),
    chips.b64url_decode(text), chips.verify_signature(text, jsonb, text),
    chips.tally_transition_allowed(text, text), chips.tally_state(text, boolean, boolean, boolean),
    chips.tally_doc_check(jsonb), chips.tally_verify(jsonb, text, text), chips.cert_check(jsonb),
    chips.terms_check(jsonb), chips.trading_check(bigint, bigint, double precision, double precision),
    chips.address_parse(text), chips.address_check(jsonb), chips.agent_check(text),
    chips.cuid_check(text), chips.pubkey_check(text),
    chips.chit_transition_allowed(text, text), chips.chit_doc_check(jsonb),
    chips.chit_verify(jsonb, text, text), chips.chit_value(jsonb, text),
    chips.chit_chain_hash(jsonb, integer, bytea, text), chips.settings_check(jsonb),
    chips.chit_doc_make(uuid, text, text, uuid, bigint, bigint, jsonb, text)
TO PUBLIC;

-- Users: their own rows, and the user API.
GRANT SELECT ON chips.users, chips.tallies, chips.tickets, chips.tallies_v, chips.chits,
    chips.chits_v, chips.lifts, chips.lifts_v TO chips_user;
GRANT SELECT ON chips.agents, chips.contracts TO chips_user;
GRANT EXECUTE ON FUNCTION
    chips.my_ent(), chips.user_cert(), chips._tally_doc(chips.tallies), chips._state(chips.tallies),
    chips._iso(timestamptz),
    chips._tally_doc_make(integer, integer, text, timestamptz, text, text, text, jsonb, jsonb, jsonb, jsonb),
    chips._other(text), chips._chit_change(text, text, bigint),
    chips._chit_event(chips.tallies, uuid, text, text, text, bigint, text),
    chips.tally_create(text, text, jsonb, jsonb, text),
    chips.tally_update(uuid, jsonb, jsonb, text, text), chips.tally_json(uuid),
    chips.ticket_create(uuid, boolean, interval), chips.ticket_redeem(jsonb),
    chips.tally_offer(uuid, text), chips.tally_accept(uuid, text), chips.tally_counter(uuid),
    chips.tally_void(uuid), chips.tally_close(uuid),
    chips._chit_doc(chips.chits, uuid),
    chips.chit_json(uuid, bigint, text, jsonb), chips.chit_issue(jsonb, text),
    chips.pay(uuid, bigint, text, jsonb), chips.pay_batch(jsonb, boolean),
    chips.chit_invoice(uuid, bigint, text, jsonb),
    chips.chit_sign(uuid, uuid, text), chips.chit_decline(uuid, uuid),
    chips.lift_through_me(boolean, bigint, integer),
    chips.events_since(bigint, integer), chips.events_head(), chips.tallies_list(), chips.chits_list(uuid, integer),
    chips.lifts_list(integer), chips.tally_trade(uuid, jsonb, text),
    chips.pay_address(jsonb, bigint, text, jsonb), chips.pay_address_json(uuid),
    chips.pay_address_sign(uuid, text), chips.route_check(jsonb, bigint), chips.route_check_result(text)
TO chips_user;
GRANT SELECT ON chips.events, chips.events_v TO chips_user;

-- The user gateway: logins, and documents. It acts for users by SET ROLE to their roles
-- (user_create grants each to chips_gateway), within sessions (chips._me).
GRANT EXECUTE ON FUNCTION
    chips.login_register(text, text, text), chips.login_challenge(text, text),
    chips.login_finish(text, text, interval), chips.login_end(text), chips.document(text)
TO chips_gateway;
-- the admin view: admin sessions, opened with a ticket a database admin issued
GRANT EXECUTE ON FUNCTION
    chips.admin_login(text, interval), chips.admin_logout(text), chips.admin_overview(text, integer),
    chips.admin_user_add(text, text, text), chips.admin_login_ticket(text, text, interval)
TO chips_gateway, chips_admin;
GRANT EXECUTE ON FUNCTION chips.admin_ticket(interval) TO chips_admin;
-- which users have new events (chipsd polls the heads of its subscribers' users)
GRANT SELECT ON chips.event_heads TO chips_gateway;

-- The sidecar: peer messages in and out.
GRANT SELECT ON chips.agents, chips.outbox, chips.inbox TO chips_agent;
GRANT EXECUTE ON FUNCTION
    chips.peer_receive(text, jsonb), chips.outbox_claim(integer, interval, text[], text[], text),
    chips.outbox_ack(bigint[]), chips.outbox_release(bigint[], bigint[]), chips.chain_sync(uuid)
TO chips_agent;
-- Automatic clearing (chipsd's tick, or cron as an admin): the procedures and what they call.
GRANT EXECUTE ON FUNCTION
    chips._clearing_pass(boolean, bigint, integer, text, double precision, integer),
    chips._clearing_next(), chips._clearing_claim(), chips._clearing_done(integer, numeric),
    chips.clearing_continuous()
TO chips_agent, chips_admin;
GRANT EXECUTE ON PROCEDURE chips.clearing_tick(boolean, integer, numeric),
    chips.clearing_run(integer, numeric, bigint, integer, integer)
TO chips_agent, chips_admin;
GRANT SELECT ON chips.clearing_settings TO chips_agent;
-- Distributed lifts: the timer, and circles through other sites (part of automatic clearing).
GRANT EXECUTE ON FUNCTION chips.lift_tick(), chips.lift_circles(bigint, integer) TO chips_agent, chips_admin;
-- Clearing rounds: their timers (chips.lift_tick calls them too), their settings, a round now.
GRANT EXECUTE ON FUNCTION chips.round_tick(), chips._round_next(), chips._round_work_step(bigint)
TO chips_agent, chips_admin;
GRANT EXECUTE ON PROCEDURE chips.round_work(integer) TO chips_agent, chips_admin;
GRANT EXECUTE ON FUNCTION chips.round_configure(text, boolean, interval, interval, integer),
    chips.round_open()
TO chips_admin;

-- Administrators: read everything, manage agents, users and contracts.
GRANT SELECT ON ALL TABLES IN SCHEMA chips TO chips_admin;
GRANT EXECUTE ON FUNCTION
    chips.my_ent(), chips._tally_doc(chips.tallies), chips._state(chips.tallies),
    chips._iso(timestamptz),
    chips._tally_doc_make(integer, integer, text, timestamptz, text, text, text, jsonb, jsonb, jsonb, jsonb),
    chips._other(text), chips._chit_change(text, text, bigint),
    chips._chit_event(chips.tallies, uuid, text, text, text, bigint, text),
    chips.agent_register(text, text, integer, boolean),
    chips.user_create(text, text, text, text, text, name, boolean),
    chips._chit_doc(chips.chits, uuid),
    chips.tally_audit(uuid), chips.chain_sync(uuid),
    chips.clear(boolean, bigint, integer, text),
    chips.clearing_plan(bigint, integer, integer, text, double precision),
    chips.clearing_configure(boolean, interval, bigint, integer, double precision, integer, boolean),
    chips.user_set_key(text, text), chips.user_set_status(text, text),
    chips.contract_add(jsonb, text),
    chips.login_ticket(text, interval), chips.login_revoke(text, text),
    chips.events_prune(interval), chips.file_add(bytea, text), chips.document(text),
    chips.lift_configure(interval, interval, interval, interval, integer, integer, interval, interval, integer, integer)
TO chips_admin;
