-- A user's API, as docs/sql-api.md shows it ("Users: tickets and tallies", "Users: chits",
-- "Audit", and the helpers that read chits): Ann (p1000, the vendor) and Bob (p1001, the
-- client) hold their own keys and sign every document themselves (here with chips.seed_sign
-- over fixed seeds, where a person runs `chipsd sign`); Cal and Dan are custodial users whose
-- keys the database holds. Every example of those sections is a statement of this file, and
-- each documented refusal changes nothing. Uuids, dates, keys and signatures made at random
-- print as placeholders (scripts/regress-shape.sh):
-- shaped
CREATE EXTENSION chips;
\set VERBOSITY default
\set SHOW_CONTEXT never
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Tally contract", "text": "Each party honours the chits of this tally as IOUs in CHIPs."}') IS NOT NULL AS contract;
SELECT sha256('ann') AS ann_seed, sha256('bob') AS bob_seed \gset
SELECT chips.user_create('Ann Baker', cuid => 'ann', pubkey => chips.seed_public(:'ann_seed'), username => 'chips_site1_p1000');
SELECT chips.user_create('Bob Miller', cuid => 'bob', pubkey => chips.seed_public(:'bob_seed'), username => 'chips_site1_p1001');
SELECT chips.user_create('Cal Shop', cuid => 'cal', custodial => true, username => 'chips_site1_p1002');
SELECT chips.user_create('Dan Mill', cuid => 'dan', custodial => true, username => 'chips_site1_p1003');
SELECT ent, cuid, pubkey FROM chips.users ORDER BY ent;

------------------------------------------------------------------------------------------------
-- Users: tickets and tallies
------------------------------------------------------------------------------------------------
\set t 00000000-0000-0000-0000-000000000000
SELECT chips.tally_update(:'t', memo => 'x');   -- as postgres, without SET ROLE
SET ROLE chips_site1_p1000;
SELECT chips.my_ent();
SELECT chips.user_cert();
-- Ann drafts a tally, as the vendor, granting Bob 50.000 CHIPs
SELECT chips.tally_create('stock', hold_terms => '{"limit": 50000}', memo => 'bread on account');
SELECT tally_uuid AS t FROM chips.tallies_v WHERE memo = 'bread on account' \gset
SELECT chips.tally_create('vendor');
SELECT chips.tally_json('00000000-0000-0000-0000-000000000000');
SELECT chips.ticket_create(:'t');
SELECT chips.ticket_create(:'t') AS ticket \gset
-- Bob redeems the ticket
SET ROLE chips_site1_p1001;
SELECT chips.ticket_redeem(:'ticket');
SELECT chips.ticket_redeem(:'ticket');
-- Ann signs the tally document and offers it
SET ROLE chips_site1_p1000;
SELECT jsonb_pretty(chips.tally_json(:'t'));
SELECT chips.tally_json(:'t') AS doc \gset
RESET ROLE;
SELECT chips.seed_sign(:'ann_seed', :'doc') AS sig \gset
SET ROLE chips_site1_p1000;
SELECT chips.tally_offer(:'t', 'AAAA');
SELECT chips.tally_offer(:'t', :'sig');
-- Bob sees the offer, and accepts it with his signature
SET ROLE chips_site1_p1001;
SELECT tally_uuid, side, state, part_name FROM chips.tallies_v;
SELECT chips.tally_accept(:'t', :'sig');      -- Ann's signature, Bob's tally
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'doc') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.tally_accept(:'t', :'sig');
SELECT state, digest FROM chips.tallies_v;
-- a second tally, drafted by Bob and offered to Ann, who counters, changes it, then voids it
SELECT chips.tally_create('foil', part_terms => '{"limit": 10000}', memo => 'flour') AS t3 \gset
SELECT chips.ticket_create(:'t3') AS ticket3 \gset
SET ROLE chips_site1_p1000;
SELECT chips.ticket_redeem(:'ticket3') = :'t3' AS redeemed;
SET ROLE chips_site1_p1001;
SELECT chips.tally_json(:'t3') AS doc3 \gset
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'doc3') AS sig3 \gset
SET ROLE chips_site1_p1001;
SELECT chips.tally_offer(:'t3', :'sig3');
SET ROLE chips_site1_p1000;
SELECT chips.tally_counter(:'t3');
SELECT chips.tally_update(:'t3', hold_terms => '{"limit": 20000}', part_terms => '{"limit": 5000}');
SELECT chips.tally_update(:'t3', hold_terms => '{"limit": -1}');
SELECT chips.tally_void(:'t3');
SELECT chips.tally_void(:'t');

