#!/bin/bash
# Creates MLflow's database beside adamtune's (the Optuna studies), owned by the same user.
#
# The official postgres image runs the scripts in /docker-entrypoint-initdb.d once, when it initializes
# an EMPTY data volume; it skips them on every later start. On a volume initialized before this script
# existed, create the database by hand:
#   docker compose exec postgres sh -c 'createdb -U "$POSTGRES_USER" -O "$POSTGRES_USER" "$MLFLOW_DB"'
#
# No `exit` and no `set -u` here: the image sources (rather than runs) a script that lost its executable bit.
set -eo pipefail

mlflow_db="${MLFLOW_DB:-mlflow}"
if [ "$mlflow_db" = "$POSTGRES_DB" ]; then
    echo "10-create-mlflow-db.sh: MLFLOW_DB is POSTGRES_DB ($mlflow_db); MLflow shares that database"
else
    # psql quotes :"db" and :"owner" as identifiers, whatever characters they hold.
    psql -v ON_ERROR_STOP=1 -v db="$mlflow_db" -v owner="$POSTGRES_USER" \
         --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'EOSQL'
CREATE DATABASE :"db" OWNER :"owner";
EOSQL
    echo "10-create-mlflow-db.sh: created database $mlflow_db"
fi
