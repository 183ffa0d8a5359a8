#!/usr/bin/env bash
# Object-storage benchmark: bams vs restic (Debian) against the same local S3 server (moto,
# installed by scripts/setup-dev.sh), side by side in one run. Every request goes through the
# test kit's counting proxy (bams-s3-proxy), so requests are counted the same way for both.
#
# Steps per tool: init, backup of the tree dataset (bench/run.sh builds it), full restore
# (checked byte-identical with diff -r). Reports wall time, requests and requests per GiB
# stored, and the bams/restic ratios (targets: wall <= 0.7, requests/GiB <= 0.5).
# Usage: bench/s3.sh          (BENCH_DIR=/var/tmp/bams-bench, TREE=$BENCH_DIR/tree)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/var/tmp/bams-bench}
TREE=${TREE:-$BENCH_DIR/tree}
[ -d "$TREE" ] || { echo "no dataset at $TREE: run bench/run.sh once (it builds it)" >&2; exit 1; }
cargo build --release --locked -q -p bams -p bams-testkit
BAMS=$PWD/target/release/bams
PROXY_BIN=$PWD/target/release/bams-s3-proxy
PY=/opt/bams-venv/bin/python3; [ -x "$PY" ] || PY=python3
WORK=$(mktemp -d "$BENCH_DIR/s3.XXXXXX")
MOTO_PORT=${MOTO_PORT:-19100}
PROXY_PORT=${PROXY_PORT:-19101}
cleanup() { kill "$MOTO_PID" "$PROXY_PID" 2>/dev/null || true; rm -rf "$WORK"; }
"$PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
"$PROXY_BIN" "127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$MOTO_PORT" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
trap cleanup EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PROXY_PORT/__bams_proxy/counts" && \
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$MOTO_PORT/bench-probe" && break; sleep 0.2; done
EP=http://127.0.0.1:$PROXY_PORT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$EP BAMS_PASSWORD=bench RESTIC_PASSWORD=bench BAMS_CACHE_DIR=$WORK/bams-cache
export RESTIC_CACHE_DIR=$WORK/restic-cache
for b in bams-bench restic-bench; do curl -s -o /dev/null -X PUT "http://127.0.0.1:$MOTO_PORT/$b"; done

counts() { curl -s "$EP/__bams_proxy/counts"; }
reset() { curl -s -o /dev/null -X POST "$EP/__bams_proxy/reset"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
# step NAME CMD...: wall seconds, total requests, bytes up -> $WORK/NAME.{t,req,up}
step() {
  local name=$1; shift
  sync  # the previous step's dirty pages are flushed before, not during, this one
  reset
  local t0 t1; t0=$(date +%s.%N)
  "$@" >"$WORK/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$WORK/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  local c; c=$(counts)
  python3 -c "print(f'{$t1-$t0:.2f}')" >"$WORK/$name.t"
  field "$c" total >"$WORK/$name.req"
  field "$c" bytes_up >"$WORK/$name.up"
  echo "$name: $(cat "$WORK/$name.t") s, $c"
}

# Both tools read the tree from the page cache: warm it once, so neither pays for the disk.
tar cf - "$TREE" 2>/dev/null | cat >/dev/null
"$BAMS" -q -r s3://bams-bench/repo repo init
restic -q -r "s3:$EP/restic-bench/repo" init
sync
step bams-backup "$BAMS" -q -r s3://bams-bench/repo backup "$TREE"
step restic-backup restic -q -r "s3:$EP/restic-bench/repo" backup "$TREE"
step bams-restore "$BAMS" -q -r s3://bams-bench/repo restore latest --target "$WORK/bams-restore"
step restic-restore restic -q -r "s3:$EP/restic-bench/repo" restore latest --target "$WORK/restic-restore"
diff -r --no-dereference "$TREE" "$WORK/bams-restore$TREE" >/dev/null && echo "bams restore identical"
diff -r --no-dereference "$TREE" "$WORK/restic-restore$TREE" >/dev/null && echo "restic restore identical"
rm -rf "$WORK/bams-restore" "$WORK/restic-restore"

python3 - "$WORK" <<'PY' | tee "$BENCH_DIR/s3-report.md"
import sys, pathlib
w = pathlib.Path(sys.argv[1])
r = lambda n, k: float((w / f"{n}.{k}").read_text())
gib = lambda n: r(f"{n}-backup", "up") / 2**30
print("| step | bams | restic | bams/restic |")
print("| --- | --- | --- | --- |")
for step in ("backup", "restore"):
    b, s = r(f"bams-{step}", "t"), r(f"restic-{step}", "t")
    print(f"| {step} wall time | {b:.2f} s | {s:.2f} s | **{b/s:.2f}** (target <= 0.7) |")
for step in ("backup", "restore"):
    b, s = r(f"bams-{step}", "req"), r(f"restic-{step}", "req")
    print(f"| {step} requests | {b:.0f} | {s:.0f} | {b/s:.2f} |")
print(f"| stored (bytes uploaded by the backup) | {gib('bams'):.3f} GiB | {gib('restic'):.3f} GiB | {gib('bams')/gib('restic'):.2f} |")
for step in ("backup", "restore"):
    b = r(f"bams-{step}", "req") / gib("bams"); s = r(f"restic-{step}", "req") / gib("restic")
    print(f"| {step} requests per GiB stored | {b:.1f} | {s:.1f} | **{b/s:.2f}** (target <= 0.5) |")
PY
