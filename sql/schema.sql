-- chips install SQL, part 1: roles, tables, indexes, pg_dump marks.
-- Functions, triggers, views, row-level security and grants follow in sql/api.sql.
-- Everything lives in schema chips (fixed by the control file).

-- Roles are cluster-wide: create them once, whichever database installs chips first.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'chips_admin') THEN
        CREATE ROLE chips_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'chips_user') THEN
        CREATE ROLE chips_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'chips_agent') THEN
        CREATE ROLE chips_agent NOLOGIN;
    END IF;
    -- The user gateway (chipsd's websocket server): may SET ROLE to every user's role, and acts
    -- for a user only inside a session that user opened by signing a challenge.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'chips_gateway') THEN
        CREATE ROLE chips_gateway NOLOGIN;
    END IF;
END
$roles$;

REVOKE CREATE ON SCHEMA chips FROM PUBLIC;
GRANT USAGE ON SCHEMA chips TO chips_admin, chips_user, chips_agent, chips_gateway;

CREATE SEQUENCE chips.ent_seq START 1000;
CREATE SEQUENCE chips.tally_seq;
CREATE SEQUENCE chips.outbox_seq;
CREATE SEQUENCE chips.chit_seq;
CREATE SEQUENCE chips.lift_seq;

-- A site's peer identities. `local` agents are served by this database's sidecar(s); the others
-- are partners' agents, learned from certificates and tickets.
CREATE TABLE chips.agents (
    agent      text PRIMARY KEY,        -- base64url Ed25519 public key (43 characters)
    host       text,
    port       integer CHECK (port BETWEEN 1 AND 65535),
    local      boolean NOT NULL DEFAULT false,
    created    timestamptz NOT NULL DEFAULT now(),
    CHECK (char_length(agent) = 43)
);

-- People and organizations holding tallies at this site.
CREATE TABLE chips.users (
    ent        text PRIMARY KEY,        -- entity id, 'p1000' for people, 'o1001' for organizations
    ent_type   text NOT NULL DEFAULT 'p' CHECK (ent_type IN ('p', 'o')),
    cuid       text NOT NULL,           -- CHIP user id; the address is cuid:agent
    agent      text NOT NULL REFERENCES chips.agents,
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    pubkey     text,                    -- Ed25519 public key, base64url; needed to sign tallies
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'locked', 'off')),
    username   name NOT NULL UNIQUE,    -- the PostgreSQL role that acts as this user
    created    timestamptz NOT NULL DEFAULT now(),
    updated    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cuid, agent)
);

