-- A site's first tally and payments through SQL alone (docs/sql-api.md, "Administration",
-- "Users: tickets and tallies", "Users: chits"): two custodial users at one site, the vendor's
-- tally offered through a ticket and accepted, payments within the credit the vendor grants,
-- and each documented refusal with its SQLSTATE, which changes nothing.
CREATE EXTENSION chips;
\set VERBOSITY terse
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
-- the SQLSTATE and message of a refused statement, run as the current role (uuids, made at
-- random, shown as <uuid>)
CREATE FUNCTION pg_temp.refused(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'not refused';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM,
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END $$;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Regress contract"}') IS NOT NULL AS contract;
SELECT chips.user_create('Ann Baker', cuid => 'ann', custodial => true, username => 'regress_ann');
SELECT chips.user_create('Bob Smith', cuid => 'bob', custodial => true, username => 'regress_bob');
SELECT pg_temp.refused($$SELECT chips.user_create('Ann Again', cuid => 'ann')$$);

-- Ann (the vendor) drafts a tally granting 5,000 milliCHIPs of credit and makes a ticket
SET ROLE regress_ann;
SELECT chips.tally_create('stock', hold_terms => '{"limit": 5000}') AS t \gset
SELECT chips.ticket_create(:'t') AS ticket \gset
SELECT side, status, state FROM chips.tallies_v WHERE tally_uuid = :'t';
-- Bob redeems it, Ann offers (her key, held by the database, signs), Bob accepts
SET ROLE regress_bob;
SELECT chips.ticket_redeem(:'ticket') = :'t' AS redeemed;
SET ROLE regress_ann;
SELECT chips.tally_offer(:'t');
SET ROLE regress_bob;
SELECT chips.tally_accept(:'t');
SELECT side, status, state, net_good FROM chips.tallies_v WHERE tally_uuid = :'t';

-- Bob pays; each payment is a signed chit on both halves
SELECT chips.pay(:'t', 1500, 'bread') IS NOT NULL AS paid;
SELECT chips.pay(:'t', 3500, 'to the limit') IS NOT NULL AS paid;
SELECT pg_temp.refused(format('SELECT chips.pay(%L, 1)', :'t'));
SELECT pg_temp.refused(format('SELECT chips.pay(%L, 0)', :'t'));
SELECT pg_temp.refused(format('SELECT chips.pay(%L, NULL)', :'t'));
SELECT pg_temp.refused($$SELECT chips.pay('6f2c4b1e-0000-4000-8000-000000000001', 10)$$);
SELECT net_good, net_pend FROM chips.tallies_v WHERE tally_uuid = :'t';
SELECT memo, units, value, status, state FROM chips.chits_v WHERE tally_uuid = :'t' ORDER BY chain_idx;
-- Ann pays part of it back; her payment may go as far as what Bob owes her
SET ROLE regress_ann;
SELECT pg_temp.refused(format('SELECT chips.pay(%L, 5001)', :'t'));
SELECT chips.pay(:'t', 1000, 'change') IS NOT NULL AS paid;
SELECT net_good FROM chips.tallies_v WHERE tally_uuid = :'t';
-- a user sees only their own rows, and their own events
SELECT count(*) AS my_halves FROM chips.tallies;
SELECT seq, kind, body->>'memo' AS memo, body->>'change' AS change FROM chips.events_v ORDER BY seq;
RESET ROLE;

-- both halves audit clean, and each user's events are numbered 1, 2, 3 ...
SELECT ent, side, check_name, ok FROM chips.tally_audit(:'t') ORDER BY ent, check_name;
SELECT ent, count(*) AS events, min(seq), max(seq) FROM chips.events GROUP BY ent ORDER BY ent;
SELECT ent, seq, kind, body->>'change' AS change, body->>'memo' AS memo
FROM chips.events_v WHERE kind = 'chit' ORDER BY ent, seq;

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
