#!/bin/bash
# Stand-in entrypoint (see Dockerfile): on the first start, initdb with the
# user, password and database of the environment; then the server.
set -euo pipefail

fail() {
  echo "docker-entrypoint: $*" >&2
  exit 1
}

# NAME or NAME_FILE (the file's content), not both.
from_file() {
  local name=$1 default=${2:-}
  local file_name="${name}_FILE"
  local value=${!name:-} file=${!file_name:-}
  if [[ -n $value && -n $file ]]; then
    fail "both $name and $file_name are set; use one"
  fi
  if [[ -n $file ]]; then
    [[ -r $file ]] || fail "$file_name=$file cannot be read"
    value=$(<"$file")
  fi
  printf -v "$name" '%s' "${value:-$default}"
  export "${name?}"
  unset "$file_name"
}

if [[ ${1:-} == -* ]]; then
  set -- postgres "$@"
fi

if [[ ${1:-} != postgres ]]; then
  exec "$@"
fi

if [[ $(id -u) == 0 ]]; then
  install --directory --owner=postgres --group=postgres --mode=0700 "$PGDATA"
  install --directory --owner=postgres --group=postgres --mode=0775 /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  from_file POSTGRES_USER postgres
  from_file POSTGRES_PASSWORD
  from_file POSTGRES_DB "$POSTGRES_USER"
  [[ -n $POSTGRES_PASSWORD ]] || fail "the database is not initialised and no password is set: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
  echo "docker-entrypoint: initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
  printf '%s\n' "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [[ $POSTGRES_DB != postgres ]]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
      --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "docker-entrypoint: initialised"
fi
unset POSTGRES_PASSWORD

exec "$@"
