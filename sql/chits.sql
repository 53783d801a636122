-- chips install SQL, part 3: chits, balances and the chit chain. Functions only (the triggers,
-- views and grants are in sql/finalize.sql).
--
-- Value: a chit's issuer (`issuer`, the side that pledges value) owes `units` more; its `value`
-- is the change of the holding half's balance (-units on the issuer's half, +units on the
-- other). net_good sums the good chits, net_pend the good and pending ones: O(1) per change.
--
-- Chain: the foil half orders the chain, the stock half conforms. A chit that becomes good on the
-- foil half is appended there at once; the foil half sends the stock half every entry it has not
-- confirmed (`upd`); the stock half places them at the same indexes, checks each hash, and
-- answers `ack` (or `nak` with its length when it sees a gap). Every step is idempotent.

------------------------------------------------------------------------------------------------
-- Documents
------------------------------------------------------------------------------------------------

-- The document a chit's issuer signs, rebuilt from a chit row and its tally's uuid.
CREATE FUNCTION chips._chit_doc(c chips.chits, p_tally uuid) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT chips.chit_doc_make(p_tally, c.issuer, c.chit_type, c.chit_uuid,
                               (extract(epoch FROM c.chit_date) * 1000)::bigint, c.units,
                               c.reference, c.memo)
$$;

-- Raises 28000 unless the chit row `c` on half `t` carries its issuer's signature over its
-- document (the fields _chit_doc reads, checked in one call without the jsonb in between).
CREATE FUNCTION chips._chit_verify(c chips.chits, t chips.tallies) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT chips._chit_row_verify(t.tally_uuid, c.issuer, c.chit_type, c.chit_uuid,
                                  (extract(epoch FROM c.chit_date) * 1000)::bigint, c.units,
                                  c.reference, c.memo, chips._key_of(t, c.issuer), c.signature)
$$;

-- The public key of a side of a tally half.
CREATE FUNCTION chips._key_of(t chips.tallies, p_side text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN p_side = t.side THEN t.hold_cert ELSE t.part_cert END->>'public' $$;

-- Insert a chit into a half from its (checked) document; returns the row written. A good chit
-- on the foil half takes its place at the end of the chain at once (the foil half orders the
-- chain; the same place chips._chain_place gives a chit that becomes good later). `p_stock`,
-- the stock half of a local tally whose foil half is `t` (chips._chit_local): the chit is
-- written on both halves in the one statement, a good one at the same place in both chains (the
-- two halves of a local tally are chained in the same transactions, so they have the same
-- length and tip; halves out of step refuse the chit).
CREATE FUNCTION chips._chit_insert(t chips.tallies, p_doc jsonb, p_status text, p_sig text,
                                   p_lift bigint DEFAULT NULL, p_stock chips.tallies DEFAULT NULL)
RETURNS chips.chits
LANGUAGE plpgsql
AS $$
DECLARE
    c chips.chits;
    v_idx integer;
    v_prior bytea;
    v_hash bytea;
BEGIN
    IF p_status = 'good' AND t.side = 'foil' THEN
        SELECT x.chain_len + 1, chips._chain_tip(x) INTO v_idx, v_prior
        FROM chips.tallies x WHERE x.id = t.id;
        IF p_stock.id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM chips.tallies x
            WHERE x.id = p_stock.id AND x.tally_uuid = t.tally_uuid
              AND x.chain_len + 1 = v_idx AND chips._chain_tip(x) = v_prior) THEN
            RAISE EXCEPTION 'the halves of tally % chain chit % differently', t.tally_uuid, p_doc->>'uuid'
                USING ERRCODE = '55000';
        END IF;
    END IF;
    IF v_idx IS NOT NULL THEN
        v_hash := chips.chit_chain_hash(p_doc, v_idx, v_prior, p_sig);
    END IF;
    WITH written AS (
        INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
                                 chit_date, signature, status, value, chain_idx, chain_prev,
                                 chain_hash, lift_id)
        SELECT h.id, (p_doc->>'uuid')::uuid, p_doc->>'type', p_doc->>'by', (p_doc->>'units')::bigint,
               p_doc->'ref', p_doc->>'memo', (p_doc->>'date')::timestamptz, p_sig, p_status,
               chips.chit_value(p_doc, h.side), v_idx, v_prior, v_hash, p_lift
        FROM (VALUES (1, t.id, t.side), (2, p_stock.id, p_stock.side)) h(k, id, side)
        WHERE h.id IS NOT NULL ORDER BY h.k
        RETURNING *)
    SELECT * INTO c FROM written w WHERE w.tally_id = t.id;
    IF chips._chit_doc(c, t.tally_uuid) <> p_doc THEN
        RAISE EXCEPTION 'chit % cannot be stored exactly as it was written', p_doc->>'uuid'
            USING ERRCODE = '22023', DETAIL = chips.canonical_json(p_doc);
    END IF;
    RETURN c;
END
$$;

------------------------------------------------------------------------------------------------
-- Effects of a chit becoming good on a half: settings, closing
------------------------------------------------------------------------------------------------

CREATE FUNCTION chips._chit_effects(p_tally_id bigint, c chips.chits) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    s jsonb;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF c.chit_type = 'set' THEN
        s := chips.settings_check(c.reference);
        IF c.issuer = t.side THEN
            UPDATE chips.tallies x SET (target, bound, reward, clutch) =
                (SELECT a.target, a.bound, a.reward, a.clutch
                 FROM chips._settings_apply(s, x.target, x.bound, x.reward, x.clutch) a)
            WHERE x.id = t.id;
        ELSE
            UPDATE chips.tallies x SET part_sets = x.part_sets || (s - 'close') WHERE x.id = t.id;
        END IF;
        IF (s->>'close')::boolean AND t.status = 'open' THEN
            UPDATE chips.tallies x SET status = 'closing' WHERE x.id = t.id;
            t.status := 'closing';
        END IF;
    END IF;
    IF t.status = 'closing' THEN
        PERFORM chips._close_if_settled(t.id);
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- The chain
------------------------------------------------------------------------------------------------

-- The hash a half's next block links to: its last block's, or the tally's digest before the
-- first. The one rule of where a chain goes on (the next block's index is chain_len + 1, and its
-- hash chips.chit_chain_hash over the chit, that index, this tip and the signature).
CREATE FUNCTION chips._chain_tip(t chips.tallies) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(t.chain_tip, t.digest) $$;

