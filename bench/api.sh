#!/usr/bin/env bash
# API latency benchmark (issue 4): with 10,000 runs and 1,000 snapshots in the catalog,
# GET /api/v1/dashboard and GET /api/v1/runs?limit=50 at 64 concurrent connections, on SQLite
# and on PostgreSQL. Prints p50/p99 per route and backend; target p99 < 25 ms.
#
# Needs scripts/setup-dev.sh (postgresql, apache2-utils for `ab`, sqlite3, jq, curl). Root is
# needed only to run PostgreSQL as the postgres user.
# Usage: bench/api.sh [REQUESTS]     (default 5000 requests per route and backend)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=64
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d /tmp/bams-api-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -d "$WORK/pg" ]; then runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The seed both catalogs get (20 jobs, 10,000 runs, 1,000 snapshots): bench/seed-catalog.sh.
. bench/seed-catalog.sh

start_server() { # backend catalog-url; sets PORT and appends the pid to PIDS
  local name=$1 catalog=$2 port; port=$(free_port)
  mkdir -p "$WORK/$name"
  BAMS_DATA_DIR=$WORK/$name/data BAMS_LISTEN=127.0.0.1:$port BAMS_CATALOG=$catalog BAMS_CONFIG=/dev/null BAMS_LOG=warn \
    "$BAMS" server >"$WORK/$name/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  PORT=$port
}

login() { # port data-dir
  local pw; pw=$(cat "$2/initial-admin-password")
  curl -sf "http://127.0.0.1:$1/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$pw\"}" | jq -r .token
}

RESULTS=$WORK/results.tsv
: > "$RESULTS"
measure() { # backend port token route
  local out; out=$(mktemp)
  ab -q -k -n 200 -c "$C" -H "Authorization: Bearer $3" "http://127.0.0.1:$2$4" >/dev/null 2>&1 || true   # warm-up
  ab -q -k -n "$N" -c "$C" -H "Authorization: Bearer $3" "http://127.0.0.1:$2$4" > "$out"
  local failed p50 p99 rps
  failed=$(awk '/^Failed requests:/ {print $3}' "$out"); non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out"); p99=$(awk '$1 == "99%" {print $2}' "$out")
  rps=$(awk '/^Requests per second:/ {print $4}' "$out")
  if [ "${failed:-0}" != 0 ] || [ -n "${non2xx:-}" ]; then echo "$1 $4: failed=$failed non-2xx=${non2xx:-0}" >&2; cat "$out" >&2; exit 1; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$p50" "$p99" "$rps" >> "$RESULTS"
  rm -f "$out"
}

# ---- SQLite ----
start_server sqlite ""; port=$PORT
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true   # seed with the server stopped
sqlite3 "$WORK/sqlite/data/catalog.db" "$(seed_sql "printf('%064x', i)")"
start_server sqlite ""; port=$PORT
measure sqlite "$port" "$(login "$port" "$WORK/sqlite/data")" /api/v1/dashboard
measure sqlite "$port" "$(login "$port" "$WORK/sqlite/data")" "/api/v1/runs?limit=50"
kill "${PIDS[-1]}"

# ---- PostgreSQL (throwaway cluster) ----
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$WORK/pg"; chown postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U bams --no-sync -E UTF8 >/dev/null
pgport=$(free_port)
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-p $pgport -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql -h 127.0.0.1 -p "$pgport" -U bams -d postgres -qc 'CREATE DATABASE bams'
PGURL=postgres://bams@127.0.0.1:$pgport/bams
start_server postgres "$PGURL"; port=$PORT
psql -h 127.0.0.1 -p "$pgport" -U bams -d bams -q -v ON_ERROR_STOP=1 -c "$(seed_sql "lpad(to_hex(i), 64, '0')")"
psql -h 127.0.0.1 -p "$pgport" -U bams -d bams -qc 'ANALYZE'
measure postgres "$port" "$(login "$port" "$WORK/postgres/data")" /api/v1/dashboard
measure postgres "$port" "$(login "$port" "$WORK/postgres/data")" "/api/v1/runs?limit=50"

echo "API latency, $N requests per row at $C concurrent connections (10,000 runs, 1,000 snapshots)"
echo
echo "| catalog | route | p50 | p99 | requests/s | p99 < 25 ms |"
echo "| --- | --- | --- | --- | --- | --- |"
fail=0
while IFS=$'\t' read -r be route p50 p99 rps; do
  ok=PASS; [ "$p99" -lt 25 ] || { ok=FAIL; fail=1; }
  echo "| $be | \`GET $route\` | $p50 ms | $p99 ms | $rps | $ok |"
done < "$RESULTS"
exit $fail
