#!/usr/bin/env bash
# Scale benchmark (issue 18): how the cost grows with the number of files and writers.
#
# 1. Many small files: DIRS directories × PER_DIR files (default 1,000 × 10,000 = 10 million),
#    generated here, each with content of its own (0–380 bytes: see below). Timed with peak RSS:
#    first backup (page cache dropped), unchanged re-backup, `ls` of one directory, restore of
#    everything, and the index's memory per blob (MasterIndex::BYTES_PER_BLOB, and peak RSS of
#    the unchanged re-backup over the blobs the repository holds).
#    Disk: ten million files of 0–4 KiB need ~40 GB as 4 KiB blocks, twice (source + restore).
#    This bench puts source and restore on an ext4 file system in a loop file with 512-byte
#    inodes and inline_data, where files up to ~380 bytes live inside their inode: 10 GB of
#    inode tables instead of 80 GB of blocks. File sizes are therefore 0–380 bytes.
# 2. Many writers: `cargo bench -p bams-store --bench index_open` with INDEX_FILES (default
#    100,000) small index files: reading the index before and after consolidation.
#
# Needs root (loop mount), mkfs.ext4, python3. Usage: bench/scale.sh   (DIRS=, PER_DIR=,
# INDEX_FILES=, PARTS="1 2" to choose; WORK=/var/tmp by default, needs ~25 GB free for 10M).
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-10000}
INDEX_FILES=${INDEX_FILES:-100000}
PARTS=${PARTS:-1 2}
BASE=${WORK:-/var/tmp}
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d "$BASE/bams-scale.XXXXXX")
MNT=$WORK/mnt
cleanup() {
  mountpoint -q "$MNT" && umount "$MNT"
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
export BAMS_PASSWORD=scale-bench
FILES=$(( DIRS * PER_DIR ))

timed() { # label cmd...: runs cmd, appends "label seconds max_rss_kib" to $WORK/times
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t.txt" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" \
    || { echo "$label failed:"; tail -5 "$WORK/$label.err"; exit 1; }
  echo "$label $(cat "$WORK/t.txt")" >>"$WORK/times"
}
row() { # label description [entries]
  awk -v l="$1" -v d="$2" -v n="${3:-$FILES}" '$1 == l {printf "| %s | %.1f s | %.0f files/s | %.0f MiB |\n", d, $2, n / ($2 > 0 ? $2 : 1), $3 / 1024}' "$WORK/times"
}

if [[ " $PARTS " == *" 1 "* ]]; then
  inodes=$(( FILES * 2 + DIRS * 2 + 100000 ))
  truncate -s $(( inodes * 512 + (4 << 30) )) "$WORK/fs.img"
  mkfs.ext4 -q -F -N "$inodes" -I 512 -O inline_data -E lazy_itable_init=1,nodiscard "$WORK/fs.img"
  mkdir -p "$MNT"
  mount -o loop,noatime "$WORK/fs.img" "$MNT"
  echo "== generating $FILES files in $DIRS directories"
  t0=$(date +%s)
  python3 - "$MNT/src" "$DIRS" "$PER_DIR" <<'PY'
import os, sys, random
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(18)
noise = rng.randbytes(1 << 16)
for d in range(dirs):
    dp = os.path.join(root, f"d{d:04}")
    os.makedirs(dp)
    for f in range(per):
        size = rng.randrange(0, 381)
        tag = f"{d}/{f} ".encode()
        start = rng.randrange(0, len(noise) - 400)
        body = (tag + noise[start:start + size])[:size]
        fd = os.open(os.path.join(dp, f"f{f:05}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, body)
        os.close(fd)
PY
  echo "generated in $(( $(date +%s) - t0 )) s"
  "$BAMS" -r "$WORK/repo" repo init -q
  sync; echo 3 >/proc/sys/vm/drop_caches
  timed first "$BAMS" -r "$WORK/repo" backup -q --json "$MNT/src"
  timed unchanged "$BAMS" -r "$WORK/repo" backup -q --json "$MNT/src"
  timed ls "$BAMS" -r "$WORK/repo" ls latest "$MNT/src/d$(printf %04d $(( DIRS / 2 )))" --no-recursive
  mkdir -p "$MNT/restore"
  sync; echo 3 >/proc/sys/vm/drop_caches
  timed restore "$BAMS" -r "$WORK/repo" restore latest --target "$MNT/restore" -q
  listed=$(wc -l <"$WORK/ls.out")
  restored=$(find "$MNT/restore" -type f | wc -l)
  sample=$(printf 'd%04d' $(( DIRS - 1 )))
  diff -r "$MNT/src/$sample" "$MNT/restore$MNT/src/$sample" >/dev/null && same=yes || same=NO
  blobs=$("$BAMS" -r "$WORK/repo" stats --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("blobs") or s.get("blob_count") or 0)')
  repo_mb=$(du -sm "$WORK/repo" | cut -f1)
  index_mb=$(du -sm "$WORK/repo/index" | cut -f1)
  unchanged_kib=$(awk '$1 == "unchanged" {print $3}' "$WORK/times")
  cat <<EOF

| $FILES files ($DIRS dirs × $PER_DIR, 0–380 B each) | time | rate | peak RSS |
| --- | --- | --- | --- |
$(row first "first backup, cold cache")
$(row unchanged "unchanged re-backup")
$(row ls "ls of one directory ($listed entries)" "$listed")
$(row restore "restore of everything")

| what | value |
| --- | --- |
| files restored / in source | $restored / $FILES (one directory compared byte for byte: $same) |
| blobs in the repository | $blobs |
| repository / of it index files | $repo_mb MiB / $index_mb MiB |
| index memory per blob (MasterIndex::BYTES_PER_BLOB) | 32 B |
| unchanged re-backup peak RSS per blob | $(python3 -c "print(f'{$unchanged_kib * 1024 / max($blobs, 1):.0f} B')") |
EOF
  umount "$MNT"
  rm -f "$WORK/fs.img"
fi

if [[ " $PARTS " == *" 2 "* ]]; then
  echo "== $INDEX_FILES small index files"
  BAMS_BENCH_DIR=$WORK cargo bench -q --locked -p bams-store --bench index_open -- "$INDEX_FILES" 2>/dev/null | tail -1 >"$WORK/index.json"
  python3 - "$WORK/index.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = "PASS" if r["open_after_s"] < 2 else "FAIL"
print(f"""
| many writers: {r['index_files']:,} index files, {r['blobs']:,} blobs | value |
| --- | --- |
| read the index before consolidation | {r['open_before_s']:.2f} s |
| consolidate (shared lock, beside backups) | {r['consolidate_s']:.2f} s → {r['files_after']} file(s) |
| read the index after | {r['open_after_s']:.3f} s — < 2 s: {ok} |""")
PY
fi
