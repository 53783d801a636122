-- User access and the admin view (docs/sql-api.md, "User access: logins, events, lists", "The
-- admin view"): Ann (p1000, custodial) and Bob (p1001) with a tally and two chits; Ann registers
-- her phone's key with a login ticket and logs in by signing a challenge (here chips.seed_sign
-- over a fixed seed, where the phone signs); her event feed, its pruning, her lists and files;
-- an admin session from a ticket. Values made at random print as placeholders
-- (scripts/regress-shape.sh):
-- shaped
CREATE EXTENSION chips;
\set VERBOSITY default
\set SHOW_CONTEXT never
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true) IS NOT NULL AS agent;
SELECT chips.contract_add('{"title": "Tally contract", "version": 1}') AS rid \gset
SELECT chips.user_create('Ann Baker', cuid => 'ann', custodial => true, username => 'chips_site1_p1000');
SELECT chips.user_create('Bob', cuid => 'bob', custodial => true, username => 'chips_site1_p1001');
-- Ann sells to Bob on account; Bob pays 2.500 for lunch
\i sql/include/tallies.psql
SELECT pg_temp.tally('p1000', 'p1001', 10000) AS t \gset
SELECT pg_temp.pay('p1001', :'t', 2500, 'lunch');
-- the phone's key
SELECT sha256('ann phone') AS seed \gset
SELECT chips.seed_public(:'seed') AS key \gset

------------------------------------------------------------------------------------------------
-- Logins
------------------------------------------------------------------------------------------------
SELECT chips.login_ticket('p1000');
SELECT chips.login_ticket('p1000')->>'token' AS token \gset
SELECT chips.login_ticket('p9999');
SELECT chips.login_register(:'token', :'key', 'Ann''s phone');
SELECT chips.login_register(:'token', :'key');
SELECT chips.login_challenge('p1000', :'key');
SELECT chips.login_challenge('p1000', :'key') AS doc \gset
SELECT :'doc'::jsonb->>'challenge' AS ch, chips.seed_sign(:'seed', :'doc') AS sig \gset
SELECT chips.login_finish(:'ch', :'sig');
SELECT chips.login_finish(:'ch', :'sig');
SELECT id AS session FROM chips.sessions WHERE ended IS NULL \gset
SELECT chips.login_end(:'session');
SELECT chips.login_end(:'session') AS again;
SELECT chips.login_revoke('p1000');

------------------------------------------------------------------------------------------------
-- Events, lists, trading variables
------------------------------------------------------------------------------------------------
SET ROLE chips_site1_p1000;
SELECT chips.tally_trade(:'t', '{"target": 1000, "bound": 5000}');
SELECT seq, kind, body FROM chips.events_since(3);
SELECT * FROM chips.events_since(99);
SELECT chips.events_head();
SELECT state, part_name, net_good FROM chips.tallies_list();
SELECT chit_type, state, units, memo FROM chips.chits_list(:'t');
SELECT chips.tally_trade(:'t', '{"target": 9000, "bound": 5000}');
RESET ROLE;
-- a month later
UPDATE chips.events SET created = created - interval '31 days';
SELECT chips.events_prune('30 days');
SET ROLE chips_site1_p1000;
SELECT * FROM chips.events_since(0);
SELECT count(*) AS events FROM chips.events_since(chips.events_head());
RESET ROLE;

------------------------------------------------------------------------------------------------
-- Files and documents
------------------------------------------------------------------------------------------------
SELECT chips.file_add(convert_to('hello, chips' || chr(10), 'UTF8'), 'text/plain');
SELECT chips.file_add(NULL, 'text/plain');
SELECT chips.file_add(''::bytea, 'text/plain');
SELECT chips.file_add(convert_to('x', 'UTF8'), 'text');
SELECT media_type, convert_from(body, 'UTF8') AS body FROM chips.document(:'rid');
SELECT media_type, convert_from(body, 'UTF8') AS body FROM chips.document('3-LeTHBvuj8pWoMnReBAAE9u0Ul1yt-eFsw5eVV8GuU');

------------------------------------------------------------------------------------------------
-- The admin view
------------------------------------------------------------------------------------------------
SELECT chips.admin_ticket('1 hour');
SELECT chips.admin_ticket('1 hour')->>'token' AS token \gset
SELECT chips.admin_ticket('8 days');
SELECT chips.admin_login(:'token');
SELECT chips.admin_login(:'token');
SELECT id AS session FROM chips.admin_sessions WHERE ended IS NULL \gset
SELECT jsonb_pretty(chips.admin_overview(:'session', max_lifts => 5));
SELECT chips.admin_user_add(:'session', 'Cat Weaver', cuid => 'cat');
SELECT chips.admin_login_ticket(:'session', 'p1002');
SELECT chips.admin_logout(:'session');
SELECT chips.admin_overview(:'session');

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
