# Shared by scripts/demo.sh and scripts/test.sh: install what is missing, build and install the
# extension, and run private PostgreSQL 15 clusters under the repository.
# shellcheck shell=bash

PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The median of the numbers on stdin, one per line (benchmarks report medians).
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# apt packages, cargo-pgrx and `cargo pgrx init`, each only when missing.
# Extra Debian packages may be named (the tests add chromium, for the admin view's browser test).
ensure_deps() {
    local missing=()
    for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo libpq-dev "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        local SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (takes several minutes once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -q "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
        say "cargo pgrx init --pg15"
        cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
    fi
}

# Build the extension and install it into the system PostgreSQL 15 directories.
install_extension() {
    say "building and installing the chips extension"
    local log="$REPO/target/pgrx-install.log"
    mkdir -p "$REPO/target"
    (cd "$REPO/extension" && cargo pgrx install --pg-config "$PG_CONFIG" "$@") >"$log" 2>&1 ||
        { tail -50 "$log"; return 1; }
    # (`CREATE EXTENSION chips VERSION '0.1.0'` then works, as the upgrade test needs)
    install_released ""
}

# install_released ROOT: the install scripts of released versions (cargo pgrx installs only this
# version's and the upgrade scripts) into PostgreSQL's extension directory under ROOT ("" for
# the system's; a package's root). They must stay as released (extension/released/SHA256SUMS).
install_released() {
    (cd "$REPO/extension/released" && sha256sum --quiet -c SHA256SUMS) ||
        { echo "extension/released/ was edited: a released install script never changes" >&2; return 1; }
    install -m 644 "$REPO"/extension/released/chips--*.sql "$1$("$PG_CONFIG" --sharedir)/extension/"
}

# Run a command as the postgres user (initdb refuses root).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# Where private clusters live: under the repository (.pgdata/) when the postgres user can reach
# it and socket paths stay short; otherwise (a checkout under /root, a long path) in /tmp.
cluster_base() {
    local base=$REPO/.pgdata
    if [ ${#base} -gt 60 ] || ! runuser -u postgres -- test -x "$REPO" 2>/dev/null; then
        base=/tmp/chips-pgdata-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
    fi
    echo "$base"
}

# cluster_start DIR PORT: a private cluster in DIR, on 127.0.0.1:PORT, socket in DIR/sock.
# CLUSTER_OPTS: more server settings (`-c name=value ...`), e.g. a benchmark's shared_buffers.
cluster_start() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    chown postgres: "$dir" 2>/dev/null || true
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$PG_BIN/initdb" -D "$dir/data" --auth=trust --username=postgres \
            --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log"; return 1; }
        as_postgres mkdir -p "$dir/sock"
    fi
    if as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        return 0
    fi
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c max_connections=200 ${CLUSTER_OPTS:-}" start >/dev/null
}

# cluster_fresh DIR PORT: an empty private cluster, whatever an interrupted run left in DIR
# (a cluster still running, or its files).
cluster_fresh() {
    cluster_stop "$1"
    rm -rf "$1"
    cluster_start "$1" "$2"
}

# What every benchmark with chipsd sets up: dependencies, the extension and chipsd with the
# examples in release builds, and a fresh private cluster in $(cluster_base)/$1 on port
# ${CHIPS_BENCH_PORT:-$2}, stopped and removed when the script exits. Sets BENCH_DSN.
chipsd_bench() {
    ensure_deps
    install_extension --release
    BENCH_DIR=$(cluster_base)/$1
    local port=${CHIPS_BENCH_PORT:-$2}
    cluster_fresh "$BENCH_DIR" "$port"
    trap 'cluster_stop "$BENCH_DIR"; rm -rf "$BENCH_DIR"' EXIT
    cd "$REPO"
    say "building chipsd and the benchmark (release)"
    cargo build -q --release -p chipsd --examples --bins
    BENCH_DSN="host=127.0.0.1 port=$port user=postgres"
}

