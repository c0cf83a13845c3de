#!/usr/bin/env bash
# Brings up Tally's local stack on 127.0.0.1 and prepares it:
#   * a Kafka-protocol broker (noida-db),
#   * ClickHouse 26.9 (the chdb-core wheel, serving HTTP and native),
#   * PostgreSQL (the machine's; installed with apt-get if absent),
#   * Redis (the machine's, or one started here; installed with apt-get if absent), where the
#     enforcer keeps rate-limit state shared by its replicas,
# then applies the PostgreSQL migrations and the ClickHouse DDL, creates the topics, and runs the
# pipeline's services that exist so far (ingest, aggregator, enforcer), with a demo tenant, its API key and a first event.
# Installs only what is missing; running it again is harmless. Stop with deploy/local/down.sh.
# `--stack-only` stops after the stack (what CI's tests need).
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

# make_venv DIR: a Python virtual environment, installing python3-venv where it is missing.
make_venv() {
  python3 -m venv "$1" >/dev/null 2>&1 && return
  command -v apt-get >/dev/null || die "python3 -m venv failed: install Python's venv module"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
    || die "installing python3-venv failed; install it and run again"
  python3 -m venv "$1" || die "python3 -m venv $1 failed"
}

install_chdb() {
  if "$CHDB_VENV/bin/python" -c "import chdb._chdb" >/dev/null 2>&1; then return; fi
  say "installing ClickHouse $CHDB_VERSION (PyPI chdb-core) into $CHDB_VENV"
  make_venv "$CHDB_VENV"
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

# apt_install PACKAGE...: installs Debian packages (once per machine).
apt_install() {
  command -v apt-get >/dev/null || die "$* missing and apt-get is absent: install $*"
  say "installing $* (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$LOG_DIR/install-$1.log" 2>&1 \
    || die "installing $* failed: see $LOG_DIR/install-$1.log"
}

# Tools the tests run besides the stack: Redis servers of their own (outage and cluster tests),
# openssl (RSA keys for JWTs), faketime (a replica whose clock is minutes off), Chromium and
# chromedriver (the console's browser test), Prometheus and promtool (the alert rules' tests).
ensure_test_tools() {
  command -v redis-server >/dev/null || apt_install redis-server
  command -v openssl >/dev/null || apt_install openssl
  command -v faketime >/dev/null || apt_install faketime
  # The alert rules' tests and the alert end-to-end test: promtool and a Prometheus server.
  { command -v promtool >/dev/null && command -v prometheus >/dev/null; } || apt_install prometheus
  # The console's browser test: headless Chromium driven through chromedriver.
  { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
  if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version >/dev/null 2>&1; then
    say "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into $SCHEMATHESIS_VENV"
    make_venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
      >"$LOG_DIR/install-schemathesis.log" 2>&1 \
      || die "installing schemathesis==$SCHEMATHESIS_VERSION failed: see $LOG_DIR/install-schemathesis.log (pip must reach PyPI)"
  fi
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if port_open "$REDIS_PORT"; then return; fi
  say "starting Redis on 127.0.0.1:$REDIS_PORT (keeps nothing on disk)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" >/dev/null \
    || die "redis-server did not start: see $LOG_DIR/redis.log"
  wait_for redis 20 port_open "$REDIS_PORT" || die "Redis did not start on 127.0.0.1:$REDIS_PORT: see $LOG_DIR/redis.log"
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
export TALLY_TELEMETRY__FORMAT=text
export TALLY_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export TALLY_TEST_CLICKHOUSE_URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
export TALLY_TEST_POSTGRES_URL=$(postgres_url postgres)
export TALLY_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export TALLY_ENFORCER__RATE__STORE=redis
export TALLY_ENFORCER__RATE__REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export TALLY_TEST_SCHEMATHESIS=$SCHEMATHESIS_VENV/bin/schemathesis
export TALLY_TEST_CHDB_PYTHON=$CHDB_VENV/bin/python
export TALLY_QUERY__ENFORCER_URL=http://127.0.0.1:$ENFORCER_PORT
ENV
}

setup_schemas() {
  say "building and running tally-admin setup"
  # shellcheck disable=SC1091
  source "$STACK_DIR/env"
  (cd "$ROOT" && cargo run --quiet -p tally-admin -- setup --platform-tables) \
    || die "setup failed (see above): a build error, or a dependency that did not answer"
}

admin() { (cd "$ROOT" && cargo run --quiet -p tally-admin -- "$@"); }

# start_service NAME PORT LISTEN_VARIABLE [HEALTH_PATH]: builds tally-NAME and (re)starts it in the
# background with its listener on 127.0.0.1:PORT, then waits until HEALTH_PATH (/readyz) answers.
start_service() {
  local name=$1 port=$2 listen_var=$3 health=${4:-/readyz}
  say "building tally-$name"
  (cd "$ROOT" && cargo build --quiet -p "tally-$name") || die "building tally-$name failed (see above)"
  local target
  target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  if pid_alive "$name"; then
    say "restarting $name"
    kill -TERM "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true
    wait_for "$name to stop" 20 bash -c "! kill -0 $(cat "$RUN_DIR/$name.pid") 2>/dev/null"
  fi
  refuse_taken_port "$name" "$port"
  env "$listen_var=127.0.0.1:$port" setsid nohup "$target/debug/tally-$name" \
    >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  wait_for "$name" 60 http_ok "http://127.0.0.1:$port$health" || die "$name did not become ready: see $LOG_DIR/$name.log"
}

# The Stripe fake (no machine here reaches Stripe) keeps its state in .stack/stripe-fake.json.
start_stripe_fake() {
  TALLY_STRIPE_FAKE_STATE=$STACK_DIR/stripe-fake.json start_service stripe-fake "$STRIPE_FAKE_PORT" \
    TALLY_STRIPE_FAKE_LISTEN /_fake/health
}

# `--one-process`: every Tally role in one `tally dev` process (each on its usual port), after the
# demo data and the Stripe fake's meters it bills to exist.
start_one_process() {
  local name
  for name in ingest aggregator enforcer collector query; do
    if pid_alive "$name"; then
      say "stopping $name (one process runs every role)"
      kill -TERM "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true
      wait_for "$name to stop" 20 bash -c "! kill -0 $(cat "$RUN_DIR/$name.pid") 2>/dev/null"
      rm -f "$RUN_DIR/$name.pid"
    fi
  done
  start_stripe_fake
  seed_demo
  seed_tenant_data
  prepare_billing
  say "building tally"
  (cd "$ROOT" && cargo build --quiet -p tally) || die "building tally failed (see above)"
  local target
  target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  if pid_alive tally-dev; then
    say "restarting tally dev"
    kill -TERM "$(cat "$RUN_DIR/tally-dev.pid")" 2>/dev/null || true
    wait_for "tally dev to stop" 30 bash -c "! kill -0 $(cat "$RUN_DIR/tally-dev.pid") 2>/dev/null"
  fi
  for port in "$INGEST_PORT" "$AGGREGATOR_PORT" "$ENFORCER_PORT" "$COLLECTOR_PORT" "$QUERY_PORT" "$BILLING_PORT"; do
    refuse_taken_port "tally dev" "$port"
  done
  env TALLY_HTTP__LISTEN="127.0.0.1:$INGEST_PORT" TALLY_AGGREGATOR__LISTEN="127.0.0.1:$AGGREGATOR_PORT" \
    TALLY_ENFORCER__LISTEN="127.0.0.1:$ENFORCER_PORT" TALLY_COLLECTOR__LISTEN="127.0.0.1:$COLLECTOR_PORT" \
    TALLY_QUERY__LISTEN="127.0.0.1:$QUERY_PORT" TALLY_BILLING__LISTEN="127.0.0.1:$BILLING_PORT" \
    TALLY_BILLING__STRIPE_URL="http://127.0.0.1:$STRIPE_FAKE_PORT" TALLY_BILLING__STRIPE_KEY=sk_test_local \
    setsid nohup "$target/debug/tally" dev >>"$LOG_DIR/tally-dev.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/tally-dev.pid"
  for port in "$INGEST_PORT" "$AGGREGATOR_PORT" "$ENFORCER_PORT" "$COLLECTOR_PORT" "$QUERY_PORT" "$BILLING_PORT"; do
    wait_for "tally dev on port $port" 90 http_ok "http://127.0.0.1:$port/readyz" \
      || die "tally dev did not become ready: see $LOG_DIR/tally-dev.log"
  done
}

# A demo tenant of the platform's registry and an API key for it, made once.
seed_demo() {
  PGPASSWORD=$POSTGRES_PASSWORD psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d tally -qc \
    "INSERT INTO tenant (id, name, tier) VALUES ('demo', 'Demo tenant', 'STANDARD') ON CONFLICT (id) DO NOTHING" \
    || die "cannot create the demo tenant"
  if [ ! -s "$STACK_DIR/demo-key" ]; then
    admin api-key create --tenant demo --label local-demo | grep '^tly_' >"$STACK_DIR/demo-key" \
      || die "cannot create the demo API key"
  fi
  # The console's sign-in key: reads every tenant's usage and limits, sends and checks nothing.
  if [ ! -s "$STACK_DIR/analyst-key" ]; then
    admin api-key create --analyst --label local-console | grep '^tly_' >"$STACK_DIR/analyst-key" \
      || die "cannot create the console's analyst key"
  fi
}

# The demo tenants' own data, as the platform would keep it: `demo` in a database of its own,
# `demo-schema` in a schema of a shared database; both registered with their isolation model so
# the collector measures them. Made once.
seed_tenant_data() {
  local psql_as=(env PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
  local db
  for db in tally_demo_tenant tally_demo_shared; do
    if [ -z "$("${psql_as[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      "${psql_as[@]}" -d postgres -c "CREATE DATABASE $db" || die "cannot create the demo database $db"
    fi
  done
  "${psql_as[@]}" -d tally_demo_tenant >/dev/null <<'SQL' || die "cannot fill the demo tenant's database"
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, active BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS documents (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
INSERT INTO users (email, active) SELECT 'user' || n || '@demo.example', n <= 3 FROM generate_series(1, 4) n
  WHERE NOT EXISTS (SELECT 1 FROM users);
INSERT INTO documents (body) SELECT repeat(md5(n::text), 40) FROM generate_series(1, 2000) n
  WHERE NOT EXISTS (SELECT 1 FROM documents);
SQL
  "${psql_as[@]}" -d tally_demo_shared >/dev/null <<'SQL' || die "cannot fill the demo shared database"
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS demo_schema;
CREATE TABLE IF NOT EXISTS demo_schema.users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, active BOOLEAN NOT NULL);
INSERT INTO demo_schema.users (email, active) SELECT 'user' || n || '@schema.example', true FROM generate_series(1, 7) n
  WHERE NOT EXISTS (SELECT 1 FROM demo_schema.users);
SQL
  "${psql_as[@]}" -d tally >/dev/null <<SQL || die "cannot register the demo tenants' isolation"
UPDATE tenant SET isolation_model = 'database', database_url = '$(postgres_url tally_demo_tenant)' WHERE id = 'demo';
INSERT INTO tenant (id, name, tier, isolation_model, database_url, schema_name)
  VALUES ('demo-schema', 'Demo tenant in a schema', 'PREMIUM', 'schema', '$(postgres_url tally_demo_shared)', 'demo_schema')
  ON CONFLICT (id) DO NOTHING;
SQL
}

# Waits until the enforcer shows the demo tenant's storage as the collector measured it.
show_collected() {
  local measured=""
  for _ in $(seq 1 60); do
    measured=$(python3 - "http://127.0.0.1:$ENFORCER_PORT" "$(cat "$STACK_DIR/demo-key")" <<'PY' 2>/dev/null || true
import json, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
request = urllib.request.Request(f"{base}/v1/tenants/demo/limits", headers={"Authorization": f"Bearer {key}"})
with urllib.request.urlopen(request, timeout=5) as response:
    limits = json.load(response)
if limits["storage_bytes"]["reported"] > 0:
    print(f"{limits['storage_bytes']['reported']} bytes, {limits['users']['reported']} active users")
PY
    )
    [ -n "$measured" ] && break
    sleep 0.5
  done
  [ -n "$measured" ] || die "the collector's measurement did not reach the enforcer within 30 s: see $LOG_DIR/collector.log"
  say "collector: the demo tenant's own database measured at $measured"
}

send_first_event() {
  python3 - "http://127.0.0.1:$INGEST_PORT/v1/events" "$(cat "$STACK_DIR/demo-key")" <<'PY'
import datetime, json, sys, urllib.request, uuid
url, key = sys.argv[1], sys.argv[2]
event = {"id": f"demo-{uuid.uuid4().hex[:12]}", "tenant_id": "demo", "metric": "api_calls", "value": 1,
         "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(), "source": "local-stack"}
request = urllib.request.Request(url, data=json.dumps([event]).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=10) as response:
    answer = json.load(response)
    print(f"[stack] sent a first event: HTTP {response.status}, accepted {answer['accepted']}")
PY
}

# Waits until the aggregator has counted the demo tenant's events and shows this month's total.
show_counted() {
  local query="SELECT tenant_id, metric, events, total FROM tally.usage_windows WHERE granularity = 'month' AND tenant_id = 'demo' FORMAT TSV"
  local counted=""
  for _ in $(seq 1 60); do
    counted=$(clickhouse_query "$query" 2>/dev/null || true)
    [ -n "$counted" ] && break
    sleep 0.5
  done
  [ -n "$counted" ] || die "the first event was not counted within 30 s: see $LOG_DIR/aggregator.log"
  say "counted in ClickHouse (tenant, metric, events, total this month):"
  echo "$counted"
}

# Asks the query API for the demo tenant's usage this month, per UTC day, with the demo key.
show_queried() {
  local answer
  answer=$(python3 - "http://127.0.0.1:$QUERY_PORT" "$(cat "$STACK_DIR/demo-key")" <<'PY'
import datetime, json, sys, urllib.parse, urllib.request
base, key = sys.argv[1], sys.argv[2]
now = datetime.datetime.now(datetime.timezone.utc)
start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
end = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
query = urllib.parse.urlencode({"metric": "api_calls", "from": start.isoformat(), "to": end.isoformat(), "window": "day"})
request = urllib.request.Request(f"{base}/v1/usage?{query}", headers={"Authorization": f"Bearer {key}"})
with urllib.request.urlopen(request, timeout=10) as response:
    rows = json.load(response)["rows"]
print("; ".join(f"{r['window_start'][:10]} {r['metric']} {r['sum']} ({r['count']} events)" for r in rows) or "no usage yet")
PY
  ) || die "the query API did not answer for the demo tenant: see $LOG_DIR/query.log"
  say "query API (demo, api_calls per day this month): $answer"
  answer=$(python3 - "http://127.0.0.1:$QUERY_PORT" "$(cat "$STACK_DIR/analyst-key")" <<'PY'
import json, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(f"{base}/console", timeout=10) as response:
    assert b"/console/app.js" in response.read(), "the console page is not the console"
request = urllib.request.Request(f"{base}/v1/tenants/demo/limits", headers={"Authorization": f"Bearer {key}"})
with urllib.request.urlopen(request, timeout=10) as response:
    limits = json.load(response)
storage = limits["storage_bytes"]
print(f"demo {limits['tier']}: users {limits['users']['used']} of {limits['users']['limit']}, "
      f"storage {storage['used']} of {storage['limit']} bytes (alert at {limits['storage_alert_bytes']})")
PY
  ) || die "the console or its limits (query service → enforcer) did not answer: see $LOG_DIR/query.log"
  say "console ready, limits through the query service: $answer"
}

# Asks the enforcer about the demo tenant: one rate check and its limits with current usage.
show_enforced() {
  local answer
  answer=$(python3 - "http://127.0.0.1:$ENFORCER_PORT" "$(cat "$STACK_DIR/demo-key")" <<'PY'
import json, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
auth = {"Authorization": f"Bearer {key}"}
request = urllib.request.Request(f"{base}/v1/check/rate", data=json.dumps({"tenant_id": "demo"}).encode(),
                                 headers={"Content-Type": "application/json", **auth})
with urllib.request.urlopen(request, timeout=5) as response:
    check = json.load(response)
with urllib.request.urlopen(urllib.request.Request(f"{base}/v1/tenants/demo/limits", headers=auth), timeout=5) as response:
    limits = json.load(response)
print(f"rate check: allowed={check['allowed']} remaining={check['remaining']}/{check['limit']}; "
      f"tier {limits['tier']}: users {limits['users']['used']}/{limits['users']['limit']}, "
      f"storage {limits['storage_bytes']['used']}/{limits['storage_bytes']['limit']} bytes")
PY
  ) || die "the enforcer did not answer for the demo tenant: see $LOG_DIR/enforcer.log"
  say "enforcer: $answer"
}

# stripe_fake_api METHOD PATH [key=value ...]: one call to the local Stripe fake; prints the JSON.
stripe_fake_api() {
  python3 - "http://127.0.0.1:$STRIPE_FAKE_PORT" "$@" <<'PY'
import json, sys, urllib.parse, urllib.request
base, method, path, *pairs = sys.argv[1:]
data = urllib.parse.urlencode([tuple(p.split("=", 1)) for p in pairs]).encode() if pairs else None
request = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": "Bearer sk_test_local"})
with urllib.request.urlopen(request, timeout=5) as response:
    print(response.read().decode())
PY
}

# json_field EXPRESSION: prints EXPRESSION evaluated on the JSON read from stdin as `d`.
json_field() { python3 -c "import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# Bills the demo tenant: its meters and customer in the Stripe fake (made once), one
# billing-sync run that includes the open hour (later runs send the rest as corrections), and
# what the fake's meter summary shows for the customer.
# The demo tenant's meters and customer in the Stripe fake (made once).
prepare_billing() {
  local psql_tally=(psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d tally -tAq)
  local meters customer
  meters=$(stripe_fake_api GET /v1/billing/meters) || die "the Stripe fake did not answer: see $LOG_DIR/stripe-fake.log"
  for name in api_calls compute_seconds; do
    if ! grep -q "\"event_name\":\"$name\"" <<<"$meters"; then
      stripe_fake_api POST /v1/billing/meters "display_name=$name" "event_name=$name" \
        "default_aggregation[formula]=sum" >/dev/null || die "creating the $name meter failed"
    fi
  done
  customer=$(PGPASSWORD=$POSTGRES_PASSWORD "${psql_tally[@]}" -c "SELECT stripe_customer_id FROM stripe_customers WHERE tenant_id = 'demo'")
  if [ -z "$customer" ]; then
    customer=$(stripe_fake_api POST /v1/customers "name=Demo tenant" "metadata[tenant_id]=demo" | json_field "d['id']") \
      || die "creating the demo customer failed"
    PGPASSWORD=$POSTGRES_PASSWORD "${psql_tally[@]}" \
      -c "INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES ('demo', '$customer')" \
      || die "cannot record the demo tenant's Stripe customer"
  fi
}

sync_billing() {
  local psql_tally=(psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d tally -tAq)
  local customer meter start end total
  prepare_billing
  customer=$(PGPASSWORD=$POSTGRES_PASSWORD "${psql_tally[@]}" -c "SELECT stripe_customer_id FROM stripe_customers WHERE tenant_id = 'demo'")
  say "building and running tally-billing-sync --once"
  (cd "$ROOT" && TALLY_BILLING__SETTLE_MINUTES=-60 cargo run --quiet -p tally-billing-sync -- --once) \
    >>"$LOG_DIR/billing-sync.log" 2>&1 || die "billing-sync failed: see $LOG_DIR/billing-sync.log"
  meter=$(stripe_fake_api GET /v1/billing/meters | json_field "[m['id'] for m in d['data'] if m['event_name'] == 'api_calls'][0]")
  end=$(( ($(date +%s) / 3600 + 1) * 3600 )); start=$(( end - 3 * 86400 ))
  total=$(stripe_fake_api GET "/v1/billing/meters/$meter/event_summaries?customer=$customer&start_time=$start&end_time=$end" \
    | json_field "d['data'][0]['aggregated_value']") || die "reading the demo customer's meter summary failed"
  say "Stripe fake: customer $customer has $total api_calls on meter $meter (last 3 days)"
}

main() {
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$TOOLS_DIR"
  install_noida
  install_chdb
  ensure_postgres
  ensure_test_tools
  ensure_redis
  start_kafka
  start_clickhouse
  write_env
  setup_schemas
  if [ "${1:-}" = "--stack-only" ]; then
    say "stack ready (--stack-only: no services started)"
    return
  fi
  # shellcheck disable=SC1091
  source "$STACK_DIR/env"
  if [ "${1:-}" = "--one-process" ]; then
    start_one_process
  else
    start_service ingest "$INGEST_PORT" TALLY_HTTP__LISTEN
    start_service aggregator "$AGGREGATOR_PORT" TALLY_AGGREGATOR__LISTEN
    start_service enforcer "$ENFORCER_PORT" TALLY_ENFORCER__LISTEN
    start_stripe_fake
    seed_demo
    seed_tenant_data
    start_service collector "$COLLECTOR_PORT" TALLY_COLLECTOR__LISTEN
  fi
  send_first_event || die "the first event was not accepted: see $LOG_DIR/ingest.log"
  show_counted
  [ "${1:-}" = "--one-process" ] || start_service query "$QUERY_PORT" TALLY_QUERY__LISTEN
  show_queried
  show_collected
  show_enforced
  sync_billing
  local mode="one process per service"
  [ "${1:-}" = "--one-process" ] && mode="every role in one tally dev process, pid in $RUN_DIR/tally-dev.pid"
  cat <<DONE

Tally's local stack is up (data in $STACK_DIR, logs in $LOG_DIR; $mode):
  Kafka protocol   127.0.0.1:$KAFKA_PORT  (topics usage-events, usage-events-dlq)
  ClickHouse       http://127.0.0.1:$CLICKHOUSE_HTTP_PORT  native 127.0.0.1:$CLICKHOUSE_TCP_PORT  (database tally)
  PostgreSQL       $(postgres_url tally | sed "s/:$POSTGRES_PASSWORD@/:***@/")
  Ingest           http://127.0.0.1:$INGEST_PORT/v1/events  (demo tenant key in $STACK_DIR/demo-key;
                   /livez /readyz /metrics /openapi.yaml)
  Aggregator       http://127.0.0.1:$AGGREGATOR_PORT/metrics  (/livez /readyz; rollups in tally.usage_windows)
  Stripe fake      http://127.0.0.1:$STRIPE_FAKE_PORT/v1/…  (any key sk_test_…; state in $STACK_DIR/stripe-fake.json)
  Enforcer         http://127.0.0.1:$ENFORCER_PORT/v1/check/rate  (/v1/check/users, /v1/check/storage, /v1/check,
                   /v1/tenants/{id}/limits; /livez /readyz /metrics; Envoy RLS gRPC on 127.0.0.1:8083;
                   send a key: the demo key, or tally-admin api-key create --service; rate state in Redis)
  Collector        http://127.0.0.1:$COLLECTOR_PORT/metrics  (/livez /readyz; measures the demo tenants' databases
                   every 5 minutes: storage_bytes and active_users)
  Query API        http://127.0.0.1:$QUERY_PORT/v1/usage  (usage per window in any time zone, JSON or CSV;
                   /v1/tenants, /v1/tenants/{id}/limits; /openapi.yaml /livez /readyz /metrics;
                   a tenant key, or tally-admin api-key create --analyst)
  Console          http://127.0.0.1:$QUERY_PORT/console  (sign in with the analyst key in $STACK_DIR/analyst-key)
  Redis            redis://127.0.0.1:$REDIS_PORT
Environment for services and tests:  source $STACK_DIR/env
Stop it with:                        deploy/local/down.sh
DONE
}

main "$@"
