#!/usr/bin/env bash
# Web UI render times (issue 14): every page rendered by the server with 10,000 runs, 1,000
# snapshots and 100 agents in the SQLite catalog (target < 50 ms each), and the snapshot
# browser's directory pages on a snapshot of 1,000,000 files in 10 folders of 100,000 (target
# < 200 ms). Times are curl's total on loopback: the server's whole answer, one request at a
# time. Prints a Markdown table of p50/p99.
#
# Needs scripts/setup-dev.sh (sqlite3, jq, curl). Usage: bench/ui.sh [REQUESTS] [FILES]
# (default 30 requests per page, 1000000 files).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
FILES=${2:-1000000}
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d /tmp/bams-ui-bench.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
. bench/seed-catalog.sh

PORT=$(free_port)
start_server() {
  BAMS_DATA_DIR=$WORK/data BAMS_LISTEN=127.0.0.1:$PORT BAMS_CONFIG=/dev/null BAMS_LOG=warn \
    "$BAMS" server >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  cat "$WORK/server.log"; exit 1
}
start_server
kill "$PID"; wait "$PID" 2>/dev/null || true   # seed with the server stopped
now=$(date +%s%3N)
sqlite3 "$WORK/data/catalog.db" "$(seed_sql "printf('%064x', i)")
INSERT INTO agents (name, status, hostname, version, last_seen_at, created_at, enrolled_at)
  SELECT 'agent' || i, 'active', 'host' || i, '0.1.0', $now - i * 1000, 0, 0
  FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i FROM n);"
start_server
TOKEN=$(curl -sf "http://127.0.0.1:$PORT/api/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$(cat "$WORK/data/initial-admin-password")\"}" | jq -r .token)
api() { curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }

RESULTS=$WORK/results.tsv
: > "$RESULTS"
measure() { # what target-ms path
  local times=$WORK/times status
  : > "$times"
  for _ in 1 2 3; do curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Accept: text/html' "http://127.0.0.1:$PORT$3"; done
  for _ in $(seq 1 "$N"); do
    status=$(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $TOKEN" -H 'Accept: text/html' \
      "http://127.0.0.1:$PORT$3")
    [ "${status%% *}" = 200 ] || { echo "$3 answered ${status%% *}" >&2; exit 1; }
    echo "${status#* }" >> "$times"
  done
  sort -n "$times" | awk -v what="$1" -v target="$2" -v n="$N" '
    { t[NR] = $1 * 1000 }
    END { p50 = t[int((n + 1) / 2)]; p99 = t[int(n * 0.99 + 0.999)];
          printf "%s\t%.1f\t%.1f\t%d\n", what, p50, p99, target }' >> "$RESULTS"
}

job=$(api "http://127.0.0.1:$PORT/api/v1/jobs" | jq -r '.[0].id')
run=$(api "http://127.0.0.1:$PORT/api/v1/runs?limit=1" | jq -r '.items[0].id')
snap=$(printf '%064x' 500)
for page in /dashboard /jobs "/jobs/$job" "/jobs/$job/edit" /jobs/new /runs "/runs?status=failed" "/runs/$run" \
  /snapshots "/snapshots/$snap" /repositories /agents /logs /admin/users /admin/tokens /admin/audit \
  /admin/notifications /storage/disks /storage/tape /storage/iscsi /storage/bacula; do
  measure "\`GET $page\`" 50 "$page"
done

# A snapshot of $FILES empty files in 10 folders, backed up by the server itself.
python3 - "$WORK/tree" "$FILES" <<'PY'
import os, sys
root, total = sys.argv[1], int(sys.argv[2])
per = total // 10
for d in range(10):
    path = os.path.join(root, f"d{d}")
    os.makedirs(path)
    for i in range(per):
        open(os.path.join(path, f"file-{i:07d}"), "w").close()
PY
bjob=$(api "http://127.0.0.1:$PORT/api/v1/jobs" -d "{\"name\":\"million\",\"type\":\"backup\",\"repository\":1,\"paths\":[\"$WORK/tree\"]}" | jq -r .id)
brun=$(api -X POST "http://127.0.0.1:$PORT/api/v1/jobs/$bjob/run" | jq -r .run_id)
start=$(date +%s)
until [ "$(api "http://127.0.0.1:$PORT/api/v1/runs/$brun" | jq -r .status)" = succeeded ]; do
  [ $(( $(date +%s) - start )) -lt 1800 ] || { echo "the backup of $FILES files did not finish" >&2; exit 1; }
  sleep 2
done
backup_secs=$(( $(date +%s) - start ))
bsnap=$(api "http://127.0.0.1:$PORT/api/v1/runs/$brun" | jq -r .snapshot_id)
dir=$(python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))' "$WORK/tree/d0")
per=$((FILES / 10))
measure "browser: first page of a $per-entry folder" 200 "/snapshots/$bsnap/browse?repository=1&path=$dir"
measure "browser: last page of a $per-entry folder" 200 "/snapshots/$bsnap/browse?repository=1&path=$dir&offset=$((per - 200))"
measure "snapshot page of the $FILES-file snapshot" 200 "/snapshots/$bsnap?repository=1"

echo "Web UI render times: $N requests per row, one at a time; catalog of 10,000 runs, 1,000 snapshots, 100 agents"
echo "(the $FILES-file snapshot took ${backup_secs} s to back up)"
echo
echo "| page | p50 | p99 | target | |"
echo "| --- | --- | --- | --- | --- |"
fail=0
while IFS=$'\t' read -r what p50 p99 target; do
  ok=PASS; awk -v p="$p99" -v t="$target" 'BEGIN { exit !(p < t) }' || { ok=FAIL; fail=1; }
  echo "| $what | $p50 ms | $p99 ms | < $target ms | $ok |"
done < "$RESULTS"
exit $fail