-- Contract documents, referenced from tallies by rid = base64url(SHA-256(canonical JSON)).
CREATE TABLE chips.contracts (
    rid        text PRIMARY KEY,
    title      text NOT NULL,
    doc        jsonb NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

-- One row per tally half held at this site. A tally between two users of this site has two rows
-- (one stock, one foil) with the same tally_uuid.
CREATE TABLE chips.tallies (
    id          bigint PRIMARY KEY DEFAULT nextval('chips.tally_seq'),
    ent         text NOT NULL REFERENCES chips.users,
    tally_uuid  uuid NOT NULL,
    side        text NOT NULL CHECK (side IN ('stock', 'foil')),
    version     integer NOT NULL DEFAULT 1 CHECK (version = 1),
    revision    integer NOT NULL DEFAULT 1 CHECK (revision >= 1),
    status      text NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'offer', 'open', 'closing', 'closed', 'void')),
    tally_date  timestamptz(3) NOT NULL DEFAULT now(),
    memo        text CHECK (char_length(memo) <= 1000),
    contract    text NOT NULL,          -- rid of the contract both parties agree to
    hold_cert   jsonb NOT NULL,         -- holder's certificate, frozen
    part_cert   jsonb,                  -- partner's certificate, frozen (null until known)
    hold_terms  jsonb NOT NULL DEFAULT '{}',  -- credit terms the holder grants the partner
    part_terms  jsonb NOT NULL DEFAULT '{}',  -- credit terms the partner grants the holder
    hold_sig    text,                   -- holder's Ed25519 signature over the tally document
    part_sig    text,                   -- partner's signature
    digest      bytea,                  -- SHA-256 of the canonical tally document, set at open
    part_ent    text REFERENCES chips.users,  -- the partner, when a user of this site
    -- trading variables of the holder (mychips §1.2); changed by setting chits
    target      bigint NOT NULL DEFAULT 0,
    bound       bigint NOT NULL DEFAULT 0,
    reward      double precision NOT NULL DEFAULT 0,
    clutch      double precision NOT NULL DEFAULT 0,
    -- balances in milliCHIPs from the holder's view (positive: the partner owes the holder)
    net_good    bigint NOT NULL DEFAULT 0,  -- sum of good chits
    net_pend    bigint NOT NULL DEFAULT 0,  -- sum of good and pending chits
    net_hold    bigint NOT NULL DEFAULT 0,  -- pending lift chits that lower it (<= 0): held back from payments
    part_sets   jsonb NOT NULL DEFAULT '{}',  -- the partner's trading variables, from its set chits
    -- the chit chain: chain_len good chits are chained; chain_tip is the hash of the last block
    -- (the tally digest while chain_len = 0); on the foil half of a tally with another site,
    -- chain_conf is the last index the stock half confirmed (a local tally chains both halves
    -- in one transaction and does not use it)
    chain_len   integer NOT NULL DEFAULT 0,
    chain_tip   bytea,
    chain_conf  integer NOT NULL DEFAULT 0,
    -- on the stock half of a tally with another site: the last index the foil half sent that
    -- this half could not chain yet (a lift chit still pending here); settling the lift asks again
    chain_seen  integer NOT NULL DEFAULT 0,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tally_uuid, side),
    CHECK (target >= 0 AND bound >= target),
    CHECK (reward BETWEEN -1 AND 1 AND clutch BETWEEN -1 AND 1 AND reward + clutch >= 0),
    CHECK (status NOT IN ('open', 'closing', 'closed')
           OR (part_cert IS NOT NULL AND hold_sig IS NOT NULL AND part_sig IS NOT NULL
               AND digest IS NOT NULL)),
    CHECK (part_ent IS DISTINCT FROM ent)
) WITH (fillfactor = 70);   -- room for HOT updates: every chit updates its tally's balance
CREATE INDEX tallies_ent_idx ON chips.tallies (ent, status);
CREATE INDEX tallies_part_ent_idx ON chips.tallies (part_ent) WHERE part_ent IS NOT NULL;

