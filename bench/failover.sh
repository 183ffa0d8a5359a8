#!/usr/bin/env bash
# Scale-out failover benchmark (issue 18): two `bams server` processes over one throwaway
# PostgreSQL cluster and one S3 bucket (moto), default settings (5 s scheduler tick, 30 s
# server heartbeat timeout, 2 jobs at once per server). Six jobs back up the bench tree
# (bench/run.sh's dataset, or /usr/share) into the bucket; server A takes some, B the rest.
# Once A has been writing for 2 s it is killed with SIGKILL. Reported: how long until B had
# marked A's runs interrupted and queued them again (target < 60 s), until B had finished
# them, whether any run executed twice (one snapshot per succeeded run), and
# `bams check --read-data` of the bucket.
#
# Needs scripts/setup-dev.sh (postgresql, moto in /opt/bams-venv, curl, jq). Everything binds
# to 127.0.0.1 and is stopped on exit; every wait is bounded.
# Usage: bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${TREE:-/var/tmp/bams-bench/tree}
[ -d "$TREE" ] || TREE=/usr/share
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d /var/tmp/bams-failover-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -d "$WORK/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
pass() { python3 -c "print('PASS' if $1 else 'FAIL')"; }

# PostgreSQL: a throwaway cluster on a free port.
PGPORT=$(free_port)
mkdir -p "$WORK/pg" "$WORK/pgsock" && chown postgres "$WORK/pg" "$WORK/pgsock"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK/pgsock -c listen_addresses=127.0.0.1" \
  -l "$WORK/pgsock/pg.log" -w start >/dev/null
CATALOG="postgres://postgres@127.0.0.1:$PGPORT/postgres"

# S3: moto with one bucket.
PY=/opt/bams-venv/bin/python3; [ -x "$PY" ] || PY=python3
S3PORT=$(free_port)
"$PY" -m moto.server -H 127.0.0.1 -p "$S3PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null -X PUT "http://127.0.0.1:$S3PORT/failover" && break; sleep 0.2; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3PORT AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1

start_server() { # id; sets URL_<id>, PID_<id>
  local id=$1 port; port=$(free_port)
  mkdir -p "$WORK/$id"
  BAMS_DATA_DIR=$WORK/$id/data BAMS_LISTEN=127.0.0.1:$port BAMS_CONFIG=/dev/null BAMS_LOG=warn \
    BAMS_CATALOG=$CATALOG BAMS_SERVER_ID=$id "$BAMS" server >"$WORK/$id/server.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  printf -v "URL_$id" '%s' "http://127.0.0.1:$port"
  printf -v "PID_$id" '%s' "$pid"
}
start_server a
PW=$(cat "$WORK/a/data/initial-admin-password")
start_server b
URL=$URL_b
TOKEN=$(curl -sf -X POST "$URL/api/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | jq -r .token)
api() { # method path [json] (against server B, which survives)
  if [ $# -ge 3 ]; then
    curl -sf -X "$1" "$URL$2" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$3"
  else
    curl -sf -X "$1" "$URL$2" -H "authorization: Bearer $TOKEN"
  fi
}
REPO=$(api POST /api/v1/repositories '{"name":"bucket","url":"s3://failover/repo","password":"bench-pass"}' | jq .id)
mkdir -p "$WORK/a/data/keys"
cp "$WORK/b/data/keys/bucket.key" "$WORK/a/data/keys/bucket.key"
JOBS=()
for j in 1 2 3 4 5 6; do
  JOBS+=("$(api POST /api/v1/jobs "{\"name\":\"tree$j\",\"type\":\"backup\",\"paths\":[\"$TREE\"],\"repository\":$REPO}" | jq .id)")
done
for job in "${JOBS[@]}"; do api POST "/api/v1/jobs/$job/run" >/dev/null; done

echo "== 6 backups of $TREE over two servers; server A is killed 2 s into its first run"
runs() { api GET '/api/v1/runs?limit=500'; }
for _ in $(seq 1 600); do
  [ "$(runs | jq '[.items[] | select(.server_id == "a" and .status == "running")] | length')" -gt 0 ] && break
  sleep 0.1
done
sleep 2
kill -9 "$PID_a"; wait "$PID_a" 2>/dev/null || true
t_kill=$(now_ms)
ON_A=$(runs | jq -c '[.items[] | select(.server_id == "a" and .status == "running") | .id]')
echo "server A killed while running runs $ON_A"
t_requeued=""
for _ in $(seq 1 1200); do
  n=$(runs | jq --argjson on "$ON_A" '[.items[] | select(.triggered_by as $t | $on | map("requeue:\(.)") | index($t))] | length')
  if [ "$n" = "$(jq length <<<"$ON_A")" ]; then t_requeued=$(now_ms); break; fi
  sleep 0.1
done
t_done=""
for _ in $(seq 1 3000); do
  active=$(runs | jq '[.items[] | select(.status == "queued" or .status == "running")] | length')
  if [ "$active" = 0 ]; then t_done=$(now_ms); break; fi
  sleep 0.2
done
ALL=$(runs)
succeeded=$(jq '[.items[] | select(.status == "succeeded")] | length' <<<"$ALL")
interrupted=$(jq '[.items[] | select(.status == "interrupted")] | length' <<<"$ALL")
failed=$(jq '[.items[] | select(.status != "succeeded" and .status != "interrupted")] | length' <<<"$ALL")
distinct=$(jq '[.items[] | select(.status == "succeeded") | .snapshot_id] | unique | length' <<<"$ALL")
snapshots=$(BAMS_PASSWORD=bench-pass "$BAMS" -r s3://failover/repo snapshots --json | jq length)
if BAMS_PASSWORD=bench-pass "$BAMS" -r s3://failover/repo check --read-data >"$WORK/check.log" 2>&1; then check=ok; else check=FAILED; fi
secs() { python3 -c "print(f'{($1 - $t_kill) / 1000:.1f}')"; }
requeue_s=$( [ -n "$t_requeued" ] && secs "$t_requeued" || echo never)
done_s=$( [ -n "$t_done" ] && secs "$t_done" || echo never)

cat <<EOF

| failover: 2 servers, PostgreSQL + S3 (moto), kill -9 of A | value |
| --- | --- |
| runs of A when killed | $(jq length <<<"$ON_A") |
| kill → A's runs interrupted and queued again (timeout 30 s, tick 5 s) | ${requeue_s} s — < 60 s: $(pass "'$requeue_s' != 'never' and $requeue_s < 60") |
| kill → all work finished on B | ${done_s} s |
| runs succeeded / interrupted / other | $succeeded / $interrupted / $failed |
| snapshots in the bucket / distinct per succeeded run | $snapshots / $distinct — no run twice: $(pass "$snapshots == $distinct == $succeeded and $failed == 0") |
| check --read-data of the bucket | $check |
EOF
