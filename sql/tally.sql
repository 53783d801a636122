-- chips install SQL: tickets and tallies. The tally document, its signatures and states, the
-- user API that drafts, offers, accepts, counters, voids and closes tallies, tickets, the
-- receivers of tally messages from partner sites, and the trigger functions that guard
-- tallies. Functions only (sql/finalize.sql has the triggers, views, row-level security and
-- grants); conventions in sql/identity.sql.

------------------------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------------------------

-- The document both parties sign, built from one half (core's tally::HalfDoc: its one
-- definition). Both halves of a tally build the same one.
CREATE FUNCTION chips._tally_doc(t chips.tallies) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT chips._tally_doc_make(t.version, t.revision, t.tally_uuid::text, t.tally_date, t.memo,
                                 t.contract, t.side, t.hold_cert, t.hold_terms, t.part_cert,
                                 t.part_terms)
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
-- The user API: tickets, tallies
------------------------------------------------------------------------------------------------

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
