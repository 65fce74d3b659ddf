#!/bin/sh
# Creates or upgrades Temporal's two schemas (persistence and visibility) in PostgreSQL.
# Safe to run on every `up`: setup-schema skips a database that is already versioned, and
# update-schema applies only the versions it is missing (what an image upgrade needs).
# The databases themselves are created by postgres-init.sql when the volume is first initialised.
set -eu

: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" -u "$POSTGRES_USER" "$@"
}

for db in temporal:temporal temporal_visibility:visibility; do
    name=${db%%:*}
    schema=${db##*:}
    echo "schema of $name"
    sql_tool --db "$name" setup-schema -v 0.0
    sql_tool --db "$name" update-schema -d "$SCHEMA_DIR/$schema/versioned"
done
echo "Temporal schemas are current"
