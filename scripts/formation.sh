#!/usr/bin/env bash
# A chips site as a high-availability formation with pg_auto_failover (Debian's
# postgresql-15-auto-failover): a monitor, a primary and a synchronous secondary, all on
# 127.0.0.1, in DIR (docs/operations.md, "High availability").
#
#   bash scripts/formation.sh start DIR PORT   # monitor on PORT, nodes on PORT+1 and PORT+2;
#                                              # prints the site's multi-host connection string
#   bash scripts/formation.sh primary DIR      # the node that is primary now (node1 or node2)
#   bash scripts/formation.sh kill DIR NODE    # loses NODE's machine: SIGKILL its keeper and postmaster
#   bash scripts/formation.sh rejoin DIR NODE  # starts NODE's keeper again: it rejoins as secondary
#   bash scripts/formation.sh state DIR        # pg_autoctl show state
#   bash scripts/formation.sh stop DIR         # stops everything and removes DIR
#
# The monitor checks the nodes every second and calls a node unhealthy after 2 s (the defaults
# are 5 s and 20 s), so a lost primary is replaced in a few seconds; a DBA may keep the defaults.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cmd=${1:?usage: formation.sh start|primary|kill|rejoin|state|stop DIR [PORT|NODE]}
DIR=${2:?usage: formation.sh $cmd DIR}

ensure_formation_deps() {
    command -v pg_autoctl >/dev/null && return
    say "installing pg_auto_failover (postgresql-15-auto-failover)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-auto-failover pg-auto-failover-cli >/dev/null
}

# pg_autoctl's environment: its state kept under DIR (not in the postgres user's home).
AUTOCTL_ENV=(XDG_CONFIG_HOME="$DIR/config" XDG_DATA_HOME="$DIR/share" XDG_RUNTIME_DIR="$DIR/run"
             PATH="$PG_BIN:$PATH" PGHOST=127.0.0.1)

# pg_autoctl as the postgres user.
autoctl() {
    as_postgres env "${AUTOCTL_ENV[@]}" pg_autoctl "$@"
}

psql_at() { # PORT DB SQL
    as_postgres "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$1" -d "$2" -c "$3"
}

# The keeper of a node (or the monitor), in the background: `pg_autoctl create ... --run` the
# first time, `pg_autoctl run` after.
keeper() { # NAME ARGS...
    local name=$1; shift
    # (its own session: pg_autoctl renames its processes, so they are found by process group)
    as_postgres bash -c "cd '$DIR' || exit 1; setsid env ${AUTOCTL_ENV[*]@Q} pg_autoctl $* \
        >>'$DIR/$name.log' 2>&1 < /dev/null & echo \$! > '$DIR/$name.pid'"
}

