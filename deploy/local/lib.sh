# Shared settings and helpers for the local stack scripts (sourced, not run).
# Every setting can be overridden from the environment.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR=${TALLY_STACK_DIR:-$ROOT/.stack}
TOOLS_DIR=${TALLY_TOOLS_DIR:-${HOME:-/root}/.local/share/tally}
KAFKA_PORT=${TALLY_KAFKA_PORT:-9092}
CLICKHOUSE_HTTP_PORT=${TALLY_CLICKHOUSE_HTTP_PORT:-8123}
CLICKHOUSE_TCP_PORT=${TALLY_CLICKHOUSE_TCP_PORT:-9000}
POSTGRES_PORT=${TALLY_POSTGRES_PORT:-5432}
REDIS_PORT=${TALLY_REDIS_PORT:-6379}
INGEST_PORT=${TALLY_INGEST_PORT:-8080}
AGGREGATOR_PORT=${TALLY_AGGREGATOR_PORT:-8081}
ENFORCER_PORT=${TALLY_ENFORCER_PORT:-8082}
STRIPE_FAKE_PORT=${TALLY_STRIPE_FAKE_PORT:-12111}
COLLECTOR_PORT=${TALLY_COLLECTOR_PORT:-8085}
QUERY_PORT=${TALLY_QUERY_PORT:-8086}
BILLING_PORT=${TALLY_BILLING_PORT:-8084}
POSTGRES_PASSWORD=${TALLY_POSTGRES_PASSWORD:-postgres}
NOIDA_VERSION=0.2.3
CHDB_VERSION=26.9.0
CHDB_VENV=$TOOLS_DIR/chdb-$CHDB_VERSION
# schemathesis fuzzes ingest's OpenAPI document in the tests.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=$TOOLS_DIR/schemathesis-$SCHEMATHESIS_VERSION
LOG_DIR=$STACK_DIR/logs
RUN_DIR=$STACK_DIR/run

say() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[stack] error:\033[0m %s\n' "$*" >&2; exit 1; }

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive NAME: the process recorded in RUN_DIR/NAME.pid is running.
pid_alive() {
  local file=$RUN_DIR/$1.pid
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every half second until it succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local tries=$((seconds * 2))
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

# http_ok URL [BODY]: a 2xx answer from URL (GET, or POST with BODY), using Python so that
# nothing beyond the Python every machine has is needed.
http_ok() {
  python3 - "$@" <<'PY'
import sys, urllib.request
url = sys.argv[1]
data = sys.argv[2].encode() if len(sys.argv) > 2 else None
with urllib.request.urlopen(url, data=data, timeout=2) as response:
    sys.exit(0 if 200 <= response.status < 300 else 1)
PY
}

# clickhouse_query SQL: prints the answer of the local ClickHouse (HTTP) to SQL.
clickhouse_query() {
  python3 - "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/" "$1" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], data=sys.argv[2].encode(), timeout=5) as response:
    sys.stdout.write(response.read().decode())
PY
}

postgres_url() { echo "postgres://postgres:$POSTGRES_PASSWORD@127.0.0.1:$POSTGRES_PORT/${1:-tally}"; }
