#!/usr/bin/env bash
# Every line of issue 18 in one command, one after another on this machine (never two at once:
# they would time each other), each section's table printed as it ends and all of them again
# at the end, in $OUT (default /var/tmp/bams-bench-all.md):
#
#   bench/run.sh        tree cold/warm, unchanged, 2 % changed, images v1/v2, restore,
#                       repository size, peak RSS — bams vs restic vs borg, ratios, targets
#   bench/scale.sh      10 million small files (backup, unchanged, ls, restore, RSS, index
#                       bytes per blob) and 100,000 index files (open before/after consolidation)
#   bench/agents.sh     1,000 agents with a job each due in the same second, every minute
#   bench/failover.sh   two servers over PostgreSQL + S3, kill -9 of one: re-queue time
#   bench/index-s3.sh   10,000 index files on S3 (moto): open before/after consolidation
#
# About 75 minutes on 2 cores (the 10M-file part alone takes about 40 of them). Choose sections
# with SECTIONS="run scale agents failover index-s3"; the sizes with each script's own variables
# (DIRS/PER_DIR/INDEX_FILES, AGENTS/MINUTES, S3_INDEX_FILES, BENCH_DIR).
# Needs root and scripts/setup-dev.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
SECTIONS=${SECTIONS:-run scale agents failover index-s3}
OUT=${OUT:-/var/tmp/bams-bench-all.md}
AGENTS=${AGENTS:-1000}
MINUTES=${MINUTES:-10}
{
  echo "# bench/all.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(git rev-parse --short HEAD)"
} >"$OUT"
status=0
section() { # name command...
  local name=$1; shift
  echo "== $name" | tee -a "$OUT"
  local log failed=0; log=$(mktemp)
  "$@" >"$log" 2>&1 || failed=1
  # The tables are what the section reports; a failed section adds the end of its log.
  grep -E '^\|' "$log" >>"$OUT" || true
  if [ "$failed" = 1 ]; then
    status=1
    { echo "($name exited with an error; the end of its log:)"; tail -20 "$log"; } >>"$OUT"
  fi
  rm -f "$log"
  echo >>"$OUT"
}
for s in $SECTIONS; do
  case $s in
    run) section "bams vs restic vs borg (bench/run.sh)" bench/run.sh ;;
    scale) section "scale: many files, many index files (bench/scale.sh)" bench/scale.sh ;;
    agents) section "$AGENTS agents (bench/agents.sh)" env PARTS=1 AGENT_TREE=small bench/agents.sh "$AGENTS" "$MINUTES" ;;
    failover) section "two servers, kill -9 (bench/failover.sh)" bench/failover.sh ;;
    index-s3) section "index files on S3 (bench/index-s3.sh)" bench/index-s3.sh "${S3_INDEX_FILES:-10000}" ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
cat "$OUT"
exit $status
