#!/usr/bin/env bash
# A PostgreSQL server on this machine, for the Optuna-on-PostgreSQL tests (tests/hpo/test_postgres.py) and for
# trying hydra.sweeper.storage=postgresql://... by hand:
#   scripts/local_postgres.sh up       install Debian's postgresql if missing, start its cluster, create the
#                                      role and database (idempotent: re-running it is quick and harmless)
#   scripts/local_postgres.sh down     stop the cluster
#   scripts/local_postgres.sh status   the cluster's state
# Needs root (it installs packages and runs pg_ctlcluster, which starts the server as `postgres`, no systemd).
# The server listens on localhost (loopback) only. The role logs in with a password (scram-sha-256, as pg_hba.conf asks
# for TCP connections); clients give it through libpq's PGPASSWORD or ~/.pgpass, never inside the URL:
#   export PGPASSWORD=<password>
#   python train.py -m hparams_search=report_cnn hydra.sweeper.storage=postgresql://cifar@127.0.0.1:5432/cifar_optuna
# Settings (environment, with defaults): CIFAR_PG_USER (cifar), CIFAR_PG_DB (cifar_optuna), CIFAR_PG_PORT
# (5432), PGPASSWORD (a fixed password for this local test server). The tests read the same variables.
set -euo pipefail

VERSION="${CIFAR_PG_VERSION:-15}"
CLUSTER=main
PG_USER="${CIFAR_PG_USER:-cifar}"
PG_DB="${CIFAR_PG_DB:-cifar_optuna}"
PG_PORT="${CIFAR_PG_PORT:-5432}"
PG_PASSWORD="${PGPASSWORD:-cifar-local-test-pw}"

log() { echo "local_postgres: $*"; }

install_packages() {
    if command -v pg_ctlcluster >/dev/null && [ -x "/usr/lib/postgresql/$VERSION/bin/postgres" ]; then
        return
    fi
    log "installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

ensure_cluster() {
    if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
        log "creating cluster $VERSION/$CLUSTER"
        pg_createcluster "$VERSION" "$CLUSTER" --port "$PG_PORT" >/dev/null
    fi
}

start_cluster() {
    if pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c && $4 == "online" {found=1} END {exit !found}'; then
        return
    fi
    # Loopback only (localhost), on the chosen port (written to the cluster's postgresql.conf, which pg_ctlcluster reads).
    pg_conftool "$VERSION" "$CLUSTER" set listen_addresses localhost
    pg_conftool "$VERSION" "$CLUSTER" set port "$PG_PORT"
    pg_ctlcluster "$VERSION" "$CLUSTER" start
    for _ in $(seq 60); do
        runuser -u postgres -- psql -p "$PG_PORT" -qAtc "select 1" >/dev/null 2>&1 && return
        sleep 0.5
    done
    log "PostgreSQL did not start: /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log" && exit 1
}

# The role and database, created when missing; the role's password set every time (so PGPASSWORD rules). The SQL
# goes through stdin, not psql's arguments: a password on a command line is visible to every user in `ps`.
create_role_and_database() {
    local password="${PG_PASSWORD//\'/\'\'}"
    runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$PG_USER') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER')
\gexec
ALTER ROLE "$PG_USER" PASSWORD '$password';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')
\gexec
SQL
}

check_login() {
    PGPASSWORD="$PG_PASSWORD" psql "host=127.0.0.1 port=$PG_PORT user=$PG_USER dbname=$PG_DB" -qAtc "select 1" >/dev/null
    log "up: postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB (password: \$PGPASSWORD or ~/.pgpass)"
}

up() {
    install_packages
    ensure_cluster
    start_cluster
    create_role_and_database
    check_login
}

down() {
    if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" \
        '$1 == v && $2 == c && $4 == "online" {found=1} END {exit !found}'; then
        pg_ctlcluster "$VERSION" "$CLUSTER" stop -m fast
        log "stopped"
    else
        log "not running"
    fi
}

case "${1:-}" in
up) up ;;
down) down ;;
status) pg_lsclusters ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