-- Invitation tickets. A ticket offers its draft tally (the template) to whoever redeems it:
-- a one-time ticket gives the template itself a partner; a reusable one copies the template.
CREATE TABLE chips.tickets (
    token      text PRIMARY KEY,
    ent        text NOT NULL REFERENCES chips.users,
    tally_id   bigint NOT NULL REFERENCES chips.tallies ON DELETE CASCADE,
    reusable   boolean NOT NULL DEFAULT false,
    expires    timestamptz NOT NULL,
    uses       integer NOT NULL DEFAULT 0,
    used       timestamptz,             -- last redemption
    created    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tickets_ent_idx ON chips.tickets (ent);

-- Messages to peers, written in the same transaction as the state change they announce and
-- delivered by the sidecar (at least once; receivers deduplicate on msg_id).
CREATE TABLE chips.outbox (
    id            bigint PRIMARY KEY DEFAULT nextval('chips.outbox_seq'),
    msg_id        uuid NOT NULL UNIQUE,
    from_agent    text NOT NULL,
    to_agent      text NOT NULL,
    target        text NOT NULL,
    action        text NOT NULL,
    msg           jsonb NOT NULL,
    created       timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    claimed_until timestamptz,
    delivered     timestamptz,
    -- the database session (backend pid) that made the claim (with claimed_until): a claim
    -- whose session has ended (its sidecar died or lost its connection) is free before its
    -- lease runs out
    claimed_pid   integer
);
CREATE INDEX outbox_pending_idx ON chips.outbox (to_agent, id) WHERE delivered IS NULL;

-- Messages received from peers and applied (for idempotency: a msg_id is applied once).
CREATE TABLE chips.inbox (
    msg_id     uuid PRIMARY KEY,
    from_agent text NOT NULL,
    target     text NOT NULL,
    action     text NOT NULL,
    result     text NOT NULL,
    received   timestamptz NOT NULL DEFAULT now()
);

-- Credit lifts: one row per lift executed (or in progress) here; its chits carry lift_id.
-- A local lift (kind local) is a clearing pass over this site's tallies, written as one
-- circulation (sql/clearing.sql): `tallies` are the tallies it moved, `debtors[i]` the holder whose
-- debt on tallies[i] went down, `units` the units moved summed over them; each tally's flow is
-- its lift chits', and the circles it decomposes into are in chips.pass_circles.
-- A distributed lift (kind linear: a payment to a CHIP address; circular: a clearing circle
-- through other sites) has one row at every site it passes (sql/lifts.sql), with this site's
-- role in it, its locks (SHA-256 of the secrets only the origin knows) and its expiry.
CREATE TABLE chips.lifts (
    id          bigint PRIMARY KEY DEFAULT nextval('chips.lift_seq'),
    lift_uuid   uuid NOT NULL,          -- (unique with tally_in: a lift may pass a site twice, over distinct tallies)
    kind        text NOT NULL CHECK (kind IN ('local', 'linear', 'circular', 'round')),
    status      text NOT NULL CHECK (status IN ('draft', 'seek', 'pend', 'good', 'void')),
    units       bigint NOT NULL CHECK (units > 0 OR (kind = 'round' AND units = 0)),
    tallies     uuid[] NOT NULL DEFAULT '{}', -- the tallies moved (local), or this site's segment, in order
    debtors     text[] NOT NULL DEFAULT '{}', -- the debtor on each (a segment: step i lowers what debtors[i] owes debtors[i + 1])
    through     text,                   -- the user a lift through one user was asked for
    margin      double precision NOT NULL DEFAULT 0,  -- compounded margin of its costed steps (local: its dearest circle's)
    created     timestamptz NOT NULL DEFAULT now(),
    -- distributed lifts only
    role        text CHECK (role IN ('origin', 'relay', 'terminus', 'member')),
    origin      jsonb,                  -- the originating user's CHIP address
    find        jsonb,                  -- where the lift goes (the payee; the origin for a circle)
    payer       text,                   -- the local user who pays (origin)
    payee       text,                   -- the local user who is paid (terminus)
    query       text,                   -- the route query it follows
    tally_in    uuid,                   -- the tally it arrives on (relay, terminus; origin of a circle)
    tally_out   uuid,                   -- the tally it leaves on (origin, relay)
    condition   bytea,                  -- SHA-256 of the commit secret (a round: of its members' locks, in order)
    void_cond   bytea,                  -- SHA-256 of the void secret
    secret      bytea,                  -- the commit secret (the origin's from the start; others' once committed; a round member's own share)
    void_secret bytea,
    expires     timestamptz,            -- this site's deadline for the lift to be prepared
    pay         jsonb,                  -- a payment: {doc, sign, key}, the payer's signature over doc
    reason      text,                   -- why it is void
    decided     timestamptz,            -- when it became good or void here
    asked       timestamptz,            -- when this site last asked the origin for the decision
    -- a payment split over several routes (docs/protocol.md, "Split payments"): at the origin each
    -- part is a lift of its own (its own uuid, tally out and units, the payment's locks) whose
    -- parent is the payment; the payment has no chits and decides for all its parts at once
    parent      uuid,                   -- (no foreign key: lift_uuid is unique only with tally_in)
    part_ready  timestamptz,            -- a part: when its terminus said ready
    -- clearing rounds only (sql/rounds.sql): the attempt this site's part answers, and the date
    -- the coordinator gave the round's lift chits (so both halves of a tally write the same one)
    attempt     integer,
    chit_date   timestamptz(3),
    CHECK (cardinality(tallies) = cardinality(debtors)),
    CHECK (kind <> 'local' OR cardinality(tallies) >= 2),
    CHECK (kind = 'local' OR (role IS NOT NULL AND condition IS NOT NULL AND void_cond IS NOT NULL
                              AND expires IS NOT NULL AND find IS NOT NULL AND origin IS NOT NULL))
);
-- A lift's row here for each way it passes this site: the origin's (or a round's, a local
-- lift's) without a tally in, a relay's or terminus' by the tally it came in on.
CREATE UNIQUE INDEX lifts_passage_key ON chips.lifts
    (lift_uuid, coalesce(tally_in, '00000000-0000-0000-0000-000000000000'));
CREATE INDEX lifts_open_idx ON chips.lifts (expires) WHERE status IN ('draft', 'seek', 'pend');
CREATE INDEX lifts_parent_idx ON chips.lifts (parent) WHERE parent IS NOT NULL;

-- The circles a local lift decomposes into, kept for audit: circle `circle` lowered by `units`
-- every debt at `steps` (1-based positions in the lift's `tallies`, in order around the circle).
-- Admins only: a circle shows who owes whom all the way round.
CREATE TABLE chips.pass_circles (
    lift_id    bigint NOT NULL REFERENCES chips.lifts,
    circle     integer NOT NULL,
    units      bigint NOT NULL CHECK (units > 0),
    margin     double precision NOT NULL DEFAULT 0,
    steps      integer[] NOT NULL CHECK (cardinality(steps) >= 2),
    PRIMARY KEY (lift_id, circle)
);

-- Route discovery (sql/lifts.sql): what this site asked and was asked. An `in` row is a query
-- that reached this site over `tally` (null: asked here, for lift `lift`, or for a user's route
-- check); an `out` row is a query this site passed on over `tally`, and its answer.
CREATE TABLE chips.lift_routes (
    id          bigserial PRIMARY KEY,
    query       text NOT NULL,
    dir         text NOT NULL CHECK (dir IN ('in', 'out')),
    tally       uuid,
    lift        uuid,
    find        jsonb NOT NULL,
    units       bigint NOT NULL CHECK (units > 0),
    want        bigint,                 -- in: what a route should carry to be answered at once (a payment's whole units)
    asker       bigint,                 -- out: the 'in' row that asked it (each waits only for its own)
    expires     timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'pend' CHECK (status IN ('pend', 'found', 'none')),
    max         bigint,                 -- the most the route can carry (found)
    hops        integer,                -- tallies from here to where it goes (found)
    created     timestamptz NOT NULL DEFAULT now(),
    -- in, asked here by chips.route_check: the user who asked (no lift follows it)
    checker     text REFERENCES chips.users ON DELETE CASCADE,
    -- found: what every way on carries together (`max` is the most one of them carries); out:
    -- as the site beyond answered (null from a site that does not say: `max`), in: as this
    -- site answered
    total       bigint,
    CHECK (checker IS NULL OR (dir = 'in' AND tally IS NULL AND lift IS NULL))
);
CREATE UNIQUE INDEX lift_routes_key ON chips.lift_routes
    (query, dir, coalesce(tally, '00000000-0000-0000-0000-000000000000'));
CREATE INDEX lift_routes_expires_idx ON chips.lift_routes (expires);
CREATE INDEX lift_routes_lift_idx ON chips.lift_routes (lift) WHERE lift IS NOT NULL;

-- Routes that answered found, kept for `cache_secs`: a later query or payment to the same address
-- goes out on the same tally without asking again.
CREATE TABLE chips.lift_route_cache (
    find_cuid   text NOT NULL,
    find_agent  text NOT NULL,
    tally       uuid NOT NULL,
    max         bigint NOT NULL,
    hops        integer NOT NULL,
    expires     timestamptz NOT NULL,
    PRIMARY KEY (find_agent, find_cuid, tally)
);

-- Settings of distributed lifts: one row (chips.lift_configure); no row means the defaults.
CREATE TABLE chips.lift_settings (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    life        interval NOT NULL DEFAULT '30 seconds' CHECK (life >= interval '1 second'),
    query_life  interval NOT NULL DEFAULT '5 seconds' CHECK (query_life >= interval '100 milliseconds'),
    hop_step    interval NOT NULL DEFAULT '2 seconds' CHECK (hop_step >= interval '0'),
    min_window  interval NOT NULL DEFAULT '1 second' CHECK (min_window >= interval '0'),
    max_depth   integer NOT NULL DEFAULT 8 CHECK (max_depth BETWEEN 1 AND 64),
    fanout      integer NOT NULL DEFAULT 8 CHECK (fanout BETWEEN 1 AND 64),
    cache_life  interval NOT NULL DEFAULT '1 minute' CHECK (cache_life >= interval '0'),
    ask_every   interval NOT NULL DEFAULT '2 seconds' CHECK (ask_every >= interval '100 milliseconds'),
    -- the most routes a payment is split over when no one route carries all of it (1: never split)
    parts       integer NOT NULL DEFAULT 4 CHECK (parts BETWEEN 1 AND 16),
    -- the most route queries a payment sends (one, then again while no way it found carried it
    -- and time is left: the network moves while it waits)
    tries       integer NOT NULL DEFAULT 3 CHECK (tries BETWEEN 1 AND 8)
);

-- Clearing rounds across sites (sql/rounds.sql). One row: the coordinator this site takes part
-- with (its site address, cuid `_site`), the local agent that speaks for the site, the secret
-- its users' per-round pseudonyms are keyed with; and, as a coordinator, whether and how often
-- it runs rounds for the sites that joined it.
CREATE TABLE chips.round_settings (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    coordinator jsonb,
    agent       text REFERENCES chips.agents,
    secret      bytea NOT NULL CHECK (length(secret) = 32),
    coordinate  boolean NOT NULL DEFAULT false,
    every       interval NOT NULL DEFAULT '1 minute' CHECK (every >= interval '1 second'),
    life        interval NOT NULL DEFAULT '30 seconds' CHECK (life >= interval '1 second'),
    attempts    integer NOT NULL DEFAULT 3 CHECK (attempts BETWEEN 1 AND 10),
    last_round  timestamptz
);

-- A coordinator's members: the sites that asked to take part in its rounds.
CREATE TABLE chips.round_members (
    agent      text PRIMARY KEY,
    address    jsonb NOT NULL,
    joined     timestamptz NOT NULL DEFAULT now()
);

-- A coordinator's rounds. A round commits only with every member's share (a secret each
-- member reveals when it has prepared its part and agreed with its partners; the coordinator
-- holds only their hashes, the locks, until then), so no coordinator can commit flows a member
-- refused; the void secret (SHA-256 = void_cond) is the coordinator's own.
CREATE TABLE chips.rounds (
    id            bigserial PRIMARY KEY,
    round_uuid    uuid NOT NULL UNIQUE,
    status        text NOT NULL CHECK (status IN ('collect', 'prepare', 'good', 'void')),
    attempt       integer NOT NULL DEFAULT 1,
    void_secret   bytea NOT NULL,
    void_cond     bytea NOT NULL,
    chit_date     timestamptz(3) NOT NULL,
    collect_until timestamptz NOT NULL,
    expires       timestamptz NOT NULL,
    created       timestamptz NOT NULL DEFAULT now(),
    solved        timestamptz,
    decided       timestamptz,
    reason        text,
    cost          numeric,             -- the circulation's cost (minus the debt it lowers)
    stats         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX rounds_open_idx ON chips.rounds (expires) WHERE status IN ('collect', 'prepare');

-- Each member's part in a round, at the coordinator: what it sent and where it stands.
CREATE TABLE chips.round_sites (
    round_id   bigint NOT NULL REFERENCES chips.rounds,
    agent      text NOT NULL,
    address    jsonb NOT NULL,
    status     text NOT NULL CHECK (status IN ('invited', 'graph', 'solved', 'ready', 'refused', 'absent')),
    parts      integer,                -- how many parts its graph comes in
    got        integer NOT NULL DEFAULT 0,
    bytes      bigint NOT NULL DEFAULT 0,
    attempt    integer,
    lock       bytea,                  -- SHA-256 of its share
    share      bytea,                  -- its share, once it is ready
    arcs       integer NOT NULL DEFAULT 0,  -- how many arcs its graph parts held (round_arcs)
    PRIMARY KEY (round_id, agent)
);

-- The arcs of a round's union graph, at the coordinator: pseudonyms and links only. Unlogged,
-- like a member's round_parts: a round's graph is a copy of the members' tallies for one solve,
-- about two thirds of what a round would write to the WAL otherwise (docs/architecture.md, "A
-- round's graph is unlogged"). A crash or a failover empties it; the coordinator then finds
-- fewer arcs than round_sites.arcs counts and ends the round void (chips._round_flows).
CREATE UNLOGGED TABLE chips.round_arcs (
    round_id   bigint NOT NULL REFERENCES chips.rounds,
    agent      text NOT NULL,
    k          integer NOT NULL,       -- the arc's place in its site's part
    tail       text NOT NULL,
    head       text NOT NULL,
    cap        bigint NOT NULL,
    cost       bigint NOT NULL,
    flow       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (round_id, agent, k)
);

-- A member's own arcs in a round (what each is here), and the flows the coordinator sent.
-- Unlogged, as round_arcs: a crash or a failover empties it, and a member that finds fewer arcs
-- than round_state.arcs counts refuses its part, so the round ends void (chips._round_prepare).
-- What the member moves is kept in round_moves, logged, from its check on.
CREATE UNLOGGED TABLE chips.round_parts (
    lift_id    bigint NOT NULL REFERENCES chips.lifts,
    k          integer NOT NULL,
    tally      uuid NOT NULL,
    via        text NOT NULL CHECK (via IN ('stock', 'foil', 'out', 'in')),  -- a local tally's holder's arc, or a remote half's
    tail       text NOT NULL,
    head       text NOT NULL,
    cap        bigint NOT NULL,
    cost       bigint NOT NULL,
    flow       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (lift_id, k)
);

-- A member's state in a round besides its lift: the flows received, the partner sites whose
-- agreement on the tallies it shares with them it waits for, and the work left to do in pieces
-- (sql/rounds.sql, chips.round_work): reserve its moves, release what a refused attempt
-- reserved, or settle its part good or void.
CREATE TABLE chips.round_state (
    lift_id    bigint PRIMARY KEY REFERENCES chips.lifts,
    parts      integer,
    got        integer NOT NULL DEFAULT 0,
    partners   text[] NOT NULL DEFAULT '{}',
    ready      integer,                 -- the attempt this site said ready for (its consent)
    prepared   integer,                 -- the attempt whose flows this site checked last
    work       text CHECK (work IN ('reserve', 'release', 'good', 'void')),
    reason     text,                    -- why, for work 'void'
    arcs       integer                  -- how many arcs this site kept in round_parts
);
CREATE INDEX round_state_work_idx ON chips.round_state (lift_id) WHERE work IS NOT NULL;

-- A member's moves in the attempt it checked: reserved piece by piece, then the lift record's
-- tallies and the agreements with partner sites come from them, and the pieces that settle or
-- release the part take them in the same order.
CREATE TABLE chips.round_moves (
    lift_id    bigint NOT NULL REFERENCES chips.lifts,
    n          integer NOT NULL,        -- its place in the part
    tally      uuid NOT NULL,
    local      boolean NOT NULL,        -- both halves here
    flow       bigint NOT NULL,         -- as the check counts it (extension/src/rounds.rs, Move)
    by         text NOT NULL CHECK (by IN ('stock', 'foil')),  -- the side that issues the lift chit
    units      bigint NOT NULL CHECK (units > 0),
    debtor     text NOT NULL,
    stage      smallint NOT NULL DEFAULT 0 CHECK (stage IN (0, 1, 2)),  -- to reserve, reserved, settled or released
    PRIMARY KEY (lift_id, n)
);
CREATE INDEX round_moves_stage_idx ON chips.round_moves (lift_id, stage, n);

-- What partner sites said they move on the tallies they share with this one, per attempt
-- (one may come before this site has its own flows of that attempt).
CREATE TABLE chips.round_agrees (
    lift_id    bigint NOT NULL REFERENCES chips.lifts,
    agent      text NOT NULL,
    attempt    integer NOT NULL,
    moves      jsonb NOT NULL,
    parts      integer NOT NULL DEFAULT 1,        -- an agreement comes in this many messages
    got        integer[] NOT NULL DEFAULT '{1}',  -- the parts in so far
    PRIMARY KEY (lift_id, agent, attempt)
);

-- Site settings of automatic clearing: one row. chips.clearing_configure changes it,
-- chips.clearing_tick (called by chipsd, or by cron) runs a pass when one is due.
CREATE TABLE chips.clearing_settings (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    enabled     boolean NOT NULL DEFAULT false,
    every       interval NOT NULL DEFAULT '5 minutes' CHECK (every >= interval '1 second'),
    min_units   bigint NOT NULL DEFAULT 1 CHECK (min_units >= 1),
    max_len     integer NOT NULL DEFAULT 0 CHECK (max_len >= 0),
    max_margin  double precision NOT NULL DEFAULT 0 CHECK (max_margin BETWEEN 0 AND 1),
    piece       integer NOT NULL DEFAULT 0 CHECK (piece >= 0),  -- tallies per committed piece (0: whole pass)
    continuous  boolean NOT NULL DEFAULT false,  -- also clear what changes, tick by tick
    last_run    timestamptz,
    last_lifts  integer NOT NULL DEFAULT 0,
    last_units  numeric NOT NULL DEFAULT 0
);
-- No row until the first chips.clearing_configure: readers take the defaults above (and a
-- pg_dump restore does not collide with a row the install made).

-- Chits: one row per chit per tally half. Value moves from the issuer's half to the other.
CREATE TABLE chips.chits (
    id          bigint PRIMARY KEY DEFAULT nextval('chips.chit_seq'),
    tally_id    bigint NOT NULL REFERENCES chips.tallies,
    chit_uuid   uuid NOT NULL,
    chit_type   text NOT NULL CHECK (chit_type IN ('tran', 'set', 'lift')),
    issuer      text NOT NULL CHECK (issuer IN ('stock', 'foil')),
    units       bigint CHECK (units BETWEEN 1 AND 1000000000000000),
    reference   jsonb,
    memo        text,
    chit_date   timestamptz(3) NOT NULL,
    signature   text,                   -- the issuer's Ed25519 signature over the chit document
    status      text NOT NULL CHECK (status IN ('pend', 'good', 'void')),
    value       bigint NOT NULL,        -- change of this half's balance when good
    chain_idx   integer,                -- place in the chain (good chits, once ordered)
    chain_prev  bytea,
    chain_hash  bytea,
    lift_id     bigint REFERENCES chips.lifts,   -- the lift a lift chit belongs to
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tally_id, chit_uuid),
    UNIQUE (tally_id, chain_idx),
    CHECK ((chit_type = 'set') = (units IS NULL)),
    CHECK (status <> 'good' OR chit_type = 'lift' OR signature IS NOT NULL),
    CHECK (chain_idx IS NULL OR (status = 'good' AND chain_prev IS NOT NULL AND chain_hash IS NOT NULL)),
    CHECK (chit_type = 'lift' OR lift_id IS NULL)
);
-- (lift_id, tally_id): a round settles its chits a few tallies at a time
CREATE INDEX chits_lift_idx ON chips.chits (lift_id, tally_id) WHERE lift_id IS NOT NULL;
CREATE INDEX chits_unchained_idx ON chips.chits (tally_id) WHERE status = 'good' AND chain_idx IS NULL;

-- Keys the database holds for custodial users (created with custodial => true): lets
-- integrations and simulations sign through SQL alone. Readable by the owner only.
CREATE TABLE chips.custody (
    ent        text PRIMARY KEY REFERENCES chips.users,
    seed       bytea NOT NULL CHECK (length(seed) = 32)
);

-- Voids that arrived before the tally they void (messages reordered): the late offer is ignored.
CREATE TABLE chips.tally_tombstones (
    tally_uuid uuid NOT NULL,
    ent        text NOT NULL REFERENCES chips.users,
    revision   integer NOT NULL,
    created    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tally_uuid, ent)
);

-- User access (sql/access.sql). A login ticket, issued by an admin, lets its holder register
-- one connection key for the user; the key then logs in by signing a challenge, which opens a
-- session. The gateway acts for a user only within a live session.
CREATE TABLE chips.login_tickets (
    token      text PRIMARY KEY,
    ent        text NOT NULL REFERENCES chips.users ON DELETE CASCADE,
    expires    timestamptz NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE chips.device_keys (
    ent        text NOT NULL REFERENCES chips.users ON DELETE CASCADE,
    pubkey     text NOT NULL,           -- Ed25519 public key, base64url
    label      text CHECK (char_length(label) <= 200),
    created    timestamptz NOT NULL DEFAULT now(),
    last_login timestamptz,
    PRIMARY KEY (ent, pubkey)
);
CREATE TABLE chips.login_challenges (
    nonce      text PRIMARY KEY,
    ent        text NOT NULL,
    pubkey     text NOT NULL,
    expires    timestamptz NOT NULL
);
CREATE TABLE chips.sessions (
    id         text PRIMARY KEY,
    ent        text NOT NULL REFERENCES chips.users ON DELETE CASCADE,
    pubkey     text NOT NULL,
    created    timestamptz NOT NULL DEFAULT now(),
    expires    timestamptz NOT NULL,
    ended      timestamptz
);
CREATE INDEX sessions_ent_idx ON chips.sessions (ent);

-- Each user's events (tallies, chits, lifts), numbered 1, 2, 3... per user in commit order: a
-- subscriber that holds seq n has seen exactly events 1..n. A transaction's events wait in
-- chips.events_pending until it commits; a deferred trigger (sql/access.sql,
-- chips._events_number) then numbers them under their users' head rows and writes each once.
CREATE TABLE chips.event_heads (
    ent        text PRIMARY KEY REFERENCES chips.users ON DELETE CASCADE,
    seq        bigint NOT NULL DEFAULT 0,   -- the last number given
    pruned     bigint NOT NULL DEFAULT 0    -- events up to this number were pruned
);
-- A chit's event names the user's half of the chit and the status it reports; its body is read
-- from the chit (chips.events_v), so a payment's events are not a second copy of its chits.
CREATE TABLE chips.events (
    ent        text NOT NULL,
    seq        bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('tally', 'chit', 'lift')),
    chit       bigint,                  -- a chit's event: the user's half (chips.chits.id)
    status     text,                    -- a chit's event: the chit's status it reports
    body       jsonb,                   -- any other event: what happened
    created    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ent, seq)
);
-- Events of transactions still running. Unlogged: a row lives only inside its transaction (the
-- numbering moves it to chips.events at commit), so it writes no WAL, and a crash, which aborts
-- that transaction, loses nothing. `id` keeps the order the events were made in.
CREATE UNLOGGED SEQUENCE chips.events_pending_seq;
CREATE UNLOGGED TABLE chips.events_pending (
    id         bigint NOT NULL DEFAULT nextval('chips.events_pending_seq'),
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ent        text NOT NULL,
    kind       text NOT NULL,
    chit       bigint,
    status     text,
    body       jsonb,
    fire       boolean NOT NULL DEFAULT true   -- queues the numbering (one row a statement is enough)
);
CREATE INDEX events_pending_xid_idx ON chips.events_pending (xid, id);

-- Stored files (documents besides contracts), addressed like contracts by
-- base64url(SHA-256(data)); served over HTTP by chipsd at /doc/<hash>.
CREATE TABLE chips.files (
    digest     text PRIMARY KEY,
    media_type text NOT NULL,
    data       bytea NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

-- The admin view's one-time tickets and sessions (sql/admin.sql); not dumped: they only live
-- hours.
CREATE TABLE chips.admin_tickets (
    token      text PRIMARY KEY,
    expires    timestamptz NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE chips.admin_sessions (
    id         text PRIMARY KEY,
    created    timestamptz NOT NULL DEFAULT now(),
    expires    timestamptz NOT NULL,
    ended      timestamptz
);

-- Rows of extension tables are left out of pg_dump unless marked; mark every table and sequence.
SELECT pg_catalog.pg_extension_config_dump('chips.agents', '');
SELECT pg_catalog.pg_extension_config_dump('chips.users', '');
SELECT pg_catalog.pg_extension_config_dump('chips.contracts', '');
SELECT pg_catalog.pg_extension_config_dump('chips.tallies', '');
SELECT pg_catalog.pg_extension_config_dump('chips.tickets', '');
SELECT pg_catalog.pg_extension_config_dump('chips.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('chips.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lifts', '');
SELECT pg_catalog.pg_extension_config_dump('chips.pass_circles', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_settings', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_members', '');
SELECT pg_catalog.pg_extension_config_dump('chips.rounds', '');
SELECT pg_catalog.pg_extension_config_dump('chips.rounds_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_sites', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_arcs', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_parts', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_state', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_agrees', '');
SELECT pg_catalog.pg_extension_config_dump('chips.round_moves', '');
SELECT pg_catalog.pg_extension_config_dump('chips.clearing_settings', '');
SELECT pg_catalog.pg_extension_config_dump('chips.chits', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lift_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.custody', '');
SELECT pg_catalog.pg_extension_config_dump('chips.chit_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.tally_tombstones', '');
SELECT pg_catalog.pg_extension_config_dump('chips.ent_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.tally_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.outbox_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.login_tickets', '');
SELECT pg_catalog.pg_extension_config_dump('chips.device_keys', '');
SELECT pg_catalog.pg_extension_config_dump('chips.login_challenges', '');
SELECT pg_catalog.pg_extension_config_dump('chips.sessions', '');
SELECT pg_catalog.pg_extension_config_dump('chips.event_heads', '');
SELECT pg_catalog.pg_extension_config_dump('chips.events', '');
SELECT pg_catalog.pg_extension_config_dump('chips.files', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lift_routes', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lift_routes_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lift_route_cache', '');
SELECT pg_catalog.pg_extension_config_dump('chips.lift_settings', '');
