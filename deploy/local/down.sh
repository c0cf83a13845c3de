#!/usr/bin/env bash
# Stops the local pipeline's services, then the broker and ClickHouse, gracefully (SIGTERM: ingest
# flushes its producer, the aggregator finishes its batches, the broker saves its data).
# PostgreSQL is the machine's and is left running. `--purge` also deletes the stack's data (and
# its PostgreSQL database `tally`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop() {
  local name=$1 file=$RUN_DIR/$1.pid
  if ! pid_alive "$name"; then rm -f "$file"; return; fi
  local pid
  pid=$(cat "$file")
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop tally-dev
stop ingest
stop aggregator
stop enforcer
stop stripe-fake
stop collector
stop query
stop kafka
stop clickhouse
# Redis is stopped only if the stack started it (its pid file); the machine's own is left running.
stop redis
if [ "${1:-}" = "--purge" ]; then
  say "deleting $STACK_DIR"
  rm -rf "$STACK_DIR"
  # The billing ledger and stripe_customers in the stack's PostgreSQL database name objects of
  # the Stripe fake, whose state was just deleted: the database goes too (the machine's server
  # and its other databases stay).
  if PGPASSWORD=$POSTGRES_PASSWORD psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -qc \
    'DROP DATABASE IF EXISTS tally WITH (FORCE)' >/dev/null 2>&1; then
    say "dropped the PostgreSQL database tally"
  fi
fi
