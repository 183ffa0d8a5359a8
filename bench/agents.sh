#!/usr/bin/env bash
# Agents benchmark (issue 7), two parts in one run:
#
# 1. N real `bams agent` processes (default 100) enrolled into one `bams server` (SQLite
#    catalog, default settings: 5 s director tick), each with a backup job of its own small tree
#    scheduled every minute (`0 * * * * *`: all N fall due in the same second), for M minutes
#    (default 10). One file of every tree changes each minute. Reported: server CPU (% of one
#    core over the window), server RSS (peak and at the end), catalog size, runs succeeded of
#    N×M, and the scheduling delay (run started by its agent − time the schedule was due)
#    p50/p99/max, target p99 < 2 s.
# 2. One agent's backup of the bench tree (bench/run.sh's dataset, or /usr/share) through the
#    server, against the same backup run locally with `bams backup` (fresh repositories, page
#    cache warm, best of three rounds). Target: remote throughput ≥ 0.8× local.
#
# Needs scripts/setup-dev.sh (sqlite3, curl, jq, python3). Every process started here is bound
# to 127.0.0.1 and stopped on exit; every wait is bounded.
# Usage: bench/agents.sh [AGENTS] [MINUTES]      (PARTS="2" runs part 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
MINUTES=${2:-10}
PARTS=${PARTS:-1 2}
TREE=${TREE:-/var/tmp/bams-bench/tree}
[ -d "$TREE" ] || TREE=/usr/share
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d /var/tmp/bams-agents-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
pass() { python3 -c "print('PASS' if $1 else 'FAIL')"; }

