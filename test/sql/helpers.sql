-- The helpers anyone may call (docs/sql-api.md, "Helpers anyone may call"): pure functions,
-- executable by PUBLIC, in a schema whose USAGE the chips roles have (and any role a DBA grants
-- it to); each happy path and the errors the page documents.
CREATE EXTENSION chips;
\set VERBOSITY terse
-- as a role with no chips grants at all
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chips_regress_anyone') THEN
        CREATE ROLE chips_regress_anyone;
    END IF;
END $$;
SET ROLE chips_regress_anyone;
SELECT chips.canonical_json('{}');
RESET ROLE;
GRANT USAGE ON SCHEMA chips TO chips_regress_anyone;
SET ROLE chips_regress_anyone;
SELECT chips.canonical_json('{"b": [1, 2.50], "a": "é"}');
SELECT encode(chips.json_digest('{"b": 1, "a": 2}'), 'hex');
SELECT chips.b64url_encode('\xfbff'::bytea), chips.b64url_decode('-_8');
SELECT chips.b64url_decode('Zg==');
SELECT chips.terms_check('{"limit": 5000, "call": 30}');
SELECT chips.terms_check('{"limt": 5000}');
SELECT chips.trading_check(3, 7, 0.02, 0.04);
SELECT chips.trading_check(3, 2, 0, 0);
SELECT chips.address_parse('ann:mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE@127.0.0.1:65430');
SELECT chips.address_check('{"cuid": "ann", "agent": "short"}');
SELECT chips.cuid_check('ann'), chips.agent_check('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE'), chips.pubkey_check('6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU');
SELECT chips.tally_transition_allowed('offer', 'open'), chips.tally_transition_allowed('closed', 'open');
SELECT chips.tally_transition_allowed('shut', 'open');
SELECT chips.tally_state('offer', false, true, true);
SELECT chips.chit_transition_allowed('pend', 'good'), chips.chit_transition_allowed('good', 'void');
SELECT chips.chit_doc_make('6f2c4b1e-0000-4000-8000-000000000001', 'foil', 'tran', '6f2c4b1e-0000-4000-8000-000000000002', 1795252345678, 1500, NULL, 'lunch');
SELECT chips.chit_doc_check('{"tally": "6f2c4b1e-0000-4000-8000-000000000001", "by": "foil", "type": "tran", "uuid": "6f2c4b1e-0000-4000-8000-000000000002", "date": "2026-11-21T09:12:25.678Z", "units": 0}');
SELECT chips.settings_check('{"target": 3, "bound": 7}');
SELECT chips.settings_check('{}');
SELECT chips.cert_check('{"chad": {"cuid": "ann", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE", "host": "127.0.0.1", "port": 65430}, "name": "Ann Baker", "type": "p", "public": "6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU"}');
SELECT chips.cert_check('{"chad": {"cuid": "ann", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}, "public": "6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU"}');
SELECT encode(chips.chit_chain_hash(chips.chit_doc_make('6f2c4b1e-0000-4000-8000-000000000001', 'foil', 'tran', '6f2c4b1e-0000-4000-8000-000000000002', 1795252345678, 1500, NULL, 'lunch'), 1, sha256('tally'), 'sig'), 'hex');
SELECT chips.tally_doc_check('{"version": 1}');
-- strict: a null argument gives null
SELECT chips.canonical_json(NULL) IS NULL AS strict;
RESET ROLE;
REVOKE USAGE ON SCHEMA chips FROM chips_regress_anyone;

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