-- Chains good chits that are not chained yet, where their chains are ordered: on a foil half,
-- and on both halves of a tally between two local users, whose stock half takes the same place
-- as its foil half (so both chits must be in `p_chits`). Each half's chits go on in id order,
-- each at chain_len + 1 after chips._chain_tip (the chits statement trigger moves the tip after
-- every round). The one path by which a chit that was pending becomes part of a chain: an
-- invoice signed, a chit from a partner site, a lift settled. (A new good chit is inserted at
-- that place at once: chips._chit_insert, and a clearing pass's writer.) 55000 when the two
-- halves of a local tally would chain one differently.
CREATE FUNCTION chips._chain_place(p_chits bigint[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_tally uuid;
    v_chit uuid;
BEGIN
    LOOP
        UPDATE chips.chits y SET chain_idx = t.chain_len + 1, chain_prev = chips._chain_tip(t),
            chain_hash = chips.chit_chain_hash(chips._chit_doc(y, t.tally_uuid), t.chain_len + 1,
                                               chips._chain_tip(t), y.signature)
        FROM (SELECT DISTINCT ON (z.tally_id) z.id FROM chips.chits z
              WHERE z.id = ANY (p_chits) AND z.status = 'good' AND z.chain_idx IS NULL
              ORDER BY z.tally_id, z.id) f, chips.tallies t
        WHERE y.id = f.id AND t.id = y.tally_id AND (t.side = 'foil' OR t.part_ent IS NOT NULL);
        EXIT WHEN NOT FOUND;
    END LOOP;
    SELECT ta.tally_uuid, a.chit_uuid INTO v_tally, v_chit
    FROM chips.chits a JOIN chips.tallies ta ON ta.id = a.tally_id
    JOIN chips.tallies tb ON tb.tally_uuid = ta.tally_uuid AND tb.side = 'stock'
    LEFT JOIN chips.chits b ON b.tally_id = tb.id AND b.chit_uuid = a.chit_uuid
    WHERE a.id = ANY (p_chits) AND ta.side = 'foil' AND ta.part_ent IS NOT NULL
      AND a.chain_hash IS DISTINCT FROM b.chain_hash
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the halves of tally % chain chit % differently', v_tally, v_chit
            USING ERRCODE = '55000';
    END IF;
END
$$;

-- The foil half sends the stock half every chain entry the stock half has not confirmed.
CREATE FUNCTION chips._chain_send(p_tally_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    v_entries jsonb;
BEGIN
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF t.side <> 'foil' OR t.chain_len <= t.chain_conf THEN
        RETURN;
    END IF;
    -- the first unconfirmed entries, up to chips._max_chain_batch_bytes() (a peer message must
    -- fit one Noise message): the stock half's ack brings the next ones (`ack` below)
    SELECT pg_catalog.jsonb_agg(e.entry ORDER BY e.idx) INTO v_entries
    FROM (SELECT c.chain_idx AS idx, x.entry,
                 sum(pg_catalog.octet_length(x.entry::text)) OVER (ORDER BY c.chain_idx) AS upto
          FROM chips.chits c,
               LATERAL (SELECT pg_catalog.jsonb_build_object(
                   'index', c.chain_idx, 'hash', chips.b64url_encode(c.chain_hash),
                   'chit', chips._chit_doc(c, t.tally_uuid), 'sign', c.signature) AS entry) x
          WHERE c.tally_id = t.id AND c.chain_idx > t.chain_conf) e
    WHERE e.upto <= chips._max_chain_batch_bytes() OR e.idx = t.chain_conf + 1;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
        pg_catalog.jsonb_build_object('cmd', 'upd', 'tally', t.tally_uuid, 'chits', v_entries));
END
$$;

-- Whether the outbox still holds an undelivered message to the partner of half `t` (its site's
-- agent): then a resend would only queue behind it.
CREATE FUNCTION chips._chain_pending(t chips.tallies) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM chips.outbox o
                   WHERE o.delivered IS NULL AND o.to_agent = t.part_cert->'chad'->>'agent')
$$;

-- A chit became good on a half of a tally with another site: the foil half chains it and tells
-- the stock half (a tally between two local users is written by chips._chit_local instead).
CREATE FUNCTION chips._chit_good(p_tally_id bigint, c chips.chits) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
BEGIN
    PERFORM chips._chit_effects(p_tally_id, c);
    SELECT * INTO t FROM chips.tallies x WHERE x.id = p_tally_id;
    IF t.side <> 'foil' THEN
        RETURN;
    END IF;
    PERFORM chips._chain_place(ARRAY[c.id]);
    PERFORM chips._chain_send(p_tally_id);
END
$$;

------------------------------------------------------------------------------------------------
-- Custodial keys
------------------------------------------------------------------------------------------------

-- The signature of a custodial user over a document, or null when the database holds no key.
CREATE FUNCTION chips._custodial_sign(p_ent text, p_doc jsonb) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_seed bytea;
BEGIN
    SELECT k.seed INTO v_seed FROM chips.custody k WHERE k.ent = p_ent;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN chips.seed_sign(v_seed, p_doc);
END
$$;

------------------------------------------------------------------------------------------------
-- The user API: payments, invoices, settings
------------------------------------------------------------------------------------------------

-- The caller's half of an open (or closing) tally, locked.
CREATE FUNCTION chips._my_open_tally(p_me chips.users, p_uuid uuid) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._my_tally(p_me, p_uuid);
BEGIN
    IF t.status NOT IN ('open', 'closing') THEN
        PERFORM chips._refuse(t, 'write chits on', 'Chits go on open tallies.');
    END IF;
    RETURN t;
END
$$;

-- Raises 23514 when a good chit of `p_units` issued by the holder of `t` would take the holder's
-- balance below minus the credit its partner granted it, counting what pending lifts may still
-- take from it (net_hold): a lift that commits after the payment cannot take it past the limit
-- (core's chit::pay_room, chips._pay_room).
CREATE FUNCTION chips._check_limit(t chips.tallies, p_units bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_limit bigint := coalesce((t.part_terms->>'limit')::bigint, 0);
    v_room bigint := chips._pay_room(t.net_good, t.net_hold, v_limit);
BEGIN
    IF p_units > v_room THEN
        RAISE EXCEPTION 'paying % would take your balance on tally % to %, past the credit limit of % your partner granted',
            p_units, t.tally_uuid, t.net_good + t.net_hold - p_units, v_limit
            USING ERRCODE = '23514',
                  HINT = 'Pay at most ' || greatest(v_room, 0) || ' milliCHIPs.';
    END IF;
END
$$;

-- A chit document for the caller to sign: a payment (units) or a setting (units null,
-- reference = settings), with a fresh uuid and the current time.
CREATE FUNCTION chips.chit_json(tally uuid, units bigint DEFAULT NULL, memo text DEFAULT NULL,
                                reference jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_open_tally(v_me, chit_json.tally);
BEGIN
    RETURN chips.chit_doc_make(t.tally_uuid, t.side,
        CASE WHEN chit_json.units IS NULL THEN 'set' ELSE 'tran' END, pg_catalog.gen_random_uuid(),
        (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, chit_json.units, chit_json.reference,
        chit_json.memo);
END
$$;

-- Issue a signed chit: a payment (`tran`) or a setting (`set`) by the caller.
CREATE FUNCTION chips.chit_issue(doc jsonb, signature text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    v_doc jsonb := chips.chit_doc_check(chit_issue.doc);
    t chips.tallies := chips._my_open_tally(v_me, (v_doc->>'tally')::uuid);
BEGIN
    RETURN chips._chit_issue(t, v_doc, coalesce(chit_issue.signature, chips._custodial_sign(v_me.ent, v_doc)));
END
$$;

-- chit_issue's work, on the caller's half `t` (locked, open or closing) and a checked document
-- for that tally.
CREATE FUNCTION chips._chit_issue(t chips.tallies, v_doc jsonb, v_sig text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c chips.chits;
BEGIN
    IF v_doc->>'by' <> t.side THEN
        RAISE EXCEPTION 'you are the % of tally %: you can only issue chits by %', t.side, t.tally_uuid, t.side
            USING ERRCODE = '22023', HINT = 'To ask your partner for value, send an invoice (chips.chit_invoice).';
    END IF;
    IF v_doc->>'type' = 'lift' THEN
        RAISE EXCEPTION 'lift chits are written by lifts only' USING ERRCODE = '22023';
    END IF;
    IF NOT chips._chit_dated_near(v_doc->>'date', (extract(epoch FROM pg_catalog.now()) * 1000)::bigint) THEN
        RAISE EXCEPTION 'chit date % is more than an hour from now', v_doc->>'date' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chips.chits y WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid;
    IF FOUND THEN
        IF c.status = 'good' AND c.signature = v_sig
           AND chips.canonical_json(chips._chit_doc(c, t.tally_uuid)) = chips.canonical_json(v_doc) THEN
            RETURN 'good';   -- the same chit again (a retry): nothing to do
        END IF;
        RAISE EXCEPTION 'tally % already has a chit %', t.tally_uuid, v_doc->>'uuid' USING ERRCODE = '23505';
    END IF;
    IF v_sig IS NULL THEN
        RAISE EXCEPTION 'chit % carries no signature', v_doc->>'uuid' USING ERRCODE = '28000';
    END IF;
    -- a forgery is reported as one, before any rule about its content
    PERFORM chips.chit_verify(v_doc, t.hold_cert->>'public', v_sig);
    IF v_doc->>'type' = 'tran' THEN
        PERFORM chips._check_limit(t, (v_doc->>'units')::bigint);
    ELSE
        -- settings: checked against the trading variables they change
        PERFORM chips._settings_apply(v_doc->'ref', t.target, t.bound, t.reward, t.clutch);
    END IF;
    IF t.part_ent IS NOT NULL THEN
        -- the partner's half is in this database: written here at once (chips._chit_local)
        PERFORM chips._chit_local(t, v_doc, v_sig);
        RETURN 'good';
    END IF;
    c := chips._chit_insert(t, v_doc, 'good', v_sig);      -- the trigger verifies it again
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'good',
                        pg_catalog.jsonb_build_object('chit', v_doc, 'sign', v_sig));
    PERFORM chips._chit_good(t.id, c);
    RETURN 'good';
END
$$;

-- A chit on a tally whose two halves are both in this database: what a chit on one half and
-- the chit message applied on the other do, without the message, on both halves in one
-- statement. A new chit (a payment, `p_status` good; an invoice, pend) is inserted on both
-- (chips._chit_insert: a good one at the same index and hash); an invoice signed (`p_status`
-- signed: its pending chit on both halves, `p_sig` its signature) becomes good on both and is
-- chained by chips._chain_place, as a lift's chits are when it settles.
CREATE FUNCTION chips._chit_local(t chips.tallies, p_doc jsonb, p_sig text, p_status text DEFAULT 'good')
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    p chips.tallies;
    f chips.tallies;
    s chips.tallies;
    c chips.chits;
    v_ids bigint[];
BEGIN
    SELECT * INTO p FROM chips.tallies x WHERE x.tally_uuid = t.tally_uuid AND x.id <> t.id;
    IF NOT FOUND OR p.ent IS DISTINCT FROM t.part_ent THEN
        RAISE EXCEPTION 'the partner''s half of tally % is missing', t.tally_uuid USING ERRCODE = '55000';
    END IF;
    IF p.status NOT IN ('open', 'closing', 'closed') THEN
        RAISE EXCEPTION 'tally % is not open here yet', t.tally_uuid USING ERRCODE = '55000';
    END IF;
    IF t.side = 'foil' THEN f := t; s := p; ELSE f := p; s := t; END IF;
    IF p_status = 'signed' THEN
        WITH signed AS (
            UPDATE chips.chits y SET status = 'good', signature = p_sig
            WHERE y.tally_id IN (f.id, s.id) AND y.chit_uuid = (p_doc->>'uuid')::uuid AND y.status = 'pend'
            RETURNING y.id)
        SELECT pg_catalog.array_agg(x.id) INTO v_ids FROM signed x;
        IF pg_catalog.cardinality(v_ids) IS DISTINCT FROM 2 THEN
            RAISE EXCEPTION 'chit % is pending on one half of tally % only', p_doc->>'uuid', t.tally_uuid
                USING ERRCODE = '55000';
        END IF;
        PERFORM chips._chain_place(v_ids);
        SELECT * INTO c FROM chips.chits y WHERE y.id = ANY (v_ids) LIMIT 1;
    ELSE
        c := chips._chit_insert(f, p_doc, p_status, p_sig, NULL, s);
    END IF;
    IF p_status IN ('good', 'signed') THEN
        -- (what the effects read, type, issuer and settings, is the same on both halves)
        PERFORM chips._chit_effects(s.id, c);
        PERFORM chips._chit_effects(f.id, c);
    END IF;
END
$$;

-- A chit by a custodial user (the database holds their key): a payment (units) or a setting
-- (units null, reference = settings), built, signed and issued here. 55000 for a user who holds
-- their own key (they sign chit_json's document themselves).
CREATE FUNCTION chips._custodial_issue(p_me chips.users, p_tally uuid, p_units bigint,
                                       p_memo text, p_reference jsonb) RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies;
    v_doc jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM chips.custody k WHERE k.ent = p_me.ent) THEN
        RAISE EXCEPTION 'user % signs with their own key: use chips.chit_json and chips.chit_issue', p_me.ent
            USING ERRCODE = '55000';
    END IF;
    t := chips._my_open_tally(p_me, p_tally);
    v_doc := chips.chit_doc_make(t.tally_uuid, t.side, CASE WHEN p_units IS NULL THEN 'set' ELSE 'tran' END,
        pg_catalog.gen_random_uuid(), (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, p_units,
        p_reference, p_memo);
    PERFORM chips._chit_issue(t, v_doc, chips._custodial_sign(p_me.ent, v_doc));
    RETURN (v_doc->>'uuid')::uuid;
END
$$;

-- Pay through SQL alone: for custodial users (the database holds their key). A payment on an
-- open tally between two users of this site that would be applied is written by the writer of
-- clean batches (chips._pay_one: extension/src/pay.rs, its statements planned once per
-- backend); any other, or one it would refuse, by chips._custodial_issue, which says why.
CREATE FUNCTION chips.pay(tally uuid, units bigint, memo text DEFAULT NULL,
                          reference jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_chit uuid;
BEGIN
    IF pay.units IS NULL THEN
        PERFORM chips._me();   -- who may not pay at all is told so first
        RAISE EXCEPTION 'a payment needs units' USING ERRCODE = '22023';
    END IF;
    v_chit := chips._pay_one(pay.tally, pay.units, pay.memo, pay.reference);
    IF v_chit IS NOT NULL THEN
        RETURN v_chit;
    END IF;
    RETURN chips._custodial_issue(chips._me(), pay.tally, pay.units, pay.memo, pay.reference);
END
$$;

-- Many payments in one call (a payroll, a shop's end of day): each item a payment the caller
-- may make, `{tally, units, memo?, reference?, payer?}` (signed here with a custodial key, as
-- chips.pay) or `{doc, signature?, payer?}` (a chit document its payer signed, as
-- chips.chit_issue); `payer` (an entity id) lets a role that acts for several users (a member
-- of each one's role) pay for each of them, else the caller's own user pays. Every item is
-- checked and signed like a single payment. Per item (the default) each is applied or refused
-- on its own, in a subtransaction of its own: one row per item, its chit uuid or the SQLSTATE
-- and message it was refused with, nothing of a refused one written. With `all_or_nothing`,
-- the first refusal refuses the whole call with that item's SQLSTATE and message, and nothing
-- is written (no subtransactions: faster). One transaction either way.
--
-- A batch of payments on open tallies between users of this site (custodial ones, or documents
-- their payers signed) that would all be applied is written at once (chips._pay_bulk,
-- extension/src/pay.rs: one INSERT of every chit, one run of the chits statement trigger); any
-- other batch, or one with an item that would be refused, is paid item by item as above (the
-- set-based attempt then leaves nothing behind).
CREATE FUNCTION chips.pay_batch(payments jsonb, all_or_nothing boolean DEFAULT false)
RETURNS TABLE (item integer, chit uuid, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    p jsonb;
    k integer := 0;
    v_state text;
    v_message text;
    v_chits uuid[];
BEGIN
    IF pg_catalog.jsonb_typeof(pay_batch.payments) IS DISTINCT FROM 'array'
       OR pg_catalog.jsonb_array_length(pay_batch.payments) NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'payments is a JSON array of 1 to 1,000 payments' USING ERRCODE = '22023';
    END IF;
    BEGIN
        v_chits := chips._pay_bulk(pay_batch.payments);
    EXCEPTION WHEN OTHERS THEN
        v_chits := NULL;   -- item by item below says what went wrong
    END;
    IF v_chits IS NOT NULL THEN
        RETURN QUERY SELECT u.k::integer, u.c, NULL::text, NULL::text
                     FROM pg_catalog.unnest(v_chits) WITH ORDINALITY u(c, k) ORDER BY u.k;
        RETURN;
    END IF;
    FOR p IN SELECT x FROM pg_catalog.jsonb_array_elements(pay_batch.payments) x LOOP
        k := k + 1;
        item := k;
        chit := NULL;
        pay_batch.sqlstate := NULL;
        pay_batch.message := NULL;
        IF coalesce(pay_batch.all_or_nothing, false) THEN
            chit := chips._pay_item(p);
        ELSE
            BEGIN
                chit := chips._pay_item(p);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
                pay_batch.sqlstate := v_state;
                pay_batch.message := v_message;
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- One item of chips.pay_batch: its payer (acted for), checked, signed and issued; its chit uuid.
CREATE FUNCTION chips._pay_item(p jsonb) RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    u chips.users;
    v_doc jsonb;
    v_tally uuid;
    v_units bigint;
BEGIN
    IF pg_catalog.jsonb_typeof(p) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a payment is {tally, units, memo?, reference?, payer?} or {doc, signature?, payer?}'
            USING ERRCODE = '22023';
    END IF;
    u := chips._acting_for(p->>'payer');
    IF p ? 'doc' THEN
        v_doc := chips.chit_doc_check(p->'doc');
        PERFORM chips._chit_issue(chips._my_open_tally(u, (v_doc->>'tally')::uuid), v_doc,
                                  coalesce(p->>'signature', chips._custodial_sign(u.ent, v_doc)));
        RETURN (v_doc->>'uuid')::uuid;
    END IF;
    BEGIN
        v_tally := (p->>'tally')::uuid;
        v_units := (p->>'units')::bigint;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'a payment has a tally (uuid) and units (a whole number)' USING ERRCODE = '22023';
    END;
    IF v_tally IS NULL OR v_units IS NULL OR (p ? 'reference' AND pg_catalog.jsonb_typeof(p->'reference') <> 'object')
       OR (p ? 'memo' AND pg_catalog.jsonb_typeof(p->'memo') <> 'string') THEN
        RAISE EXCEPTION 'a payment has a tally (uuid) and units (a whole number); memo is text, reference an object'
            USING ERRCODE = '22023';
    END IF;
    RETURN chips._custodial_issue(u, v_tally, v_units, p->>'memo', p->'reference');
END
$$;

-- The user a batch item pays for: the caller's own (`p_payer` null), or the user with entity id
-- `p_payer` whose role the caller's role is a member of (never through the gateway, whose
-- sessions act for one user). 42501 otherwise.
CREATE FUNCTION chips._acting_for(p_payer text) RETURNS chips.users
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    u chips.users;
    v_role text := chips.outer_role();
BEGIN
    IF p_payer IS NULL THEN
        RETURN chips._me();
    END IF;
    SELECT * INTO u FROM chips.users x WHERE x.ent = p_payer;
    IF NOT FOUND OR u.username IS NULL
       OR (u.username <> v_role AND (chips._via_gateway()
                                     OR NOT pg_catalog.pg_has_role(v_role::name, u.username::name, 'MEMBER'))) THEN
        RAISE EXCEPTION 'role % does not act for user %', v_role, p_payer USING ERRCODE = '42501';
    END IF;
    IF chips._via_gateway() AND u.ent IS DISTINCT FROM chips._session_ent() THEN
        RAISE EXCEPTION 'no live session for user %', u.ent USING ERRCODE = '42501';
    END IF;
    IF u.status <> 'active' THEN
        RAISE EXCEPTION 'user % is %', u.ent, u.status USING ERRCODE = '42501';
    END IF;
    RETURN u;
END
$$;

-- Ask the partner for value: a pending chit the partner signs (chit_sign) or declines.
CREATE FUNCTION chips.chit_invoice(tally uuid, units bigint, memo text DEFAULT NULL,
                                   reference jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_open_tally(v_me, chit_invoice.tally);
    v_doc jsonb;
BEGIN
    IF chit_invoice.units IS NULL THEN
        RAISE EXCEPTION 'an invoice needs units' USING ERRCODE = '22023';
    END IF;
    v_doc := chips.chit_doc_make(t.tally_uuid, chips._other(t.side), 'tran', pg_catalog.gen_random_uuid(),
        (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, chit_invoice.units,
        chit_invoice.reference, chit_invoice.memo);
    IF t.part_ent IS NOT NULL THEN
        PERFORM chips._chit_local(t, v_doc, NULL, 'pend');
        RETURN (v_doc->>'uuid')::uuid;
    END IF;
    PERFORM chips._chit_insert(t, v_doc, 'pend', NULL);
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'pend',
                        pg_catalog.jsonb_build_object('chit', v_doc));
    RETURN (v_doc->>'uuid')::uuid;
END
$$;

-- The caller's pending chit, locked.
CREATE FUNCTION chips._my_pending(t chips.tallies, p_chit uuid) RETURNS chips.chits
LANGUAGE plpgsql
AS $$
DECLARE
    c chips.chits;
BEGIN
    SELECT * INTO c FROM chips.chits y WHERE y.tally_id = t.id AND y.chit_uuid = p_chit FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tally % has no chit %', t.tally_uuid, p_chit USING ERRCODE = '42704';
    END IF;
    IF c.status <> 'pend' THEN
        RAISE EXCEPTION 'chit % is %: only a pending chit can be signed or declined', p_chit, c.status
            USING ERRCODE = '55000';
    END IF;
    RETURN c;
END
$$;

-- Sign an invoice the partner sent: it becomes a good chit (a payment by the caller).
CREATE FUNCTION chips.chit_sign(tally uuid, chit uuid, signature text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_open_tally(v_me, chit_sign.tally);
    c chips.chits := chips._my_pending(t, chit_sign.chit);
    v_doc jsonb := chips._chit_doc(c, t.tally_uuid);
    v_sig text := coalesce(chit_sign.signature, chips._custodial_sign(v_me.ent, v_doc));
BEGIN
    IF c.issuer <> t.side THEN
        RAISE EXCEPTION 'chit % is your own invoice: your partner signs it', chit_sign.chit
            USING ERRCODE = '55000';
    END IF;
    IF v_sig IS NULL THEN
        RAISE EXCEPTION 'chit % carries no signature', chit_sign.chit USING ERRCODE = '28000';
    END IF;
    PERFORM chips.chit_verify(v_doc, t.hold_cert->>'public', v_sig);
    PERFORM chips._check_limit(t, c.units);
    IF t.part_ent IS NOT NULL THEN
        PERFORM chips._chit_local(t, v_doc, v_sig, 'signed');
        RETURN 'good';
    END IF;
    UPDATE chips.chits y SET status = 'good', signature = v_sig WHERE y.id = c.id RETURNING * INTO c;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'good',
                        pg_catalog.jsonb_build_object('chit', v_doc, 'sign', v_sig));
    PERFORM chips._chit_good(t.id, c);
    RETURN 'good';
END
$$;

-- Decline an invoice (the payer) or withdraw it (the one who asked).
CREATE FUNCTION chips.chit_decline(tally uuid, chit uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    v_me chips.users := chips._me();
    t chips.tallies := chips._my_tally(v_me, chit_decline.tally);
    c chips.chits := chips._my_pending(t, chit_decline.chit);
BEGIN
    UPDATE chips.chits y SET status = 'void' WHERE y.id = c.id;
    PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'void',
                        pg_catalog.jsonb_build_object('tally', t.tally_uuid, 'uuid', c.chit_uuid));
    PERFORM chips._close_if_settled(t.id);
    RETURN 'void';
END
$$;

------------------------------------------------------------------------------------------------
-- Receiving chit messages
------------------------------------------------------------------------------------------------

-- The recipient's half of the tally a chit message is about, locked; the sender must be its
-- partner.
CREATE FUNCTION chips._chit_half(msg jsonb, p_tally uuid) RETURNS chips.tallies
LANGUAGE plpgsql
AS $$
DECLARE
    v_ent text := chips._local_ent(msg->'to');
    t chips.tallies;
BEGIN
    PERFORM 1 FROM chips.tallies x WHERE x.tally_uuid = p_tally ORDER BY x.id FOR UPDATE;
    SELECT * INTO t FROM chips.tallies x WHERE x.tally_uuid = p_tally AND x.ent = v_ent;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tally % here', p_tally USING ERRCODE = '42704';
    END IF;
    IF NOT chips._same_party(t.part_cert->'chad', msg->'from') THEN
        RAISE EXCEPTION 'only the partner of tally % can send its chits', p_tally USING ERRCODE = '42501';
    END IF;
    IF t.status NOT IN ('open', 'closing', 'closed') THEN
        RAISE EXCEPTION 'tally % is not open here yet', p_tally USING ERRCODE = '55000';
    END IF;
    RETURN t;
END
$$;

CREATE FUNCTION chips._recv_chit_pend(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb := chips.chit_doc_check(msg->'object'->'chit');
    t chips.tallies := chips._chit_half(msg, (v_doc->>'tally')::uuid);
BEGIN
    IF v_doc->>'by' <> t.side OR v_doc->>'type' <> 'tran' THEN
        RAISE EXCEPTION 'an invoice asks its recipient to pay' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM chips.chits y WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid) THEN
        RETURN 'ignored';
    END IF;
    PERFORM chips._chit_insert(t, v_doc, 'pend', NULL);
    RETURN 'pend';
END
$$;

CREATE FUNCTION chips._recv_chit_good(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb := chips.chit_doc_check(msg->'object'->'chit');
    v_sig text := msg->'object'->>'sign';
    t chips.tallies := chips._chit_half(msg, (v_doc->>'tally')::uuid);
    c chips.chits;
BEGIN
    IF v_doc->>'by' = t.side OR v_doc->>'type' = 'lift' THEN
        RAISE EXCEPTION 'a good chit from the partner must be issued by the partner' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chips.chits y
    WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid FOR UPDATE;
    IF FOUND AND c.status = 'good' THEN
        RETURN 'ignored';
    ELSIF FOUND THEN
        -- an invoice we sent, now signed (or signed while we withdrew it: the signature wins)
        IF chips.canonical_json(chips._chit_doc(c, t.tally_uuid)) <> chips.canonical_json(v_doc) THEN
            RAISE EXCEPTION 'chit % differs from the one asked for', c.chit_uuid USING ERRCODE = '22023';
        END IF;
        UPDATE chips.chits y SET status = 'good', signature = v_sig WHERE y.id = c.id RETURNING * INTO c;
    ELSE
        c := chips._chit_insert(t, v_doc, 'good', v_sig);
    END IF;
    PERFORM chips._chit_good(t.id, c);
    RETURN 'good';
END
$$;

CREATE FUNCTION chips._recv_chit_void(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._chit_half(msg, (msg->'object'->>'tally')::uuid);
BEGIN
    UPDATE chips.chits y SET status = 'void'
    WHERE y.tally_id = t.id AND y.chit_uuid = (msg->'object'->>'uuid')::uuid AND y.status = 'pend';
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    PERFORM chips._close_if_settled(t.id);
    RETURN 'void';
END
$$;

-- Chain messages: upd (foil -> stock), ack and nak (stock -> foil).
CREATE FUNCTION chips._recv_chain(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    t chips.tallies := chips._chit_half(msg, (msg->'object'->>'tally')::uuid);
    u record;
BEGIN
    CASE msg->'object'->>'cmd'
    WHEN 'upd' THEN
        SELECT * INTO u FROM chips._chain_upd(t, msg->'object'->'chits');
        PERFORM chips._chain_write(u.ids, u.idxs, u.priors, u.hashes);
        IF u.ack IS NULL THEN
            RETURN 'nak';
        END IF;
        PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
                            u.ack || '{"cmd": "ack"}');
        RETURN 'upd';
    WHEN 'ack' THEN
        RETURN chips._chain_ack(t, (msg->'object'->>'index')::integer, msg->'object'->>'hash');
    WHEN 'nak' THEN
        IF t.side <> 'foil' THEN
            RETURN 'ignored';
        END IF;
        UPDATE chips.tallies x SET chain_conf = least(x.chain_conf, (msg->'object'->>'index')::integer)
        WHERE x.id = t.id;
        PERFORM chips._chain_send(t.id);
        RETURN 'nak';
    ELSE
        RAISE EXCEPTION 'unknown chain command %', msg->'object'->>'cmd' USING ERRCODE = '22023';
    END CASE;
END
$$;

-- The stock half `t` takes the foil half's chain entries (`p_chits`: [{index, hash, chit,
-- sign}]) in order: each must extend its chain to the same hash. Returns what to acknowledge,
-- `ack` {tally, index, hash} (its chain as it will be), or null when it found a gap and asked
-- for everything after what it has (nak); and the places its entries take (`ids`, `idxs`,
-- `priors`, `hashes`), which the caller writes with chips._chain_write, for every tally of a
-- message at once: one statement, so the chits trigger runs once, not once an entry.
CREATE FUNCTION chips._chain_upd(t chips.tallies, p_chits jsonb, OUT ack jsonb, OUT ids bigint[],
                                 OUT idxs integer[], OUT priors bytea[], OUT hashes bytea[])
LANGUAGE plpgsql
AS $$
DECLARE
    e jsonb;
    c chips.chits;
    v_doc jsonb;
    v_idx integer;
    v_hash bytea;
    v_here bytea;
    v_had integer;         -- the chain's length in the table
    v_len integer;         -- and with the places taken so far
    v_tip bytea;
BEGIN
    ids := '{}'; idxs := '{}'; priors := '{}'; hashes := '{}';
    IF t.side <> 'stock' THEN
        RAISE EXCEPTION 'only the foil half orders the chain of tally %', t.tally_uuid USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.jsonb_typeof(p_chits) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'a chain update of tally % carries no chits', t.tally_uuid USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM chips.tallies x WHERE x.id = t.id;
    v_had := t.chain_len;
    v_len := t.chain_len;
    v_tip := chips._chain_tip(t);
    FOR e IN SELECT x.value FROM pg_catalog.jsonb_array_elements(p_chits) x
             ORDER BY (x.value->>'index')::integer LOOP
        v_idx := (e->>'index')::integer;
        IF v_idx <= v_len THEN
            IF v_idx <= v_had THEN
                SELECT y.chain_hash INTO v_here FROM chips.chits y WHERE y.tally_id = t.id AND y.chain_idx = v_idx;
            ELSE
                v_here := hashes[v_idx - v_had];
            END IF;
            IF v_here IS DISTINCT FROM chips.b64url_decode(e->>'hash') THEN
                RAISE EXCEPTION 'the chain of tally % differs from the partner''s at index %', t.tally_uuid, v_idx
                    USING ERRCODE = '55000';
            END IF;
            CONTINUE;
        END IF;
        IF v_idx > v_len + 1 THEN
            -- a gap: ask for everything after what we have
            PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
                pg_catalog.jsonb_build_object('cmd', 'nak', 'tally', t.tally_uuid, 'index', v_len));
            RETURN;
        END IF;
        v_doc := chips.chit_doc_check(e->'chit');
        SELECT * INTO c FROM chips.chits y
        WHERE y.tally_id = t.id AND y.chit_uuid = (v_doc->>'uuid')::uuid FOR UPDATE;
        IF NOT FOUND AND v_doc->>'type' = 'lift' THEN
            -- a lift chit this half never took part in: no lift moves value without the
            -- holder's site (sql/lifts.sql)
            RAISE EXCEPTION 'lift chit % of tally % is not known here', v_doc->>'uuid', t.tally_uuid
                USING ERRCODE = '55000';
        ELSIF FOUND AND c.chit_type = 'lift' AND c.status = 'pend' THEN
            -- the lift is not decided here yet: settling it asks again (nak)
            UPDATE chips.tallies x SET chain_seen = greatest(x.chain_seen, (
                SELECT max((y.value->>'index')::integer) FROM pg_catalog.jsonb_array_elements(p_chits) y))
            WHERE x.id = t.id;
            EXIT;
        ELSIF NOT FOUND THEN
            c := chips._chit_insert(t, v_doc, 'good', e->>'sign');
            PERFORM chips._chit_effects(t.id, c);
        ELSIF c.status <> 'good' THEN
            IF chips.canonical_json(chips._chit_doc(c, t.tally_uuid)) <> chips.canonical_json(v_doc) THEN
                RAISE EXCEPTION 'chit % differs from the partner''s', c.chit_uuid USING ERRCODE = '22023';
            END IF;
            UPDATE chips.chits y SET status = 'good', signature = e->>'sign' WHERE y.id = c.id RETURNING * INTO c;
            PERFORM chips._chit_effects(t.id, c);
        END IF;
        v_hash := chips.chit_chain_hash(chips._chit_doc(c, t.tally_uuid), v_idx, v_tip, c.signature);
        IF v_hash <> chips.b64url_decode(e->>'hash') THEN
            RAISE EXCEPTION 'chit % hashes differently here at index % of tally %', c.chit_uuid, v_idx, t.tally_uuid
                USING ERRCODE = '55000';
        END IF;
        ids := ids || c.id;
        idxs := idxs || v_idx;
        priors := priors || v_tip;
        hashes := hashes || v_hash;
        v_len := v_idx;
        v_tip := v_hash;
    END LOOP;
    ack := pg_catalog.jsonb_build_object('tally', t.tally_uuid, 'index', v_len,
                                         'hash', chips.b64url_encode(v_tip));
END
$$;

-- Chain entries into their places (chips._chain_upd's): chit `p_ids[k]` at `p_idxs[k]` after
-- `p_priors[k]`, hashing to `p_hashes[k]`; the chits trigger moves each half's chain tip.
CREATE FUNCTION chips._chain_write(p_ids bigint[], p_idxs integer[], p_priors bytea[], p_hashes bytea[])
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.cardinality(p_ids) > 0 THEN    -- (the trigger runs even for no row)
        UPDATE chips.chits y SET chain_idx = u.i, chain_prev = u.p, chain_hash = u.h
        FROM ROWS FROM (pg_catalog.unnest(p_ids), pg_catalog.unnest(p_idxs), pg_catalog.unnest(p_priors),
                        pg_catalog.unnest(p_hashes)) u(id, i, p, h)
        WHERE y.id = u.id;
    END IF;
END
$$;

-- The foil half `t` hears that the stock half chained up to `p_idx`, ending in `p_hash`.
CREATE FUNCTION chips._chain_ack(t chips.tallies, p_idx integer, p_hash text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_here bytea;
BEGIN
    IF t.side <> 'foil' OR p_idx IS NULL OR p_idx > t.chain_len OR p_idx <= t.chain_conf THEN
        RETURN 'ignored';
    END IF;
    SELECT coalesce((SELECT y.chain_hash FROM chips.chits y WHERE y.tally_id = t.id AND y.chain_idx = p_idx),
                    CASE WHEN p_idx = 0 THEN t.digest END) INTO v_here;
    IF v_here IS DISTINCT FROM chips.b64url_decode(p_hash) THEN
        RAISE EXCEPTION 'the partner''s chain of tally % differs at index %', t.tally_uuid, p_idx
            USING ERRCODE = '55000';
    END IF;
    UPDATE chips.tallies x SET chain_conf = p_idx WHERE x.id = t.id;
    -- more to confirm and no update on its way (the last was cut at the size limit): the next
    IF p_idx < t.chain_len AND NOT chips._chain_pending(t) THEN
        PERFORM chips._chain_send(t.id);
    END IF;
    RETURN 'ack';
END
$$;

-- Chain updates of many tallies with one partner site in one message each way (a lift or a
-- clearing round settles thousands of tallies at once; one message per tally would be most of
-- its cost): `{cmd: upd, tallies: [{tally, chits}]}` from the foil halves' site, answered by
-- `{cmd: ack, tallies: [{tally, index, hash}]}`. Each tally's entries and acknowledgement are
-- those of chit/chain; site to site (cuid `_site`), each tally one this pair of sites shares.
CREATE FUNCTION chips._recv_chains(msg jsonb) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    x jsonb;
    t chips.tallies;
    u record;
    v_acks jsonb := '[]';
    v_naked bigint[] := '{}';
    v_ids bigint[] := '{}';
    v_idxs integer[] := '{}';
    v_priors bytea[] := '{}';
    v_hashes bytea[] := '{}';
BEGIN
    IF msg->'object'->>'cmd' NOT IN ('upd', 'ack', 'nak')
       OR pg_catalog.jsonb_typeof(msg->'object'->'tallies') IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'chain updates are {cmd: upd, ack or nak, tallies: [...]}' USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM chips.tallies y
    WHERE y.tally_uuid IN (SELECT (z.value->>'tally')::uuid FROM pg_catalog.jsonb_array_elements(msg->'object'->'tallies') z)
    ORDER BY y.id FOR UPDATE;
    FOR x IN SELECT z.value FROM pg_catalog.jsonb_array_elements(msg->'object'->'tallies') z LOOP
        SELECT * INTO t FROM chips.tallies y
        WHERE y.tally_uuid = (x->>'tally')::uuid AND y.part_ent IS NULL
          AND y.part_cert->'chad'->>'agent' = msg->'from'->>'agent'
          AND y.hold_cert->'chad'->>'agent' = msg->'to'->>'agent';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no tally % here with agent %', x->>'tally', msg->'from'->>'agent'
                USING ERRCODE = '42704';
        END IF;
        IF t.status NOT IN ('open', 'closing', 'closed') THEN
            RAISE EXCEPTION 'tally % is not open here yet', t.tally_uuid USING ERRCODE = '55000';
        END IF;
        IF msg->'object'->>'cmd' = 'ack' THEN
            PERFORM chips._chain_ack(t, (x->>'index')::integer, x->>'hash');
        ELSIF msg->'object'->>'cmd' = 'nak' THEN
            -- as chit/chain nak, the sends gathered below
            IF t.side = 'foil' THEN
                UPDATE chips.tallies y SET chain_conf = least(y.chain_conf, (x->>'index')::integer)
                WHERE y.id = t.id;
                v_naked := v_naked || t.id;
            END IF;
        ELSE
            SELECT * INTO u FROM chips._chain_upd(t, x->'chits');
            v_ids := v_ids || u.ids;
            v_idxs := v_idxs || u.idxs;
            v_priors := v_priors || u.priors;
            v_hashes := v_hashes || u.hashes;
            IF u.ack IS NOT NULL THEN
                v_acks := v_acks || pg_catalog.jsonb_build_array(u.ack);
            END IF;
        END IF;
    END LOOP;
    -- every tally's entries into their places at once
    PERFORM chips._chain_write(v_ids, v_idxs, v_priors, v_hashes);
    PERFORM chips._chains_send(v_naked);
    -- the acknowledgements, about 300 to a message
    PERFORM chips._send(msg->'to', msg->'from', 'chit', 'chains',
                        pg_catalog.jsonb_build_object('cmd', 'ack', 'tallies', pg_catalog.jsonb_agg(a.v ORDER BY a.n)))
    FROM pg_catalog.jsonb_array_elements(v_acks) WITH ORDINALITY a(v, n)
    GROUP BY (a.n - 1) / 300 ORDER BY (a.n - 1) / 300;
    RETURN msg->'object'->>'cmd';
END
$$;

-- The foil halves `p_ids` (of tallies with other sites) send their partners every chain entry
-- not confirmed yet, gathered per partner site (chit/chains) into messages of at most about
-- chips._max_chain_batch_bytes() (each tally's share at most half of it; the ack brings the
-- rest, as for chit/chain).
CREATE FUNCTION chips._chains_send(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM chips._send(pg_catalog.jsonb_build_object('cuid', '_site', 'agent', m.me), chips._site_address(m.peer),
                        'chit', 'chains', pg_catalog.jsonb_build_object('cmd', 'upd', 'tallies', m.tallies))
    FROM (SELECT s.me, s.peer, pg_catalog.jsonb_agg(s.item ORDER BY s.tally_uuid) AS tallies
          FROM (SELECT i.*, pg_catalog.sum(pg_catalog.octet_length(i.item::text))
                                OVER (PARTITION BY i.me, i.peer ORDER BY i.tally_uuid) AS upto
                FROM (SELECT e.me, e.peer, e.tally_uuid,
                             pg_catalog.jsonb_build_object('tally', e.tally_uuid,
                                 'chits', pg_catalog.jsonb_agg(e.entry ORDER BY e.idx)) AS item
                      FROM (SELECT t.tally_uuid, t.hold_cert->'chad'->>'agent' AS me,
                                   t.part_cert->'chad'->>'agent' AS peer, t.chain_conf, c.chain_idx AS idx,
                                   x.entry, pg_catalog.sum(pg_catalog.octet_length(x.entry::text))
                                                OVER (PARTITION BY t.id ORDER BY c.chain_idx) AS upto
                            FROM chips.tallies t
                            JOIN chips.chits c ON c.tally_id = t.id AND c.chain_idx > t.chain_conf,
                                 LATERAL (SELECT pg_catalog.jsonb_build_object(
                                     'index', c.chain_idx, 'hash', chips.b64url_encode(c.chain_hash),
                                     'chit', chips._chit_doc(c, t.tally_uuid), 'sign', c.signature) AS entry) x
                            WHERE t.id = ANY (p_ids) AND t.side = 'foil' AND t.part_ent IS NULL
                              AND t.chain_len > t.chain_conf) e
                      WHERE e.upto <= chips._max_chain_batch_bytes() / 2 OR e.idx = e.chain_conf + 1
                      GROUP BY e.me, e.peer, e.tally_uuid) i) s
          GROUP BY s.me, s.peer, (s.upto - 1) / (chips._max_chain_batch_bytes() / 2)) m
    ORDER BY m.peer;
END
$$;

------------------------------------------------------------------------------------------------
-- Repair and audit
------------------------------------------------------------------------------------------------

-- Re-send what a half's partner may be missing: the foil half its unconfirmed chain entries,
-- the stock half its own good chits not chained yet and a nak asking for what follows its
-- chain. For the sidecar to call now and then (and after a partner restored a backup).
-- Returns the number of tally halves that sent something.
CREATE FUNCTION chips.chain_sync(tally uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    t chips.tallies;
    c chips.chits;
    n integer := 0;
BEGIN
    -- only the halves with something to send (a site of 300,000 tallies has a few), and not
    -- one a transaction holds now: it is being changed, and its change sends what it needs
    -- (locking them all made every settle and payment wait for the sync, and the sender with it)
    -- (a tally between two users here chains both halves in one transaction: nothing to sync;
    -- syncing it sent its foil half's entries to its own stock half, locking the stock half
    -- after the foil half, against the id order every payment locks in: a deadlock)
    FOR t IN SELECT * FROM chips.tallies x
             WHERE x.status IN ('open', 'closing', 'closed') AND x.part_ent IS NULL
               AND (chain_sync.tally IS NULL OR x.tally_uuid = chain_sync.tally)
               AND ((x.side = 'foil' AND x.chain_len > x.chain_conf)
                    OR (x.side = 'stock' AND EXISTS (SELECT 1 FROM chips.chits y
                                                     WHERE y.tally_id = x.id AND y.status = 'good'
                                                       AND y.chain_idx IS NULL)))
             ORDER BY x.id FOR UPDATE SKIP LOCKED LOOP
        -- a link that is slow or down already has messages queued: resending would pile up
        -- copies behind them (it resyncs once they are through)
        CONTINUE WHEN t.part_ent IS NULL AND chips._chain_pending(t);
        IF t.side = 'foil' AND t.chain_len > t.chain_conf THEN
            PERFORM chips._chain_send(t.id);
            n := n + 1;
        ELSIF t.side = 'stock' AND EXISTS (SELECT 1 FROM chips.chits y
                                           WHERE y.tally_id = t.id AND y.status = 'good' AND y.chain_idx IS NULL) THEN
            -- its own chits (a lift chit is not one: the lift's own messages carry it, and the
            -- partner refuses it as a chit, which would stop every later message to that site)
            FOR c IN SELECT * FROM chips.chits y
                     WHERE y.tally_id = t.id AND y.status = 'good' AND y.chain_idx IS NULL AND y.issuer = t.side
                       AND y.chit_type <> 'lift'
                     ORDER BY y.id LOOP
                PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'good',
                    pg_catalog.jsonb_build_object('chit', chips._chit_doc(c, t.tally_uuid), 'sign', c.signature));
            END LOOP;
            PERFORM chips._send(t.hold_cert->'chad', t.part_cert->'chad', 'chit', 'chain',
                pg_catalog.jsonb_build_object('cmd', 'nak', 'tally', t.tally_uuid, 'index', t.chain_len));
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- Check a tally half against everything it caches: balances against the sum of its chits, every
-- chain link and hash, every signature, the tally digest. One row per check; all ok = true for a
-- sound half.
CREATE FUNCTION chips.tally_audit(tally uuid)
RETURNS TABLE (ent text, side text, check_name text, ok boolean, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = chips, pg_catalog, pg_temp
AS $$
DECLARE
    t chips.tallies;
    c chips.chits;
    v_good bigint;
    v_pend bigint;
    v_hold bigint;
    v_prior bytea;
    v_bad text;
    v_n integer;
BEGIN
    FOR t IN SELECT * FROM chips.tallies x WHERE x.tally_uuid = tally_audit.tally ORDER BY x.id LOOP
        ent := t.ent;
        side := t.side;
        SELECT coalesce(sum(y.value) FILTER (WHERE y.status = 'good'), 0),
               coalesce(sum(y.value) FILTER (WHERE y.status IN ('good', 'pend')), 0),
               coalesce(sum(chips._hold(y.status, y.chit_type, y.value)), 0)
        INTO v_good, v_pend, v_hold FROM chips.chits y WHERE y.tally_id = t.id;
        check_name := 'balance';
        ok := v_good = t.net_good AND v_pend = t.net_pend AND v_hold = t.net_hold;
        detail := pg_catalog.format('cached good %s pend %s, chits sum to good %s pend %s',
                                    t.net_good, t.net_pend, v_good, v_pend)
                  || CASE WHEN v_hold = t.net_hold THEN '' ELSE
                         pg_catalog.format(', held back %s cached, %s in the chits', t.net_hold, v_hold) END;
        RETURN NEXT;

        check_name := 'digest';
        ok := t.status NOT IN ('open', 'closing', 'closed') OR t.digest = chips.json_digest(chips._tally_doc(t));
        detail := CASE WHEN ok THEN 'tally document hashes to its digest' ELSE 'tally document does not hash to its digest' END;
        IF ok AND t.status IN ('open', 'closing', 'closed') THEN
            BEGIN
                PERFORM chips._check_signed(t);
            EXCEPTION WHEN OTHERS THEN
                ok := false; detail := SQLERRM;
            END;
        END IF;
        RETURN NEXT;

        check_name := 'chain'; ok := true; detail := NULL;
        v_prior := t.digest;
        v_n := 0;
        FOR c IN SELECT * FROM chips.chits y WHERE y.tally_id = t.id AND y.chain_idx IS NOT NULL ORDER BY y.chain_idx LOOP
            v_n := v_n + 1;
            IF c.chain_idx <> v_n OR c.chain_prev IS DISTINCT FROM v_prior
               OR c.chain_hash <> chips.chit_chain_hash(chips._chit_doc(c, t.tally_uuid), c.chain_idx, c.chain_prev, c.signature) THEN
                ok := false; detail := pg_catalog.format('block %s (chit %s) does not link or hash', c.chain_idx, c.chit_uuid);
                EXIT;
            END IF;
            v_prior := c.chain_hash;
        END LOOP;
        IF ok AND (v_n <> t.chain_len OR chips._chain_tip(t) IS DISTINCT FROM v_prior) THEN
            ok := false; detail := pg_catalog.format('the tally says %s blocks, the chain has %s', t.chain_len, v_n);
        END IF;
        detail := coalesce(detail, v_n || ' blocks link and hash');
        RETURN NEXT;

        check_name := 'signatures'; v_bad := NULL;
        FOR c IN SELECT * FROM chips.chits y WHERE y.tally_id = t.id AND y.status = 'good' AND y.chit_type <> 'lift' LOOP
            IF NOT chips.verify_signature(chips._key_of(t, c.issuer), chips._chit_doc(c, t.tally_uuid), c.signature) THEN
                v_bad := c.chit_uuid::text;
                EXIT;
            END IF;
        END LOOP;
        ok := v_bad IS NULL;
        detail := coalesce('chit ' || v_bad || ' is not signed by its issuer', 'every good chit is signed by its issuer');
        RETURN NEXT;
    END LOOP;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tally %', tally_audit.tally USING ERRCODE = '42704';
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Trigger functions
------------------------------------------------------------------------------------------------

-- Chit rules for every writer: the status machine, immutable documents, verified signatures.
CREATE FUNCTION chips._chits_biu() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NOT chips.chit_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'chit % cannot go from % to %', OLD.chit_uuid, OLD.status, NEW.status
                USING ERRCODE = '55000';
        END IF;
        IF (NEW.id, NEW.tally_id, NEW.chit_uuid, NEW.chit_type, NEW.issuer, NEW.units, NEW.reference,
            NEW.memo, NEW.chit_date, NEW.value) IS DISTINCT FROM
           (OLD.id, OLD.tally_id, OLD.chit_uuid, OLD.chit_type, OLD.issuer, OLD.units, OLD.reference,
            OLD.memo, OLD.chit_date, OLD.value)
           OR (OLD.lift_id IS NOT NULL AND NEW.lift_id IS DISTINCT FROM OLD.lift_id)
           OR (OLD.signature IS NOT NULL AND NEW.signature IS DISTINCT FROM OLD.signature)
           OR (OLD.chain_idx IS NOT NULL AND (NEW.chain_idx, NEW.chain_prev, NEW.chain_hash)
                                             IS DISTINCT FROM (OLD.chain_idx, OLD.chain_prev, OLD.chain_hash)) THEN
            RAISE EXCEPTION 'chit % cannot change once written', OLD.chit_uuid USING ERRCODE = '55000';
        END IF;
    END IF;
    IF NEW.status = 'good' AND NEW.chit_type <> 'lift'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'good') THEN
        IF NEW.signature IS NULL OR NEW.signature = '' THEN
            RAISE EXCEPTION 'chit % carries no signature', NEW.chit_uuid USING ERRCODE = '28000';
        END IF;
        PERFORM chips._chit_verify(NEW, x) FROM chips.tallies x WHERE x.id = NEW.tally_id;
    END IF;
    NEW.updated := pg_catalog.now();
    RETURN NEW;
END
$$;

-- After every statement that writes chits, once per statement and set-based whatever the
-- number of rows (a payment's one chit and a clearing pass's hundred thousand take the same
-- path): balances, chain tips, the holders' events, invoice notes. Two trigger functions, one
-- per statement kind, because a trigger sees its rows as transition tables of its own: chits_ins
-- (AFTER INSERT, new_chits) and chits_upd (AFTER UPDATE, old_chits and new_chits; an UPDATE
-- counts as the new row minus the old one). The rules:
--
-- Balances in O(1) per chit: each tally's balances move by the change of its chits'
-- contributions (good chits to net_good, good and pending ones to net_pend); chits that take
-- their place in the chain move the tally's chain tip to the last of them (blocks are only ever
-- appended), in the same UPDATE.
--
-- Events: every new chit and every change of status goes to the holder's event stream
-- (sql/access.sql), one event per chit, except lift chits, which make one event per holder and
-- lift (a clearing pass that moves ten of a user's tallies tells them once). Rows loaded by COPY
-- (pg_restore) make no events: the restored history carries its own.
--
-- An invoice waiting for the holder's signature is also NOTIFYed (the agent hears of everything
-- it must send through the outbox). Payments notify nobody: a NOTIFY holds a cluster-wide lock
-- from pre-commit to the end of the commit, which would serialize every payment's commit.
CREATE FUNCTION chips._chits_ins() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chips.tallies x SET net_good = x.net_good + d.good, net_pend = x.net_pend + d.pend,
        net_hold = x.net_hold + d.hold,
        chain_len = coalesce(d.idx, x.chain_len),
        chain_tip = CASE WHEN d.idx IS NULL THEN x.chain_tip ELSE d.hash END,
        updated = pg_catalog.now()
    FROM (SELECT DISTINCT ON (n.tally_id) n.tally_id,
                 sum(chips._good(n.status, n.value)) OVER w AS good,
                 sum(chips._pend(n.status, n.value)) OVER w AS pend,
                 sum(chips._hold(n.status, n.chit_type, n.value)) OVER w AS hold,
                 n.chain_idx AS idx, n.chain_hash AS hash
          FROM new_chits n WINDOW w AS (PARTITION BY n.tally_id)
          ORDER BY n.tally_id, n.chain_idx DESC NULLS LAST) d
    WHERE x.id = d.tally_id AND (d.good <> 0 OR d.pend <> 0 OR d.idx IS NOT NULL);
    IF chips._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM chips._chit_invoiced(t.ent, t.tally_uuid, n.chit_uuid, n.units)
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id AND t.side = n.issuer
    WHERE n.status = 'pend' AND n.chit_type <> 'lift';
    INSERT INTO chips.events_pending (ent, kind, chit, status, fire)
    SELECT t.ent, 'chit', n.id, n.status, pg_catalog.row_number() OVER (ORDER BY n.id) = 1
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id
    WHERE n.lift_id IS NULL ORDER BY n.id;
    INSERT INTO chips.events_pending (ent, kind, body, fire)
    SELECT t.ent, 'lift', chips._lift_event(l.lift_uuid, n.status, pg_catalog.count(*)::integer,
               pg_catalog.sum(n.units), pg_catalog.sum(chips._chit_change(t.side, n.issuer, n.units)),
               pg_catalog.min(t.tally_uuid::text), pg_catalog.min(n.chit_uuid::text)),
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(n.id)) = 1
    FROM new_chits n JOIN chips.tallies t ON t.id = n.tally_id JOIN chips.lifts l ON l.id = n.lift_id
    GROUP BY t.ent, l.lift_uuid, n.status ORDER BY min(n.id);
    RETURN NULL;
END
$$;

CREATE FUNCTION chips._chits_upd() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chips.tallies x SET net_good = x.net_good + d.good, net_pend = x.net_pend + d.pend,
        net_hold = x.net_hold + d.hold,
        chain_len = coalesce(d.idx, x.chain_len),
        chain_tip = CASE WHEN d.idx IS NULL THEN x.chain_tip ELSE d.hash END,
        updated = pg_catalog.now()
    FROM (SELECT DISTINCT ON (n.tally_id) n.tally_id,
                 sum(chips._good(n.status, n.value) - chips._good(o.status, o.value)) OVER w AS good,
                 sum(chips._pend(n.status, n.value) - chips._pend(o.status, o.value)) OVER w AS pend,
                 sum(chips._hold(n.status, n.chit_type, n.value)
                     - chips._hold(o.status, o.chit_type, o.value)) OVER w AS hold,
                 CASE WHEN o.chain_idx IS NULL THEN n.chain_idx END AS idx, n.chain_hash AS hash
          FROM new_chits n JOIN old_chits o ON o.id = n.id WINDOW w AS (PARTITION BY n.tally_id)
          ORDER BY n.tally_id, CASE WHEN o.chain_idx IS NULL THEN n.chain_idx END DESC NULLS LAST) d
    WHERE x.id = d.tally_id AND (d.good <> 0 OR d.pend <> 0 OR d.idx IS NOT NULL);
    IF chips._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM chips._chit_invoiced(t.ent, t.tally_uuid, n.chit_uuid, n.units)
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id AND t.side = n.issuer
    WHERE n.status = 'pend' AND n.chit_type <> 'lift' AND o.status <> 'pend';
    INSERT INTO chips.events_pending (ent, kind, chit, status, fire)
    SELECT t.ent, 'chit', n.id, n.status, pg_catalog.row_number() OVER (ORDER BY n.id) = 1
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id
    WHERE n.lift_id IS NULL AND o.status <> n.status ORDER BY n.id;
    INSERT INTO chips.events_pending (ent, kind, body, fire)
    SELECT t.ent, 'lift', chips._lift_event(l.lift_uuid, n.status, pg_catalog.count(*)::integer,
               pg_catalog.sum(n.units), pg_catalog.sum(chips._chit_change(t.side, n.issuer, n.units)),
               pg_catalog.min(t.tally_uuid::text), pg_catalog.min(n.chit_uuid::text)),
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(n.id)) = 1
    FROM new_chits n JOIN old_chits o ON o.id = n.id JOIN chips.tallies t ON t.id = n.tally_id
    JOIN chips.lifts l ON l.id = n.lift_id
    WHERE o.status <> n.status
    GROUP BY t.ent, l.lift_uuid, n.status ORDER BY min(n.id);
    RETURN NULL;
END
$$;

-- What a chit of `p_status` and `p_value` adds to its half's net_good, and to its net_pend.
CREATE FUNCTION chips._good(p_status text, p_value bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_status = 'good' THEN p_value ELSE 0 END $$;

CREATE FUNCTION chips._pend(p_status text, p_value bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_status IN ('good', 'pend') THEN p_value ELSE 0 END $$;

-- What a chit adds to its half's net_hold: a pending lift chit that would lower the balance (a
-- lift reserved, not decided yet) is held back from what the holder may pay.
CREATE FUNCTION chips._hold(p_status text, p_type text, p_value bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_status = 'pend' AND p_type = 'lift' AND p_value < 0 THEN p_value ELSE 0 END $$;

-- Whether the statement running is a COPY (pg_restore), so restored rows make no events:
-- chips._restoring() (extension/src/events.rs; a SQL function took 23 us a call, a tenth of
-- a payment's trigger time).

-- The holder of half `t` must sign (or decline) invoice `p_chit`.
CREATE FUNCTION chips._chit_invoiced(p_ent text, p_tally uuid, p_chit uuid, p_units bigint) RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.pg_notify('chips_user_' || p_ent, pg_catalog.json_build_object(
        'target', 'chit', 'tally', p_tally, 'uuid', p_chit, 'status', 'pend', 'units', p_units,
        'action', 'sign')::text)
$$;

-- What a chit does to a half's balance (its sign): chips._chit_change(side, by, units), core's
-- chit::change (extension/src/chit.rs), created before this file.

-- The event of a chit for the holder of half `t`.
CREATE FUNCTION chips._chit_event(t chips.tallies, p_chit uuid, p_type text, p_by text, p_status text,
                                  p_units bigint, p_memo text) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'tally', t.tally_uuid, 'chit', p_chit, 'type', p_type, 'by', p_by, 'status', p_status,
        'units', p_units, 'memo', p_memo, 'change', chips._chit_change(t.side, p_by, p_units))
$$;

-- The event of a lift for one holder: how many of the holder's tallies it moved, their total
-- units and change (a circulation leaves it at 0); for a lift over one tally, that tally and its
-- chit too. What it did to each tally is in chips.lifts_v (lifts_list).
CREATE FUNCTION chips._lift_event(p_lift uuid, p_status text, p_n integer, p_units numeric,
                                  p_change numeric, p_tally text, p_chit text) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object('lift', p_lift, 'status', p_status, 'tallies', p_n,
                                         'units', p_units, 'change', p_change)
           || CASE WHEN p_n = 1 THEN pg_catalog.jsonb_build_object('tally', p_tally, 'chit', p_chit)
                   ELSE '{}' END
$$;
