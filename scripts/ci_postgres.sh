#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the distributed-sweep test; prints its URL.
#
#   scripts/ci_postgres.sh [--no-install] [--dir DIR] [--port PORT]    start (or find running); print URL
#   scripts/ci_postgres.sh --stop [--dir DIR] [--clean]                 stop it (and delete DIR)
#
# CI:  export DISTILL_TEST_POSTGRES_URL="$(scripts/ci_postgres.sh)"
#
# Uses the PostgreSQL binaries already on the machine (pg_ctl on PATH, or Debian's
# /usr/lib/postgresql/<version>/bin); without them it installs Debian's `postgresql` package
# with apt-get (unless --no-install). The cluster lives in DIR (default /tmp/distill-ci-postgres),
# trusts local TCP connections, and listens on 127.0.0.1 only. PostgreSQL refuses to run as
# root, so as root the server runs as the `postgres` user (or `nobody`). Only the URL goes to
# stdout; everything else goes to stderr.
set -euo pipefail

DIR="${DISTILL_PG_DIR:-/tmp/distill-ci-postgres}"
PORT="${DISTILL_PG_PORT:-55432}"
DB="distill"
INSTALL=1
ACTION=start
CLEAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) INSTALL=0 ;;
    --dir) DIR="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --stop) ACTION=stop ;;
    --clean) CLEAN=1 ;;
    *) echo "ci_postgres.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

find_bin() {
  local candidates=()
  if command -v pg_ctl >/dev/null 2>&1; then
    candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
  fi
  # Newest version first.
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do candidates+=("$dir"); done
  for dir in "${candidates[@]}"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
  if [ "$ACTION" = stop ]; then
    echo "ci_postgres.sh: no PostgreSQL binaries; nothing to stop" >&2
    exit 0
  fi
  if [ "$INSTALL" = 0 ]; then
    echo "ci_postgres.sh: no PostgreSQL binaries (initdb, pg_ctl, postgres) found" >&2
    exit 3
  fi
  echo "ci_postgres.sh: installing Debian's postgresql package" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN="$(find_bin)" || { echo "ci_postgres.sh: postgresql installed but its binaries were not found" >&2; exit 3; }
fi

RUN_AS=()
OWNER="$(id -un)"
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1; then OWNER=postgres; else OWNER=nobody; fi
  if command -v runuser >/dev/null 2>&1; then
    RUN_AS=(runuser -u "$OWNER" --)
  else
    RUN_AS=(setpriv --reuid="$OWNER" --regid="$(id -g "$OWNER")" --clear-groups --)
  fi
fi
as_owner() { "${RUN_AS[@]}" "$@"; }

DATA="$DIR/data"
if [ "$ACTION" = stop ]; then
  if [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
  fi
  if [ "$CLEAN" = 1 ]; then rm -rf "$DIR"; fi
  exit 0
fi

mkdir -p "$DIR"
chmod 700 "$DIR"
if [ "$(id -u)" = 0 ]; then chown "$OWNER" "$DIR"; fi

URL="postgresql://postgres@127.0.0.1:$PORT/$DB"
if [ -f "$DATA/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  echo "ci_postgres.sh: already running in $DATA" >&2
  echo "$URL"
  exit 0
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 4; }
fi
# TCP on 127.0.0.1 only; the Unix socket inside DIR (the default /var/run/postgresql may not exist).
as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200 -c fsync=off" start >&2 \
  || { cat "$DIR/server.log" >&2; exit 5; }
if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
  as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB" >&2
fi
echo "ci_postgres.sh: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, data in $DATA" >&2
echo "$URL"
