//! `#[pg_test]`s: the SQL-callable units, each run inside a transaction that is rolled back.

#[pgrx::pg_schema]
mod tests {
    use chips_core::sign::KeyPair;
    use chips_core::tally::{transition_allowed, ALL_STATUSES};
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::json;

    fn one<T: FromDatum + IntoDatum>(q: &str) -> T {
        Spi::get_one::<T>(q)
            .expect("query")
            .expect("non-null result")
    }

    fn one_with<T: FromDatum + IntoDatum>(q: &str, args: &[pgrx::datum::DatumWithOid]) -> T {
        Spi::get_one_with_args::<T>(q, args)
            .expect("query")
            .expect("non-null result")
    }

    /// Runs `call` and asserts it fails with the SQL condition `condition` (e.g.
    /// `invalid_text_representation`): the check happens in PL/pgSQL, so the SQLSTATE is exact.
    fn expect_condition(call: &str, condition: &str) {
        Spi::run(&format!(
            "DO $t$ BEGIN PERFORM {call}; RAISE EXCEPTION 'no error from: %', $c${call}$c$;
             EXCEPTION WHEN {condition} THEN NULL; END $t$"
        ))
        .unwrap_or_else(|e| panic!("{call}: expected {condition}, got {e}"));
    }

    #[pg_test]
    fn document_dates_are_utc_milliseconds() {
        // chips._iso (core's iso_millis) writes what PostgreSQL's own to_char does, milliseconds
        // truncated, in UTC whatever the session's time zone
        Spi::run("SET LOCAL TimeZone = 'Asia/Kolkata'").unwrap();
        let same: bool = one(
            "SELECT bool_and(chips._iso(ts) = to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
             FROM (SELECT '2026-11-21T09:12:25.678901Z'::timestamptz + n * interval '37 minutes 1.000999 seconds' AS ts
                   FROM generate_series(-5000, 5000) n) x",
        );
        assert!(same);
        let epoch: String = one("SELECT chips._iso('1970-01-01T00:00:00Z')");
        assert_eq!(epoch, "1970-01-01T00:00:00.000Z");
    }

    #[pg_test]
    fn every_peer_message_has_its_receiver_and_no_other_is_applied() {
        // core's table is the one list of messages: each receiver it names exists in SQL
        for chips_core::peer::Message {
            target,
            action,
            receiver,
            ..
        } in chips_core::peer::MESSAGES
        {
            let exists: bool = one(&format!(
                "SELECT to_regprocedure('chips.{receiver}(jsonb)') IS NOT NULL"
            ));
            assert!(
                exists,
                "{target}/{action}: no function chips.{receiver}(jsonb)"
            );
        }
        expect_condition(
            r#"chips._apply('{"target": "tally", "action": "steal"}')"#,
            "invalid_parameter_value",
        );
    }

    #[pg_test]
    fn the_ways_on_from_a_site_carry_together_what_its_least_cut_allows() {
        // a pays b (10); b pays c (6) and d (5); exits at c (up to 6) and d (up to 9)
        let arcs = "ARRAY['a','b','b'], ARRAY['b','c','d'], ARRAY[10,6,5]::bigint[]";
        let both: i64 = one(&format!(
            "SELECT chips._route_flow({arcs}, 'a', ARRAY['c','d'], ARRAY[6,9]::bigint[])"
        ));
        assert_eq!(both, 10, "the tally a -> b bounds them");
        let one_way: i64 = one(&format!(
            "SELECT chips._route_flow({arcs}, 'a', ARRAY['c'], ARRAY[6]::bigint[])"
        ));
        assert_eq!(one_way, 6);
        // an exit with no bound of its own (the payee): what the ways to it carry
        let payee: i64 = one(&format!(
            "SELECT chips._route_flow({arcs}, 'a', ARRAY['c','d'], ARRAY[NULL,1]::bigint[])"
        ));
        assert_eq!(payee, 7);
        // an exit's holder or the start outside the arcs: nothing moves (no error)
        let none: i64 = one(&format!(
            "SELECT chips._route_flow({arcs}, 'z', ARRAY['c','q'], ARRAY[6,1]::bigint[])"
        ));
        assert_eq!(none, 0);
    }

