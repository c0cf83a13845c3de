#!/usr/bin/env bash
# Brings up Tally's local stack on 127.0.0.1 and prepares it:
#   * a Kafka-protocol broker (noida-db),
#   * ClickHouse 26.9 (the chdb-core wheel, serving HTTP and native),
#   * PostgreSQL (the machine's; installed with apt-get if absent),
# then applies the PostgreSQL migrations and the ClickHouse DDL and creates the topics.
# Installs only what is missing; running it again is harmless. Stop with deploy/local/down.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_BIN=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
NOIDA=$CARGO_BIN/noida-db

install_noida() {
  if [ -x "$NOIDA" ] && "$NOIDA" version 2>/dev/null | grep -q "$NOIDA_VERSION"; then return; fi
  say "installing noida-db $NOIDA_VERSION (the Kafka-protocol broker; a few minutes on 2 cores)"
  cargo install noida-db --version "$NOIDA_VERSION" --locked --no-default-features --features kafka \
    >"$LOG_DIR/install-noida.log" 2>&1 \
    || die "installing noida-db failed: see $LOG_DIR/install-noida.log (cargo must reach crates.io)"
}

install_chdb() {
  if "$CHDB_VENV/bin/python" -c "import chdb._chdb" >/dev/null 2>&1; then return; fi
  say "installing ClickHouse $CHDB_VERSION (PyPI chdb-core) into $CHDB_VENV"
  if ! python3 -m venv "$CHDB_VENV" >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "python3 -m venv failed: install Python's venv module"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
      || die "installing python3-venv failed; install it and run again"
    python3 -m venv "$CHDB_VENV" || die "python3 -m venv $CHDB_VENV failed"
  fi
  "$CHDB_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "chdb-core==$CHDB_VERSION" \
    >"$LOG_DIR/install-chdb.log" 2>&1 \
    || die "installing chdb-core==$CHDB_VERSION failed: see $LOG_DIR/install-chdb.log (pip must reach PyPI)"
}

ensure_postgres() {
  if ! port_open "$POSTGRES_PORT"; then
    if ! command -v pg_ctlcluster >/dev/null; then
      command -v apt-get >/dev/null || die "PostgreSQL is not running on 127.0.0.1:$POSTGRES_PORT and apt-get is absent: install PostgreSQL 15"
      say "installing PostgreSQL (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >"$LOG_DIR/install-postgres.log" 2>&1 \
        || die "installing PostgreSQL failed: see $LOG_DIR/install-postgres.log"
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    wait_for postgres 30 port_open "$POSTGRES_PORT" \
      || die "PostgreSQL did not start on 127.0.0.1:$POSTGRES_PORT: see /var/log/postgresql/"
  fi
  # Password login works whatever the server's auth method (trust here, scram-sha-256 on a fresh install).
  if ! PGPASSWORD=$POSTGRES_PASSWORD psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    (cd / && su postgres -c "psql -p $POSTGRES_PORT -qc \"ALTER USER postgres PASSWORD '$POSTGRES_PASSWORD'\"") >/dev/null 2>&1 \
      || die "cannot log in to PostgreSQL on 127.0.0.1:$POSTGRES_PORT as postgres: set TALLY_POSTGRES_PASSWORD to its password"
  fi
}

# refuse_taken_port NAME PORT: fail with advice when PORT is held by something that is not ours.
refuse_taken_port() {
  port_open "$2" && die "port $2 (for $1) is taken by another process: stop it, or pick another port with the TALLY_*_PORT variables (see README)"
  return 0
}

start_kafka() {
  if pid_alive kafka; then return; fi
  refuse_taken_port kafka "$KAFKA_PORT"
  mkdir -p "$STACK_DIR/kafka"
  say "starting the Kafka-protocol broker on 127.0.0.1:$KAFKA_PORT"
  setsid nohup "$NOIDA" start --only kafka --kafka-port "$KAFKA_PORT" --data-dir "$STACK_DIR/kafka" \
    >>"$LOG_DIR/kafka.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/kafka.pid"
  wait_for kafka 60 port_open "$KAFKA_PORT" || die "the broker did not start: see $LOG_DIR/kafka.log"
}

start_clickhouse() {
  if pid_alive clickhouse; then return; fi
  refuse_taken_port "clickhouse http" "$CLICKHOUSE_HTTP_PORT"
  refuse_taken_port "clickhouse native" "$CLICKHOUSE_TCP_PORT"
  mkdir -p "$STACK_DIR/clickhouse/data"
  cat >"$STACK_DIR/clickhouse/config.xml" <<XML
<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
</clickhouse>
XML
  say "starting ClickHouse on 127.0.0.1:$CLICKHOUSE_HTTP_PORT (http) and :$CLICKHOUSE_TCP_PORT (native)"
  setsid nohup "$CHDB_VENV/bin/python" "$ROOT/deploy/local/clickhouse_server.py" \
    "$STACK_DIR/clickhouse" "$STACK_DIR/clickhouse/data" >>"$LOG_DIR/clickhouse.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/clickhouse.pid"
  wait_for clickhouse 120 http_ok "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" \
    || die "ClickHouse did not answer: see $LOG_DIR/clickhouse.log"
}

write_env() {
  cat >"$STACK_DIR/env" <<ENV
export TALLY_KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT
export TALLY_CLICKHOUSE__URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
export TALLY_POSTGRES__URL=$(postgres_url tally)
export TALLY_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export TALLY_TEST_CLICKHOUSE_URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
export TALLY_TEST_POSTGRES_URL=$(postgres_url postgres)
ENV
}

setup_schemas() {
  say "building and running tally-admin setup"
  # shellcheck disable=SC1091
  source "$STACK_DIR/env"
  (cd "$ROOT" && cargo run --quiet -p tally-admin -- setup --platform-tables) \
    || die "setup failed (see above): a build error, or a dependency that did not answer"
}

main() {
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$TOOLS_DIR"
  install_noida
  install_chdb
  ensure_postgres
  start_kafka
  start_clickhouse
  write_env
  setup_schemas
  cat <<DONE

Tally's local stack is up (data in $STACK_DIR, logs in $LOG_DIR):
  Kafka protocol   127.0.0.1:$KAFKA_PORT  (topics usage-events, usage-events-dlq)
  ClickHouse       http://127.0.0.1:$CLICKHOUSE_HTTP_PORT  native 127.0.0.1:$CLICKHOUSE_TCP_PORT  (database tally)
  PostgreSQL       $(postgres_url tally | sed "s/:$POSTGRES_PASSWORD@/:***@/")
Environment for services and tests:  source $STACK_DIR/env
Stop it with:                        deploy/local/down.sh
DONE
}

main "$@"
