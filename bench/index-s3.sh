#!/usr/bin/env bash
# Index files on object storage (issue 18): a repository in a local S3 server (moto) holding
# FILES small index files (one per tiny pack, as FILES agent backups leave), opened before and
# after `consolidate`. Every index file is one GET on S3, so this is where consolidation
# matters most. Prints the bench's JSON line.
# Usage: bench/index-s3.sh [FILES]     (default 10,000; moto takes ~2 ms a request)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-10000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/bams-bench}
PY=/opt/bams-venv/bin/python3; [ -x "$PY" ] || PY=python3
MOTO_PORT=${MOTO_PORT:-19110}
mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/index-s3.XXXXXX")
cleanup() { kill "$MOTO_PID" 2>/dev/null || true; rm -rf "$WORK"; }
"$PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
trap cleanup EXIT
for _ in $(seq 100); do curl -s -o /dev/null -X PUT "http://127.0.0.1:$MOTO_PORT/index-bench" && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT BAMS_BENCH_DIR=$WORK
BAMS_BENCH_REPO=s3://index-bench/repo cargo bench --locked -q -p bams-store --bench index_open -- "$FILES" |
  tee "$WORK/result.json"
python3 - "$WORK/result.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"| {r['index_files']:,} index files on S3 (moto), {r['blobs']:,} blobs | value |")
print("| --- | --- |")
print(f"| open before consolidation | {r['open_before_s']:.2f} s |")
print(f"| consolidate (to {r['files_after']} file(s)) | {r['consolidate_s']:.2f} s |")
print(f"| open after | {r['open_after_s']:.3f} s |")
PY
