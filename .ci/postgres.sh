#!/usr/bin/env bash
# Make a PostgreSQL server with trust auth reachable on 127.0.0.1 for the test suite.
#
#   eval "$(.ci/postgres.sh)"      # then: CI=1 pytest   (CI set: a missing server fails the tests)
#
# Prints only `export NBTL_TEST_PG=...` on stdout; progress goes to stderr. Idempotent: a second
# run finds the server of the first. In order:
#   1. something already answers on 127.0.0.1:${NBTL_PG_PORT:-5432} with trust auth: use it;
#   2. a packaged cluster exists (Debian's pg_ctlcluster): start it, use it if trust auth works;
#   3. otherwise (a plain Debian machine) `apt-get install -y postgresql` if initdb is missing,
#      `initdb --auth=trust` into ${NBTL_PG_DIR:-/tmp/nbtl-ci-pg} as user postgres and
#      `pg_ctl -w start` on 127.0.0.1 with a spare port (~2 s). Packaged services do not start by
#      themselves in containers, hence the private cluster.
set -euo pipefail

PORT="${NBTL_PG_PORT:-5432}"
DIR="${NBTL_PG_DIR:-/tmp/nbtl-ci-pg}"
DB=test

log() { echo "postgres.sh: $*" >&2; }

# Trust auth over TCP as user postgres, the way the tests connect.
usable() {  # port
    pg_isready -q -h 127.0.0.1 -p "$1" -t 3 >/dev/null 2>&1 &&
        psql -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1
}

ensure_db_and_print() {  # port
    if ! psql -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc \
        "select 1 from pg_database where datname = '$DB'" | grep -q 1; then
        createdb -w -h 127.0.0.1 -p "$1" -U postgres "$DB"
    fi
    log "PostgreSQL ready on 127.0.0.1:$1"
    echo "export NBTL_TEST_PG=postgresql://postgres@127.0.0.1:$1/$DB"
}

as_postgres() {  # initdb and the server refuse to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {  # the newest installed server binaries, also when not on PATH
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 1. already running
if command -v pg_isready >/dev/null 2>&1 && usable "$PORT"; then
    ensure_db_and_print "$PORT"
    exit 0
fi

# 2. a packaged cluster that is merely stopped
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql | sort -V); do
        [ -d "/etc/postgresql/$version/main" ] || continue
        log "starting packaged cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start 1>&2 || true
    done
    if usable "$PORT"; then
        ensure_db_and_print "$PORT"
        exit 0
    fi
    log "no packaged cluster with trust auth on 127.0.0.1:$PORT"
fi

# 3. a private cluster in $DIR (reused if a previous run started it)
if [ -s "$DIR/port" ] && usable "$(cat "$DIR/port")"; then
    ensure_db_and_print "$(cat "$DIR/port")"
    exit 0
fi
BIN="$(pg_bin)"
if [ -z "$BIN" ]; then
    log "installing postgresql (apt-get)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
    BIN="$(pg_bin)"
    [ -n "$BIN" ] || { log "initdb not found after installing postgresql"; exit 1; }
fi
export PATH="$BIN:$PATH"
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir "$DIR" --shell /bin/sh postgres
fi

mkdir -p "$DIR"
if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi
chmod 700 "$DIR"
if [ ! -s "$DIR/data/PG_VERSION" ]; then
    rm -rf "$DIR/data"
    log "initdb into $DIR/data"
    as_postgres "$BIN/initdb" -D "$DIR/data" --auth=trust -U postgres -E UTF8 >&2
fi
if as_postgres "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2  # running, but not usable
fi
port=55432
while port_taken "$port"; do port=$((port + 1)); done
log "starting a private server on 127.0.0.1:$port"
as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR" start >&2 ||
    { log "server did not start; its log:"; tail -n 20 "$DIR/server.log" >&2; exit 1; }
echo "$port" >"$DIR/port"
usable "$port" || { log "server on port $port does not accept trust logins"; exit 1; }
ensure_db_and_print "$port"
