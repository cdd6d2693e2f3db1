#!/bin/bash
# Creates one database per name in POSTGRES_MULTIPLE_DATABASES (Prefect and MLflow each get one).
set -euo pipefail
for db in ${POSTGRES_MULTIPLE_DATABASES//,/ }; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" -c "CREATE DATABASE $db;"
done
