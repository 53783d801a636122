-- Administration (docs/sql-api.md, "Administration"): a site's agent, its users and contracts,
-- as the page's session on site1 makes them, and the errors the page documents.
CREATE EXTENSION chips;
\set VERBOSITY terse
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
SELECT chips.user_create('Nobody', cuid => 'nobody');
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true);
SELECT chips.agent_register('short');
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 70000);
SELECT chips.user_create('Ann Baker', cuid => 'ann', pubkey => '6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU');
SELECT chips.user_create('Bob Smith', cuid => 'bob', pubkey => 'N_06y7Rxdd68BYO8hScoSoz7i7jqS-rC2_5kKDkck18');
SELECT chips.user_create('Cal Shop', cuid => 'cal', custodial => true);
SELECT chips.user_create('Ann Again', cuid => 'ann');
SELECT chips.user_create('', cuid => 'empty');
SELECT chips.user_create('Key And Custody', pubkey => '6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU', custodial => true);
SELECT ent, cuid, name, status, pubkey IS NOT NULL AS has_key FROM chips.users ORDER BY ent;
SELECT chips.user_set_key('p1002', 'not-a-key');
SELECT chips.user_set_key('p9999', '6WK89tz5f3PRxa5Us46PWAJnffZlmGXRuhyu8eCj7xU');
SELECT chips.user_set_status('p1002', 'locked');
SELECT chips.user_set_status('p1002', 'sleeping');
SELECT chips.user_set_status('p9999', 'active');
SELECT ent, status FROM chips.users WHERE ent = 'p1002';
SELECT chips.contract_add('{"title": "Tally contract", "text": "Each party honours the chits of this tally as IOUs in CHIPs."}');
SELECT chips.contract_add('"not an object"');

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
