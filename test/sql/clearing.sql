-- Clearing inside one site (docs/sql-api.md, "Clearing"): custodial users Ann (p1000), Bob
-- (p1001) and Cat (p1002) in a circle of debt, the optimal plan with and without a margin, a
-- pass that writes it, a user's own clearing, and the site's automatic, continuous clearing.
-- Uuids print as placeholders (scripts/regress-shape.sh):
-- shaped
CREATE EXTENSION chips;
\set VERBOSITY default
\set SHOW_CONTEXT never
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
SET intervalstyle = postgres;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true) IS NOT NULL AS agent;
SELECT chips.contract_add('{"title": "Clearing contract"}') IS NOT NULL AS contract;
SELECT chips.user_create(name, cuid => cuid, custodial => true, username => 'chips_site1_' || ent)
FROM (VALUES ('p1000', 'Ann Baker', 'ann'), ('p1001', 'Bob Miller', 'bob'), ('p1002', 'Cat Weaver', 'cat'),
             ('p1003', 'Dan Mill', 'dan'), ('p1004', 'Eve Farm', 'eve')) u(ent, name, cuid)
ORDER BY ent;
\i sql/include/tallies.psql

-- Ann owes Bob 10, Bob owes Cat 10; Cat grants Ann 10 of credit, and their tally is at zero
SELECT pg_temp.tally('p1001', 'p1000', 20000) AS ab, pg_temp.tally('p1002', 'p1001', 20000) AS bc,
       pg_temp.tally('p1002', 'p1000', 10000) AS ca \gset
SELECT pg_temp.pay('p1000', :'ab', 10000), pg_temp.pay('p1001', :'bc', 10000);
-- Cat takes up to 4 from Ann for nothing, up to 10 at 1 %
SET ROLE chips_site1_p1002;
SELECT chips.tally_trade(:'ca', '{"target": 4000, "bound": 10000, "reward": 0.01}') IS NOT NULL AS set;
RESET ROLE;

------------------------------------------------------------------------------------------------
-- clearing_plan and clear
------------------------------------------------------------------------------------------------
SELECT circle, step, debtor, creditor, units, costed, margin FROM chips.clearing_plan();
SELECT circle, step, debtor, creditor, units, costed, margin FROM chips.clearing_plan(max_margin => 0.02);
SELECT * FROM chips.clearing_plan(min_units => 0);
SELECT units, tallies, status FROM chips.clear();
SELECT lift IS NOT NULL AS lifted, units, tallies, status FROM chips.clear(execute => true);
SELECT kind, status, units, cardinality(tallies) AS tallies FROM chips.lifts;
SELECT circle, units, steps FROM chips.pass_circles;
SELECT u.cuid, t.side, t.net_good FROM chips.tallies t JOIN chips.users u USING (ent) ORDER BY t.id;
SELECT * FROM chips.clear(min_units => 0);
SELECT count(*) AS audit_failures FROM (SELECT DISTINCT tally_uuid FROM chips.tallies) t, chips.tally_audit(t.tally_uuid) a WHERE NOT a.ok;

------------------------------------------------------------------------------------------------
-- lift_through_me and lifts_v: Bob clears his own debts; Cat now takes up to 10 for nothing
------------------------------------------------------------------------------------------------
SET ROLE chips_site1_p1002;
SELECT chips.tally_trade(:'ca', '{"target": 10000, "bound": 10000, "reward": 0}') IS NOT NULL AS set;
SET ROLE chips_site1_p1001;
SELECT lift IS NOT NULL AS lifted, units, tallies, status FROM chips.lift_through_me(execute => true);
SELECT * FROM chips.lift_through_me();
SELECT kind, side, change, through, chain_idx FROM chips.lifts_v ORDER BY chain_idx, side;
SELECT kind, status, units, side, change FROM chips.lifts_list(max_lifts => 1);
SELECT * FROM chips.lifts_list(0);
RESET ROLE;

------------------------------------------------------------------------------------------------
-- clearing_configure, clearing_run, clearing_tick, clearing_continuous
------------------------------------------------------------------------------------------------
SELECT enabled, every, min_units, max_len, max_margin, piece, continuous
  FROM chips.clearing_configure(enabled => true, every => '10 minutes', min_units => 1000, max_margin => 0.02);
SELECT chips.clearing_configure(every => '0 seconds');
-- Dan owes Eve 2 and Eve owes Dan 2 on two tallies
SELECT pg_temp.tally('p1003', 'p1004', 5000) AS de, pg_temp.tally('p1004', 'p1003', 5000) AS ed \gset
SELECT pg_temp.pay('p1004', :'de', 2000), pg_temp.pay('p1003', :'ed', 2000);
CALL chips.clearing_run();
-- again, for the site's automatic pass: the first tick runs it, the next is not due
SELECT pg_temp.pay('p1004', :'de', 3000), pg_temp.pay('p1003', :'ed', 3000);
CALL chips.clearing_tick();
CALL chips.clearing_tick();
-- and continuously: a tick lifts what the changes since the last one made possible
SELECT continuous FROM chips.clearing_configure(continuous => true);
SELECT pg_temp.pay('p1004', :'de', 1000), pg_temp.pay('p1003', :'ed', 1000);
SELECT * FROM chips.clearing_continuous();
SELECT * FROM chips.clearing_continuous();
SELECT count(*) AS tallies, count(*) FILTER (WHERE net_good = 0) AS at_zero FROM chips.tallies WHERE ent IN ('p1003', 'p1004');
SELECT count(*) AS audit_failures FROM (SELECT DISTINCT tally_uuid FROM chips.tallies) t, chips.tally_audit(t.tally_uuid) a WHERE NOT a.ok;

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