# SIGKILL a keeper's whole process group, and its postmaster.
lose() { # NAME
    local pg
    pg=$(cat "$DIR/$1.pid" 2>/dev/null || true)
    [ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null || true
    pg=$(head -1 "$DIR/$1/postmaster.pid" 2>/dev/null || true)
    [ -n "$pg" ] && kill -KILL "$pg" 2>/dev/null || true
}

node_port() { sed -n 's/^port=//p' "$DIR/$1.port"; }

state_of() { # NODE: its reported and assigned state
    autoctl show state --pgdata "$DIR/monitor" 2>/dev/null | awk -F'|' -v n="$1" \
        '{gsub(/ /, "", $1); gsub(/ /, "", $6); gsub(/ /, "", $7)} $1 == n {print $6 "/" $7}'
}

is_state() { [ "$(state_of "$1")" = "$2" ]; } # NODE REPORTED/ASSIGNED

wait_for() { # WHAT SECONDS COMMAND...
    local what=$1 secs=$2; shift 2
    for _ in $(seq 1 $((secs * 4))); do
        if "$@"; then return 0; fi
        sleep 0.25
    done
    echo "formation: timed out waiting for $what" >&2
    autoctl show state --pgdata "$DIR/monitor" >&2 || true
    return 1
}

case "$cmd" in
start)
    PORT=${3:?usage: formation.sh start DIR PORT}
    ensure_formation_deps
    rm -rf "$DIR"
    mkdir -p "$DIR/run"
    touch "$DIR/monitor.log" "$DIR/node1.log" "$DIR/node2.log"
    chown -R postgres: "$DIR"
    echo "port=$((PORT + 1))" >"$DIR/node1.port"
    echo "port=$((PORT + 2))" >"$DIR/node2.port"
    autoctl create monitor --pgdata "$DIR/monitor" --pgport "$PORT" --hostname 127.0.0.1 \
        --auth trust --no-ssl --pgctl "$PG_BIN/pg_ctl" >>"$DIR/monitor.log" 2>&1
    # loopback only (pg_autoctl starts the monitor's Postgres on every address by default)
    autoctl config set --pgdata "$DIR/monitor" postgresql.listen_addresses 127.0.0.1 >>"$DIR/monitor.log" 2>&1
    keeper monitor run --pgdata "$DIR/monitor"
    wait_for "the monitor" 30 psql_at "$PORT" pg_auto_failover "SELECT 1" >/dev/null 2>&1
    for setting in health_check_period=1000 health_check_timeout=1000 health_check_retry_delay=500 \
                   health_check_max_retries=1 node_considered_unhealthy_timeout=2000 primary_demote_timeout=5000; do
        psql_at "$PORT" pg_auto_failover "ALTER SYSTEM SET pgautofailover.${setting%%=*} = ${setting#*=}" >/dev/null
    done
    psql_at "$PORT" pg_auto_failover "SELECT pg_reload_conf()" >/dev/null
    monitor="postgres://autoctl_node@127.0.0.1:$PORT/pg_auto_failover?sslmode=disable"
    for n in node1 node2; do
        keeper "$n" create postgres --pgdata "$DIR/$n" --pgport "$(node_port "$n")" --hostname 127.0.0.1 \
            --listen 127.0.0.1 --auth trust --no-ssl --name "$n" --dbname postgres --monitor "$monitor" \
            --pgctl "$PG_BIN/pg_ctl" --run
        if [ "$n" = node1 ]; then
            wait_for "node1 to be primary" 60 is_state node1 single/single
        fi
    done
    # the secondary's base backup waits for a checkpoint, which by default is spread over minutes
    for _ in $(seq 1 240); do
        [ "$(state_of node2)" = "secondary/secondary" ] && break
        psql_at "$(node_port node1)" postgres "CHECKPOINT" >/dev/null 2>&1 || true
        sleep 0.5
    done
    wait_for "node2 to be a synchronous secondary" 10 is_state node2 secondary/secondary
    wait_for "node1 to be a primary with a secondary" 30 is_state node1 primary/primary
    echo "host=127.0.0.1,127.0.0.1 port=$(node_port node1),$(node_port node2) user=postgres target_session_attrs=read-write"
    ;;
primary)
    for n in node1 node2; do
        # (reported and assigned alike: a lost primary still shows "primary" as its last report)
        case "$(state_of "$n")" in
            primary/primary | wait_primary/wait_primary | single/single) echo "$n"; exit 0 ;;
        esac
    done
    exit 1
    ;;
kill)
    NODE=${3:?usage: formation.sh kill DIR NODE}
    lose "$NODE"
    ;;
rejoin)
    NODE=${3:?usage: formation.sh rejoin DIR NODE}
    keeper "$NODE" run --pgdata "$DIR/$NODE"
    wait_for "$NODE to rejoin as secondary" 120 is_state "$NODE" secondary/secondary
    ;;
state)
    autoctl show state --pgdata "$DIR/monitor"
    ;;
stop)
    [ -d "$DIR" ] || exit 0
    # the keepers first (so nothing starts a server again), then each server stops with its
    # processes (a SIGKILLed postmaster leaves the monitor's health-check worker and logger
    # running), then SIGKILL for anything that would not stop
    for d in node1 node2 monitor; do
        pg=$(cat "$DIR/$d.pid" 2>/dev/null || true)
        [ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null || true
    done
    sleep 0.5
    for d in node1 node2 monitor; do
        [ -f "$DIR/$d/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$DIR/$d" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    done
    for d in node1 node2 monitor; do
        lose "$d"
    done
    rm -rf "$DIR"
    ;;
*)
    echo "formation.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