cluster_stop() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# load_network CSV: a fresh database `bench` (reached with the PSQL array, files staged in WORK,
# which the server can read) with an obligation network `debtor,creditor,amount` (header line
# skipped) as open local tallies: rows written directly, triggers off, placeholder signatures.
# Loading hundreds of thousands of tallies through the signed protocol would take hours and is
# not what the clearing benchmarks measure.
load_network() {
    local csv=$1
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
    tail -n +2 "$csv" > "$WORK/rows.csv"
    "${PSQL[@]}" -d bench <<SQL
CREATE EXTENSION chips;
CREATE TEMP TABLE obl (debtor text, creditor text, amount bigint);
\copy obl FROM '$WORK/rows.csv' WITH (FORMAT csv)
DELETE FROM obl WHERE debtor = creditor OR amount <= 0;
SET session_replication_role = replica;
INSERT INTO chips.agents (agent, local) VALUES (repeat('A', 43), true);
INSERT INTO chips.users (ent, cuid, agent, name, username)
SELECT 'u' || x, 'u' || x, repeat('A', 43), 'u' || x, 'bench_u' || x
FROM (SELECT debtor FROM obl UNION SELECT creditor FROM obl) n(x);
CREATE TEMP TABLE t AS
SELECT gen_random_uuid() AS u, 'u' || debtor AS d, 'u' || creditor AS c, amount FROM obl;
INSERT INTO chips.tallies (ent, part_ent, tally_uuid, side, status, contract, hold_cert,
    part_cert, hold_sig, part_sig, digest, chain_tip, hold_terms, net_good, net_pend)
SELECT c, d, u, 'stock', 'open', 'bench', '{}'::jsonb, '{}'::jsonb, 'x', 'x', sha256(u::text::bytea),
       sha256(u::text::bytea), jsonb_build_object('limit', amount), amount, amount FROM t
UNION ALL
SELECT d, c, u, 'foil', 'open', 'bench', '{}'::jsonb, '{}'::jsonb, 'x', 'x', sha256(u::text::bytea),
       sha256(u::text::bytea), '{}'::jsonb, -amount, -amount FROM t;
RESET session_replication_role;
ANALYZE chips.users, chips.tallies;
SQL
}

# network_payers N QUERY: in a network load_network made, N of the tallies QUERY selects (columns
# tally, creditor; one tally per creditor) get a payer (scripts/bench/payers.sql says how).
# $WORK/pay.sql is the pgbench script (client n pays 1 as payer n mod N).
network_payers() {
    local n=$1 query=$2
    "${PSQL[@]}" -d bench -c "CREATE TABLE public.bench_candidates AS
        SELECT x.tally, x.creditor FROM ($query) x ORDER BY random() LIMIT $n" >/dev/null
    "${PSQL[@]}" -d bench -v ON_ERROR_STOP=1 -f "$REPO/scripts/bench/payers.sql" >/dev/null
    cat > "$WORK/pay.sql" <<SQL
\\set n :client_id % $n
\\if :first
\\set first 0
SELECT who FROM public.bench_pay WHERE n = :n \\gset
SET ROLE :who;
\\endif
SELECT chips.pay(tally, 1, 'bench') FROM public.bench_pay WHERE n = :n;
SQL
}

# payers_unsound: how many of the payers' tally halves fail their chain audit or moved by other
# than the chits written since network_payers (0 for a sound run).
payers_unsound() {
    "${PSQL[@]}" -d bench -At -c "
    SELECT (SELECT count(*) FROM public.bench_pay b, chips.tally_audit(b.tally) a WHERE NOT a.ok AND a.check_name = 'chain')
         + (SELECT count(*) FROM public.bench_open o JOIN chips.tallies t ON t.id = o.id
            WHERE t.net_good - o.net_good <> (SELECT coalesce(sum(c.value), 0) FROM chips.chits c
                                              WHERE c.tally_id = t.id AND c.status = 'good'
                                                AND c.id > o.after))"
}
