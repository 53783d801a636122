-- The sidecar's functions (docs/sql-api.md, "The sidecar: peer messages") between two sites,
-- each its own database on this cluster: site1 (this test's database) and site2. Eve at site2
-- redeems a ticket of Ann's at site1; site2's outbox holds the message, the sidecar's calls
-- claim, acknowledge and give back messages, and site1 applies the message as chipsd would hand
-- it over (once, a second time, and from the wrong agent). Values made at random print as
-- placeholders (scripts/regress-shape.sh):
-- shaped
CREATE EXTENSION chips;
\set VERBOSITY default
\set SHOW_CONTEXT never
-- user roles are the cluster's: a rerun finds them made (and says so in notices)
SET client_min_messages = warning;
\set site1 :DBNAME
\set site2 :DBNAME _site2
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true) IS NOT NULL AS agent;
SELECT chips.contract_add('{"title": "Peer contract"}') IS NOT NULL AS contract;
SELECT chips.user_create('Ann Baker', cuid => 'ann', custodial => true, username => 'chips_site1_p1000');
SET ROLE chips_site1_p1000;
SELECT chips.tally_create('stock', hold_terms => '{"limit": 1000}') AS t \gset
SELECT chips.ticket_create(:'t') AS ticket \gset
RESET ROLE;

-- site2, with the same contract
DROP DATABASE IF EXISTS :"site2";
CREATE DATABASE :"site2";
\c :site2
SET client_min_messages = warning;
CREATE EXTENSION chips;
SELECT chips.agent_register('Y4n_5cmGUp_2cOFrrsUeio_J6lyuHozsJnGaGbRGNBo', '127.0.0.1', 65431, local => true) IS NOT NULL AS agent;
SELECT chips.contract_add('{"title": "Peer contract"}') IS NOT NULL AS contract;
SELECT chips.user_create('Eve Stone', cuid => 'eve', custodial => true, username => 'chips_site2_p1000');
SET ROLE chips_site2_p1000;
SELECT chips.ticket_redeem(:'ticket');   -- Ann's ticket, at Eve's site
RESET ROLE;

------------------------------------------------------------------------------------------------
-- outbox_claim, outbox_ack (site2)
------------------------------------------------------------------------------------------------
SELECT count(*) FROM chips.outbox_claim(10, '30 seconds', lane => 'route');
SELECT chips.outbox_claim(10, '30 seconds', lane => 'fast');
SELECT id, to_agent, host, port, msg->>'action' AS action, msg->'object'->>'token' AS token FROM chips.outbox_claim(10, '30 seconds');
SELECT msg FROM chips.outbox WHERE id = 1 \gset
SELECT chips.outbox_claim(10, '30 seconds');   -- claimed already: nothing for another sidecar
SELECT chips.outbox_claim(0);
SELECT chips.outbox_ack(ARRAY[1]);
SELECT chips.outbox_ack(ARRAY[1]);

------------------------------------------------------------------------------------------------
-- peer_receive, chain_sync (site1)
------------------------------------------------------------------------------------------------
\c :site1
SET client_min_messages = warning;
SELECT chips.peer_receive('Y4n_5cmGUp_2cOFrrsUeio_J6lyuHozsJnGaGbRGNBo', :'msg');   -- a ticket redeemed at site2
SELECT chips.peer_receive('Y4n_5cmGUp_2cOFrrsUeio_J6lyuHozsJnGaGbRGNBo', :'msg');
SELECT chips.peer_receive('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', :'msg');
SELECT chips.peer_receive('Y4n_5cmGUp_2cOFrrsUeio_J6lyuHozsJnGaGbRGNBo', '{"id": "not a uuid"}');
SELECT side, status, part_cert->'chad'->>'cuid' AS partner FROM chips.tallies WHERE tally_uuid = :'t';
-- Ann offers the tally to Eve: messages for site2, which site1's sidecar would carry
SET ROLE chips_site1_p1000;
SELECT chips.tally_offer(:'t');
RESET ROLE;
SELECT chips.chain_sync();

------------------------------------------------------------------------------------------------
-- outbox_release (site1): three claimed (the offer and two copies of it), one sent and refused,
-- two never sent
------------------------------------------------------------------------------------------------
SELECT count(*) AS queued FROM chips.outbox WHERE delivered IS NULL;
INSERT INTO chips.outbox (msg_id, from_agent, to_agent, target, action, msg)
SELECT gen_random_uuid(), from_agent, to_agent, target, action, msg FROM chips.outbox, generate_series(1, 2);
SELECT id, msg->>'action' AS action FROM chips.outbox_claim(3, '30 seconds');
SELECT chips.outbox_release(unsent => ARRAY[2, 3], tried => ARRAY[1]);
SELECT id, attempts, claimed_until FROM chips.outbox WHERE id IN (1, 2, 3) ORDER BY id;

-- the next test starts from a database without chips
DROP DATABASE :"site2";
RESET ROLE;
DROP EXTENSION chips CASCADE;
