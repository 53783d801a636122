-- Distributed lifts and clearing rounds as one site's admin and users see them (docs/sql-api.md,
-- "Distributed lifts", "Clearing rounds"): u00 (who signs with her own key) pays u23 through
-- u10, all at this site, so each payment is decided here at once; route checks; the timers and
-- settings; a site naming a coordinator and coordinating rounds itself. Values made at random
-- print as placeholders (scripts/regress-shape.sh):
-- shaped
CREATE EXTENSION chips;
\set VERBOSITY default
\set SHOW_CONTEXT never
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
SET intervalstyle = postgres;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true) IS NOT NULL AS agent;
SELECT chips.contract_add('{"title": "Lift contract"}') IS NOT NULL AS contract;
SELECT sha256('u00') AS seed \gset
SELECT chips.user_create('Ursula Zero', cuid => 'u00', pubkey => chips.seed_public(:'seed'), username => 'chips_site1_p1000');
SELECT chips.user_create(name, cuid => cuid, custodial => true, username => 'chips_site1_' || ent)
FROM (VALUES ('p1001', 'Ulla Ten', 'u10'), ('p1002', 'Uwe Twenty-three', 'u23'), ('p1003', 'Uma Thirty', 'u30')) u(ent, name, cuid)
ORDER BY ent;
-- u10 grants u00 1,000 of credit, u23 and u30 grant u10 1,000 each, and each vendor takes up
-- to what it grants (its target and bound)
\i sql/include/tallies.psql
SELECT pg_temp.tally('p1001', 'p1000', 1000, :'seed', trade => true) IS NOT NULL AS u10_u00,
       pg_temp.tally('p1002', 'p1001', 1000, trade => true) IS NOT NULL AS u23_u10,
       pg_temp.tally('p1003', 'p1001', 1000, trade => true) IS NOT NULL AS u30_u10;

------------------------------------------------------------------------------------------------
-- Distributed lifts: pay_address, pay_address_json, pay_address_sign
------------------------------------------------------------------------------------------------
SET ROLE chips_site1_p1000;
SELECT chips.pay_address('{"cuid": "u23", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}', 200, 'dinner');
RESET ROLE;
SELECT lift_uuid AS lift FROM chips.lifts WHERE status = 'draft' \gset
SET ROLE chips_site1_p1000;
SELECT chips.pay_address_json(:'lift') AS doc \gset
SELECT chips.pay_address('{"cuid": "u23"}', 5);
SELECT chips.pay_address('{"cuid": "u23", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}', 0);
SELECT chips.pay_address_json(:'lift');
RESET ROLE;
SELECT chips.seed_sign(:'seed', :'doc') AS sig \gset
SET ROLE chips_site1_p1000;
SELECT chips.pay_address_sign(:'lift', 'AAAA');
SELECT chips.pay_address_sign(:'lift', :'sig');
SELECT chips.pay_address_sign(:'lift', :'sig');
SELECT chips.pay_address('{"cuid": "u23", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}', 5000, 'a car') IS NOT NULL AS drafted;
RESET ROLE;
SELECT lift_uuid AS big FROM chips.lifts WHERE status = 'draft' \gset
SET ROLE chips_site1_p1000;
SELECT chips.pay_address_json(:'big') AS doc \gset
RESET ROLE;
SELECT chips.seed_sign(:'seed', :'doc') AS sig \gset
SET ROLE chips_site1_p1000;
SELECT chips.pay_address_sign(:'big', :'sig');     -- a payment of 5000 units
SELECT kind, status, units, side, change FROM chips.lifts_v ORDER BY chain_idx, side;
SELECT state, net_good FROM chips.tallies_v;

------------------------------------------------------------------------------------------------
-- route_check, route_check_result
------------------------------------------------------------------------------------------------
SELECT * FROM chips.route_check('{"cuid": "u30", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}', 200);
SELECT * FROM chips.route_check('{"cuid": "u21", "agent": "9LBGq986-N49d4FEKOdQV5PK3clUfnLPxUn5Vx6Ugsc"}', 100);
SELECT query FROM chips.route_check('{"cuid": "u21", "agent": "9LBGq986-N49d4FEKOdQV5PK3clUfnLPxUn5Vx6Ugsc"}', 100) \gset
SELECT * FROM chips.route_check('{"cuid": "u32", "agent": "C02pGWF6Zhnt1wYlSW4Fz0bNMCK_d6cIPvkw1IZFtac"}', 0);
SELECT * FROM chips.route_check('{"cuid": "nobody", "agent": "mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE"}', 5);
SELECT * FROM chips.route_check_result(:'query');
SELECT * FROM chips.route_check_result('not-a-query');
RESET ROLE;

------------------------------------------------------------------------------------------------
-- lift_circles, lift_tick, lift_configure
------------------------------------------------------------------------------------------------
SELECT chips.lift_circles(1, 1);
SELECT * FROM chips.lift_tick();
SELECT life, hop_step, max_depth, fanout FROM chips.lift_configure(hop_step => '300 ms');
SELECT life, hop_step, max_depth, fanout FROM chips.lift_configure(max_depth => 0);

------------------------------------------------------------------------------------------------
-- Clearing rounds
------------------------------------------------------------------------------------------------
SELECT site_coordinator, coordinating FROM chips.round_configure(coordinator => 'KO97CG8kdT09Z4BuPRrz2DxsMFZwBPO0LFY2GK-9AAo@10.1.2.3:65430');
SELECT action, msg->'to'->>'host' AS host FROM chips.outbox WHERE target = 'round';
SELECT coordinating, round_every, round_life, round_attempts, round_members
  FROM chips.round_configure(coordinate => true, every => '10 minutes', life => '1 minute');
SELECT * FROM chips.round_configure(every => '0 seconds');
SELECT * FROM chips.round_configure(coordinator => 'KO97CG8kdT09Z4BuPRrz2DxsMFZwBPO0LFY2GK-9AAo');
SELECT chips.round_open();
SELECT * FROM chips.round_tick();
CALL chips.round_work();

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
