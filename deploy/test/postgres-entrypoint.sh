#!/bin/sh
# Start PostgreSQL the way the official image does: on first start, a cluster whose superuser is
# $POSTGRES_USER (password $POSTGRES_PASSWORD) with the database $POSTGRES_DB. Listens on
# 127.0.0.1:$PGPORT.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/password
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile=/tmp/password \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale > /dev/null
    rm /tmp/password
    pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses='' -k /tmp" start > /dev/null
    createdb --host=/tmp --username="$POSTGRES_USER" "$POSTGRES_DB"
    pg_ctl --pgdata="$PGDATA" --wait stop > /dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -c port="$PGPORT" -k /tmp