    #[pg_test(error = "exits and exit capacities must have the same length")]
    fn the_ways_on_need_a_capacity_for_every_exit() {
        Spi::run(
            "SELECT chips._route_flow(ARRAY['a'], ARRAY['b'], ARRAY[1]::bigint[], 'a',
                                      ARRAY['b'], ARRAY[1,2]::bigint[])",
        )
        .unwrap();
    }

    #[pg_test]
    fn canonical_json_sorts_keys_and_normalizes_numbers() {
        let got: String = one(
            r#"SELECT chips.canonical_json('{"b": [1, 2.50, "é\n"], "a": null, "A": true}'::jsonb)"#,
        );
        assert_eq!(got, "{\"A\":true,\"a\":null,\"b\":[1,2.5,\"é\\n\"]}");
    }

    #[pg_test]
    fn json_digest_is_sha256_of_the_canonical_text() {
        // Cross-checked against PostgreSQL's own sha256().
        let same: bool = one(
            r#"WITH j(doc) AS (VALUES ('{"z": 1, "a": {"y": [true, null]}}'::jsonb))
               SELECT chips.json_digest(doc) = sha256(convert_to(chips.canonical_json(doc), 'UTF8')) FROM j"#,
        );
        assert!(same);
    }

    #[pg_test]
    fn b64url_round_trip_and_errors() {
        let back: Vec<u8> =
            one(r"SELECT chips.b64url_decode(chips.b64url_encode('\xfbff00'::bytea))");
        assert_eq!(back, vec![0xfb, 0xff, 0x00]);
        let text: String = one(r"SELECT chips.b64url_encode('\xfbff'::bytea)");
        assert_eq!(text, "-_8");
        expect_condition("chips.b64url_decode('@@')", "invalid_text_representation");
        expect_condition("chips.b64url_decode('Zg==')", "invalid_text_representation");
    }

    #[pg_test]
    fn signatures_verify_inside_the_database() {
        let kp = KeyPair::from_phrase("pg_test");
        let doc = json!({"units": 1500, "memo": "lunch"});
        let sig = kp.sign_json(&doc).unwrap();
        let q = "SELECT chips.verify_signature($1, $2, $3)";
        let ok: bool = one_with(
            q,
            &[
                kp.public_b64().into(),
                JsonB(doc.clone()).into(),
                sig.clone().into(),
            ],
        );
        assert!(ok);
        let other = json!({"units": 15000, "memo": "lunch"});
        let ok: bool = one_with(
            q,
            &[kp.public_b64().into(), JsonB(other).into(), sig.into()],
        );
        assert!(!ok, "a signature over another document does not verify");
        expect_condition(
            &format!(
                "chips.verify_signature('{}', '{{}}', 'short')",
                kp.public_b64()
            ),
            "invalid_text_representation",
        );
    }

    #[pg_test]
    fn transition_table_is_core_s() {
        for from in ALL_STATUSES {
            for to in ALL_STATUSES {
                let q = format!("SELECT chips.tally_transition_allowed('{from}', '{to}')");
                assert_eq!(
                    one::<bool>(&q),
                    transition_allowed(from, to),
                    "{from} -> {to}"
                );
            }
        }
        expect_condition(
            "chips.tally_transition_allowed('open', 'opened')",
            "invalid_parameter_value",
        );
        let s: String = one("SELECT chips.tally_state('offer', false, true, true)");
        assert_eq!(s, "P.offer");
    }

    #[pg_test]
    fn value_checks_raise_invalid_parameter_value() {
        for call in [
            "chips.trading_check(3, 2, 0, 0)",
            "chips.trading_check(0, 0, 1.5, 0)",
            "chips.trading_check(0, 0, -0.5, 0.2)",
            r#"chips.terms_check('{"limit": -1}')"#,
            r#"chips.cert_check('{"name": "x"}')"#,
            r#"chips.tally_doc_check('{"version": 1}')"#,
            "chips.address_parse('nobody')",
            "chips.cuid_check('has space')",
            "chips.agent_check('short')",
        ] {
            expect_condition(call, "invalid_parameter_value");
        }
        let ok: bool = one("SELECT chips.trading_check(3, 7, 0.02, 0.04)");
        assert!(ok);
    }

    /// The whole local lifecycle through the user API, acting as each user with SET LOCAL ROLE.
    #[pg_test]
    fn local_tally_lifecycle_through_the_user_api() {
        let site = KeyPair::from_phrase("pg_test site");
        let (ann_key, bob_key) = (KeyPair::from_phrase("ann"), KeyPair::from_phrase("bob"));
        Spi::run_with_args(
            "SELECT chips.agent_register($1, '127.0.0.1', 65430, true)",
            &[site.public_b64().into()],
        )
        .unwrap();
        Spi::run(r#"SELECT chips.contract_add('{"title": "Test contract", "text": "IOUs are honoured."}')"#).unwrap();
        let ann: String = one_with(
            "SELECT chips.user_create('Ann', 'ann', $1)",
            &[ann_key.public_b64().into()],
        );
        let bob: String = one_with(
            "SELECT chips.user_create('Bob', 'bob', $1)",
            &[bob_key.public_b64().into()],
        );
        let role = |ent: &str| -> String {
            one_with(
                "SELECT username::text FROM chips.users WHERE ent = $1",
                &[ent.into()],
            )
        };
        let (ann_role, bob_role) = (role(&ann), role(&bob));
        let act_as = |r: &str| Spi::run(&format!("SET LOCAL ROLE \"{r}\"")).unwrap();

        act_as(&ann_role);
        let t: pgrx::Uuid =
            one(r#"SELECT chips.tally_create('stock', hold_terms => '{"limit": 25000}')"#);
        let ticket: JsonB = one_with("SELECT chips.ticket_create($1)", &[t.into()]);
        act_as(&bob_role);
        let got: pgrx::Uuid = one_with("SELECT chips.ticket_redeem($1)", &[ticket.into()]);
        assert_eq!(got, t);
        act_as(&ann_role);
        let doc: JsonB = one_with("SELECT chips.tally_json($1)", &[t.into()]);
        let state: String = one_with(
            "SELECT chips.tally_offer($1, $2)",
            &[t.into(), ann_key.sign_json(&doc.0).unwrap().into()],
        );
        assert_eq!(state, "H.offer");
        act_as(&bob_role);
        let state: String = one_with(
            "SELECT chips.tally_accept($1, $2)",
            &[t.into(), bob_key.sign_json(&doc.0).unwrap().into()],
        );
        assert_eq!(state, "open");
        let visible: i64 = one("SELECT count(*) FROM chips.tallies");
        assert_eq!(visible, 1, "Bob sees only his half");
        Spi::run("RESET ROLE").unwrap();
        let same: bool = one_with(
            "SELECT count(DISTINCT digest) = 1 AND count(*) = 2 AND bool_and(status = 'open')
             FROM chips.tallies WHERE tally_uuid = $1",
            &[t.into()],
        );
        assert!(same, "both halves open with one digest");
    }

    #[pg_test]
    fn chit_units_through_sql() {
        use chips_core::chit::{chit_transition_allowed, ALL_CHIT_STATUSES};
        for from in ALL_CHIT_STATUSES {
            for to in ALL_CHIT_STATUSES {
                let q = format!("SELECT chips.chit_transition_allowed('{from}', '{to}')");
                assert_eq!(
                    one::<bool>(&q),
                    chit_transition_allowed(from, to),
                    "{from} -> {to}"
                );
            }
        }
        let doc: JsonB = one(
            "SELECT chips.chit_doc_make('6f2c4b1e-0000-4000-8000-000000000001', 'foil', 'tran',
                '6f2c4b1e-0000-4000-8000-000000000002', 1795252345678, 1500, NULL, 'lunch')",
        );
        assert_eq!(
            doc.0,
            json!({"tally": "6f2c4b1e-0000-4000-8000-000000000001", "by": "foil", "type": "tran",
                   "uuid": "6f2c4b1e-0000-4000-8000-000000000002", "date": "2026-11-21T09:12:25.678Z",
                   "units": 1500, "memo": "lunch"})
        );
        let v: i64 = one_with(
            "SELECT chips.chit_value($1, 'foil')",
            &[JsonB(doc.0.clone()).into()],
        );
        assert_eq!(v, -1500);
        let kp = KeyPair::from_phrase("payer");
        let sig = kp.sign_json(&doc.0).unwrap();
        let ok: bool = one_with(
            "SELECT chips.chit_verify($1, $2, $3)",
            &[
                JsonB(doc.0.clone()).into(),
                kp.public_b64().into(),
                sig.clone().into(),
            ],
        );
        assert!(ok);
        // The chain hash matches core's.
        let prior = [7u8; 32];
        let h: Vec<u8> = one_with(
            "SELECT chips.chit_chain_hash($1, 1, $2, $3)",
            &[
                JsonB(doc.0.clone()).into(),
                prior.to_vec().into(),
                sig.clone().into(),
            ],
        );
        let d = chips_core::chit::ChitDoc::from_json(&doc.0).unwrap();
        assert_eq!(h, d.chain_hash(1, &prior, Some(&sig)).unwrap().to_vec());
        for call in [
            "chips.chit_doc_make('6f2c4b1e-0000-4000-8000-000000000001', 'foil', 'tran', '6f2c4b1e-0000-4000-8000-000000000002', 0, 0, NULL, NULL)",
            "chips.chit_doc_make('6f2c4b1e-0000-4000-8000-000000000001', 'both', 'tran', '6f2c4b1e-0000-4000-8000-000000000002', 0, 5, NULL, NULL)",
            r#"chips.settings_check('{"target": 1, "colour": 2}')"#,
            r#"chips.settings_check('{}')"#,
            "chips.chit_transition_allowed('pend', 'paid')",
        ] {
            expect_condition(call, "invalid_parameter_value");
        }
        expect_condition(
            &format!(
                "chips.chit_verify('{}', '{}', '{}')",
                doc.0,
                KeyPair::from_phrase("other").public_b64(),
                sig
            ),
            "invalid_authorization_specification",
        );
    }

    /// A payment through the user API, inside one transaction: balances, chain, audit.
    #[pg_test]
    fn local_payment_through_the_user_api() {
        let site = KeyPair::from_phrase("pg_test pay site");
        Spi::run_with_args(
            "SELECT chips.agent_register($1, '127.0.0.1', 65430, true)",
            &[site.public_b64().into()],
        )
        .unwrap();
        Spi::run(r#"SELECT chips.contract_add('{"title": "Test contract"}')"#).unwrap();
        let shop: String = one("SELECT chips.user_create('Shop', 'shop', custodial => true)");
        let cust: String = one("SELECT chips.user_create('Cust', 'cust', custodial => true)");
        let role = |ent: &str| -> String {
            one_with(
                "SELECT username::text FROM chips.users WHERE ent = $1",
                &[ent.into()],
            )
        };
        // (as the superuser: once acting as Shop, row-level security hides Cust's user row)
        let (shop, cust) = (role(&shop), role(&cust));
        let act_as = |r: &str| Spi::run(&format!("SET LOCAL ROLE \"{r}\"")).unwrap();
        act_as(&shop);
        let t: pgrx::Uuid =
            one(r#"SELECT chips.tally_create('stock', hold_terms => '{"limit": 1000}')"#);
        let ticket: JsonB = one_with("SELECT chips.ticket_create($1)", &[t.into()]);
        act_as(&cust);
        Spi::run_with_args("SELECT chips.ticket_redeem($1)", &[ticket.into()]).unwrap();
        act_as(&shop);
        Spi::run_with_args("SELECT chips.tally_offer($1)", &[t.into()]).unwrap();
        act_as(&cust);
        Spi::run_with_args("SELECT chips.tally_accept($1)", &[t.into()]).unwrap();
        for units in [400i64, 500] {
            Spi::run_with_args("SELECT chips.pay($1, $2)", &[t.into(), units.into()]).unwrap();
        }
        let (good, len): (Option<i64>, Option<i32>) = Spi::get_two_with_args(
            "SELECT net_good, chain_len FROM chips.tallies WHERE tally_uuid = $1",
            &[t.into()],
        )
        .unwrap();
        assert_eq!((good, len), (Some(-900), Some(2)));
        Spi::run("RESET ROLE").unwrap();
        let bad: i64 = one_with(
            "SELECT count(*) FROM chips.tally_audit($1) WHERE NOT ok",
            &[t.into()],
        );
        assert_eq!(bad, 0);
        let halves: i64 = one_with(
            "SELECT count(DISTINCT (net_good, chain_tip)) FROM chips.tallies WHERE tally_uuid = $1",
            &[t.into()],
        );
        assert_eq!(halves, 2, "opposite balances, same chain tip");
        let tips: i64 = one_with(
            "SELECT count(DISTINCT chain_tip) FROM chips.tallies WHERE tally_uuid = $1",
            &[t.into()],
        );
        assert_eq!(tips, 1);

        // Each user's events, numbered at commit (forced here: the test never commits):
        // 1, 2, 3... per user in order, every one numbered, heads at the last number.
        Spi::run("SET CONSTRAINTS chips.events_number IMMEDIATE").unwrap();
        let waiting: i64 = one("SELECT count(*) FROM chips.events_pending");
        assert_eq!(waiting, 0);
        let in_order: bool = one(
            "SELECT bool_and(seq = n) FROM (SELECT seq, row_number() OVER (PARTITION BY ent ORDER BY seq) AS n
             FROM chips.events) x",
        );
        assert!(in_order);
        let heads: bool = one(
            "SELECT bool_and(h.seq = (SELECT max(e.seq) FROM chips.events e WHERE e.ent = h.ent))
             FROM chips.event_heads h",
        );
        assert!(heads);
        let shop_changes: String = one(
            "SELECT string_agg(e.body->>'change', ',' ORDER BY e.seq) FROM chips.events_v e
             JOIN chips.users u ON u.ent = e.ent WHERE u.cuid = 'shop' AND e.kind = 'chit'",
        );
        assert_eq!(shop_changes, "400,500");
    }
}