start_server() { # name; sets URL, SPID, TOKEN, REPO
  local name=$1 port; port=$(free_port)
  mkdir -p "$WORK/$name"
  BAMS_DATA_DIR=$WORK/$name/data BAMS_LISTEN=127.0.0.1:$port BAMS_CONFIG=/dev/null BAMS_LOG=warn \
    "$BAMS" server >"$WORK/$name/server.log" 2>&1 &
  SPID=$!
  PIDS+=("$SPID")
  URL=http://127.0.0.1:$port
  for _ in $(seq 1 300); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
  local pw; pw=$(cat "$WORK/$name/data/initial-admin-password")
  TOKEN=$(curl -sf -X POST "$URL/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$pw\"}" | jq -r .token)
  REPO=$(api GET /api/v1/repositories | jq '.[0].id')
}
api() { # method path [json]
  if [ $# -ge 3 ]; then
    curl -sf -X "$1" "$URL$2" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$3"
  else
    curl -sf -X "$1" "$URL$2" -H "authorization: Bearer $TOKEN"
  fi
}
start_agent() { # name; sets AGENT_ID, appends the pid to PIDS and AGENT_PIDS
  local name=$1 created
  created=$(api POST /api/v1/agents "{\"name\":\"$name\"}")
  AGENT_ID=$(jq .id <<<"$created")
  mkdir -p "$WORK/agents/$name"
  BAMS_ENROLLMENT_TOKEN=$(jq -r .enrollment_token <<<"$created") \
    "$BAMS" agent enroll --server "$URL" --state-dir "$WORK/agents/$name" >/dev/null 2>&1
  BAMS_LOG=warn "$BAMS" agent --state-dir "$WORK/agents/$name" >"$WORK/agents/$name/agent.log" 2>&1 &
  PIDS+=($!)
  AGENT_PIDS+=($!)
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# ---------------- part 1: N agents, scheduled every minute ----------------
if [[ " $PARTS " == *" 1 "* ]]; then
echo "== part 1: $N agents, a backup each every minute for $MINUTES minutes"
start_server many
AGENT_PIDS=()
JOBS=()
for i in $(seq 1 "$N"); do
  t=$WORK/trees/a$i
  mkdir -p "$t/docs"
  for f in $(seq 1 20); do head -c 8192 /dev/urandom >"$t/docs/f$f.bin"; done
  # The same on every machine: deduplicated. AGENT_TREE=small leaves it out (1,000 agents
  # backing up 150 files each every minute would need more than these 2 cores).
  [ "${AGENT_TREE:-}" = small ] || cp -r /usr/share/common-licenses "$t/licenses"
  start_agent "a$i"
  JOBS+=("$(api POST /api/v1/jobs "{\"name\":\"a$i\",\"type\":\"backup\",\"agent\":$AGENT_ID,\"paths\":[\"$t\"],\"repository\":$REPO}" | jq .id)")
done
# All schedules are created within one minute, so each fires first at the same :00.
while [ "$(date +%-S)" -gt 40 ]; do sleep 1; done
for job in "${JOBS[@]}"; do api POST /api/v1/schedules "{\"job\":$job,\"cron\":\"0 * * * * *\"}" >/dev/null; done
# The window starts just before the next full minute.
sleep $(( 60 - $(date +%-S) ))
t0=$(now_ms); c0=$(cpu_ticks "$SPID")
for m in $(seq 1 "$MINUTES"); do
  sleep 30
  for i in $(seq 1 "$N"); do head -c 8192 /dev/urandom >"$WORK/trees/a$i/docs/f$(( m % 20 + 1 )).bin"; done
  if [ "$m" -lt "$MINUTES" ]; then sleep $(( 60 - $(date +%-S) )); fi
done
# The window's last schedules fired 30 s ago: no more runs after it, even if the last minute's
# runs are still going when the next minute starts.
for s in $(api GET /api/v1/schedules | jq '.[].id'); do api DELETE "/api/v1/schedules/$s" >/dev/null; done
# Let the last minute's runs end (bounded).
for _ in $(seq 1 120); do
  active=$(api GET /api/v1/dashboard | jq .active_runs)
  [ "$active" = 0 ] && break
  sleep 1
done
t1=$(now_ms); c1=$(cpu_ticks "$SPID")
hz=$(getconf CLK_TCK)
cpu=$(python3 -c "print(f'{($c1 - $c0) / $hz / (($t1 - $t0) / 1000) * 100:.1f}')")
rss_peak=$(status_kb "$SPID" VmHWM); rss_now=$(status_kb "$SPID" VmRSS)
agents_rss=0
for p in "${AGENT_PIDS[@]}"; do agents_rss=$(( agents_rss + $(status_kb "$p" VmRSS) )); done
DB=$WORK/many/data/catalog.db
sqlite3 "$DB" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
catalog_kb=$(( $(stat -c %s "$DB") / 1024 ))
sqlite3 -separator ' ' "$DB" \
  "SELECT status, COALESCE(started_at - scheduled_for, -1), COALESCE(finished_at - started_at, -1) FROM runs WHERE triggered_by = 'schedule'" \
  >"$WORK/runs.txt"
repo_mb=$(du -sm "$WORK/many/data/repo" | cut -f1)
read -r succeeded total d50 d99 dmax r50 r99 <<<"$(python3 - "$WORK/runs.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if r[0] == 'succeeded']
delays = sorted(int(r[1]) for r in rows if int(r[1]) >= 0)
durs = sorted(int(r[2]) for r in ok if int(r[2]) >= 0)
def q(v, p): return v[min(len(v) - 1, int(round(p * (len(v) - 1))))] / 1000 if v else float('nan')
print(len(ok), len(rows), q(delays, .5), q(delays, .99), q(delays, 1), q(durs, .5), q(durs, .99))
PY
)"
expected=$(( N * MINUTES ))
for p in "${AGENT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
kill "$SPID" 2>/dev/null || true

cat <<EOF

| part 1: $N agents × $MINUTES min | value |
| --- | --- |
| scheduled runs succeeded | $succeeded of $total (expected $expected) |
| scheduling delay p50 / p99 / max | ${d50} s / ${d99} s / ${dmax} s — p99 < 2 s: $(pass "$d99 < 2 and $total == $expected") |
| run duration p50 / p99 | ${r50} s / ${r99} s |
| server CPU (window $(( (t1 - t0) / 1000 )) s) | ${cpu}% of one core |
| server RSS peak / end | $(( rss_peak / 1024 )) MiB / $(( rss_now / 1024 )) MiB |
| agents' RSS (sum of $N, idle at the end) | $(( agents_rss / 1024 )) MiB |
| catalog size | ${catalog_kb} KiB |
| repository size | ${repo_mb} MiB |
EOF
fi

# ---------------- part 2: one agent remote vs local ----------------
[[ " $PARTS " == *" 2 "* ]] || exit 0
echo "== part 2: one agent's backup of $TREE vs the same backup run locally"
warm() { find "$TREE" -type f -print0 | xargs -0 cat >/dev/null 2>&1 || true; }
best_local=999999; best_remote=999999
ROUNDS=${ROUNDS:-3}
for round in $(seq 1 "$ROUNDS"); do
  warm
  rm -rf "$WORK/local$round"
  BAMS_PASSWORD=bench "$BAMS" -q -r "$WORK/local$round" repo init >/dev/null
  s=$(now_ms)
  BAMS_PASSWORD=bench "$BAMS" -q -r "$WORK/local$round" backup "$TREE" >/dev/null
  e=$(now_ms); best_local=$(( e - s < best_local ? e - s : best_local ))

  start_server "one$round"
  AGENT_PIDS=()
  start_agent "solo$round"
  job=$(api POST /api/v1/jobs "{\"name\":\"tree\",\"type\":\"backup\",\"agent\":$AGENT_ID,\"paths\":[\"$TREE\"],\"repository\":$REPO}" | jq .id)
  sleep 1   # the agent is polling
  warm
  s=$(now_ms)
  run=$(api POST "/api/v1/jobs/$job/run" '{"level":"full"}' | jq .run_id)
  for _ in $(seq 1 6000); do
    st=$(api GET "/api/v1/runs/$run" | jq -r .status)
    [ "$st" != queued ] && [ "$st" != running ] && break
    sleep 0.05
  done
  e=$(now_ms)
  [ "$st" = succeeded ] || { echo "remote backup $st"; api GET "/api/v1/runs/$run/log" | jq -r .log | tail -5; exit 1; }
  best_remote=$(( e - s < best_remote ? e - s : best_remote ))
  kill "${AGENT_PIDS[@]}" "$SPID" 2>/dev/null || true
done
bytes=$(du -sb "$TREE" | cut -f1)
read -r local_mbs remote_mbs ratio <<<"$(python3 -c "
b = $bytes / 2**20
print(f'{b / ($best_local / 1000):.0f} {b / ($best_remote / 1000):.0f} {$best_local / $best_remote:.2f}')")"

cat <<EOF

| part 2: $(( bytes / 1048576 )) MiB tree | time (best of $ROUNDS) | throughput |
| --- | --- | --- |
| local \`bams backup\` | $(( best_local )) ms | ${local_mbs} MiB/s |
| agent → server | $(( best_remote )) ms | ${remote_mbs} MiB/s |
| remote / local | ${ratio}× — ≥ 0.8: $(pass "$ratio >= 0.8") | |
EOF