------------------------------------------------------------------------------------------------
-- Users: chits
------------------------------------------------------------------------------------------------
SET ROLE chips_site1_p1001;
SELECT chips.chit_json(:'t', 1500, 'two loaves');
SELECT chips.chit_json(:'t', 1500, 'two loaves') AS chit \gset
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'chit') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_issue(:'chit', :'sig');
SELECT chips.chit_issue(:'chit', :'sig') AS again;   -- the same chit again: a retry changes nothing
-- Bob sets his trading variables on the tally
SELECT chips.chit_json(:'t', reference => '{"target": 3000, "bound": 7000, "reward": 0.02, "clutch": 0.04}') AS settings \gset
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'settings') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_issue(:'settings', :'sig');
-- Ann asks Bob for 2.500 CHIPs; Bob signs the invoice
SET ROLE chips_site1_p1000;
SELECT chips.chit_invoice(:'t', 2500, 'March delivery');
SELECT chit_uuid AS inv, doc AS inv_doc FROM chips.chits_v WHERE memo = 'March delivery' \gset
SELECT state, units FROM chips.chits_v WHERE chit_uuid = :'inv';   -- Ann
SET ROLE chips_site1_p1001;
SELECT state, units FROM chips.chits_v WHERE chit_uuid = :'inv';   -- Bob
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'inv_doc') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_sign(:'t', :'inv', :'sig');
-- what is refused, and changes nothing
SELECT chips.chit_json(:'t', 60000) AS big \gset
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'big') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_issue(:'big', :'sig');      -- 60000 on a 50000 limit
SELECT chips.chit_json(:'t', reference => '{"target": 9000}') AS badset \gset
RESET ROLE;
SELECT chips.seed_sign(:'bob_seed', :'badset') AS sig \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_issue(:'badset', :'sig');   -- {"target": 9000} with bound 7000
SELECT side, target, bound, reward, clutch, net_good FROM chips.tallies_v WHERE tally_uuid = :'t';
RESET ROLE;
SELECT side, part_sets FROM chips.tallies WHERE tally_uuid = :'t' ORDER BY side;
-- a second invoice, declined by Bob
SET ROLE chips_site1_p1000;
SELECT chips.chit_invoice(:'t', 700, 'April delivery') AS inv2 \gset
SET ROLE chips_site1_p1001;
SELECT chips.chit_decline(:'t', :'inv2');
SELECT chips.chit_decline(:'t', :'inv2');
SELECT chit_uuid, state, units, value, chain_idx FROM chips.chits_v WHERE tally_uuid = :'t' ORDER BY id;
-- pay is for custodial users
SET ROLE chips_site1_p1000;
SELECT chips.pay(:'t', 100);     -- as Ann, who holds her own key
RESET ROLE;

-- the helpers over a user's chits and tallies
SELECT chips.chit_verify(doc, '7MG1hyfz8SsxlIgansud4LKM57IHIw2Okw_hvOdeJWw', signature) FROM chips.chits_v WHERE chit_uuid = :'inv' AND ent = 'p1001';
SELECT chips.chit_value(doc, 'foil') AS foil, chips.chit_value(doc, 'stock') AS stock FROM chips.chits_v WHERE chit_uuid = :'inv' AND ent = 'p1001';
SELECT jsonb_pretty(chips.tally_doc_check(doc)) FROM chips.tallies_v WHERE tally_uuid = :'t' LIMIT 1;
SELECT chips.tally_verify(doc, 'stock', 'AAAA') FROM chips.tallies_v WHERE tally_uuid = :'t' LIMIT 1;
SELECT chips.seed_sign(:'bob_seed', '{"units": 1500}') AS sig \gset
SELECT chips.verify_signature('7MG1hyfz8SsxlIgansud4LKM57IHIw2Okw_hvOdeJWw', '{"units": 1500}', :'sig') AS good,
       chips.verify_signature('7MG1hyfz8SsxlIgansud4LKM57IHIw2Okw_hvOdeJWw', '{"units": 15000}', :'sig') AS tampered;

-- a batch of payments, by Cal, whom Dan (the vendor) grants 900
\i sql/include/tallies.psql
SELECT pg_temp.tally('p1003', 'p1002', 900) AS tc \gset
SET ROLE chips_site1_p1002;
SELECT chips.pay(:'tc', 351, 'seed grain') IS NOT NULL AS paid;
\set t :tc
SELECT * FROM chips.pay_batch(jsonb_build_array(
  jsonb_build_object('tally', :'t', 'units', 40, 'memo', 'week 49'),
  jsonb_build_object('tally', :'t', 'units', 'lots'),
  jsonb_build_object('tally', :'t', 'units', 5000)));
SELECT * FROM chips.pay_batch(jsonb_build_array(
  jsonb_build_object('tally', :'t', 'units', 40),
  jsonb_build_object('tally', :'t', 'units', 5000)), all_or_nothing => true);
SELECT net_good FROM chips.tallies_v WHERE tally_uuid = :'t';
RESET ROLE;

------------------------------------------------------------------------------------------------
-- Audit, and closing
------------------------------------------------------------------------------------------------
SELECT tally_uuid AS t FROM chips.tallies WHERE memo = 'bread on account' LIMIT 1 \gset
SELECT * FROM chips.tally_audit(:'t');
SET ROLE chips_site1_p1000;
SELECT chips.tally_close(:'t');
SELECT state, net_good FROM chips.tallies_v WHERE tally_uuid = :'t';

-- the next test starts from a database without chips
RESET ROLE;
DROP EXTENSION chips CASCADE;
