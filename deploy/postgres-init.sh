#!/bin/bash
# Creates one database per name in POSTGRES_MULTIPLE_DATABASES (Prefect and MLflow each get one),
# owned by POSTGRES_USER. Run by the postgres image on its first start (an empty data volume) only.
set -euo pipefail
for db in ${POSTGRES_MULTIPLE_DATABASES//,/ }; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
