#!/usr/bin/env bash
# Scale benchmark (issue 18): how the cost grows with the number of files and writers.
#
# 1. Many small files: DIRS directories × PER_DIR files (default 1,000 × 10,000 = 10 million),
#    each with content of its own (0–380 bytes: see below). Timed with peak RSS: first backup
#    (page cache dropped), unchanged re-backup, `ls` of one directory, restore of everything;
#    and the index's memory per blob (MasterIndex::BYTES_PER_BLOB, and the unchanged
#    re-backup's peak RSS over the blobs the repository holds).
#    Disk: ten million files of 0–4 KiB need ~40 GB as 4 KiB blocks, twice (source + restore).
#    Source and restore live on ext4 file systems in loop files with 512-byte inodes and
#    inline_data, where files up to ~380 bytes stay inside their inode: ~5 GB of inode tables
#    each instead of 40 GB of blocks. File sizes are therefore 0–380 bytes.
#    The tree is generated once (~10 min for 10M files) into $SCALE_DIR (default
#    /var/tmp/bams-scale-data) and mounted read-only by later runs; each run restores into a
#    fresh file system.
# 2. Many writers: `cargo bench -p bams-store --bench index_open` with INDEX_FILES (default
#    100,000) small index files: reading the index before and after consolidation.
#
# Needs root (loop mounts), mkfs.ext4, python3. Usage: bench/scale.sh (DIRS=, PER_DIR=,
# INDEX_FILES=, PARTS="1 2"; WORK=/var/tmp; ~25 GB free for 10M files).
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-10000}
INDEX_FILES=${INDEX_FILES:-100000}
PARTS=${PARTS:-1 2}
BASE=${WORK:-/var/tmp}
DATA=${SCALE_DIR:-/var/tmp/bams-scale-data}
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
WORK=$(mktemp -d "$BASE/bams-scale.XXXXXX")
SRC_MNT=$WORK/src-fs
DST_MNT=$WORK/restore-fs
cleanup() {
  for m in "$SRC_MNT" "$DST_MNT"; do mountpoint -q "$m" && umount "$m"; done
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
make_fs() { # image inodes: ext4 where small files live in their inodes
  truncate -s $(( $2 * 512 + (2 << 30) )) "$1"
  mkfs.ext4 -q -F -N "$2" -I 512 -O inline_data -E lazy_itable_init=1,nodiscard "$1"
}

if [[ " $PARTS " == *" 1 "* ]]; then
  READY=$DATA/.ready-${DIRS}x${PER_DIR}
  mkdir -p "$DATA" "$SRC_MNT" "$DST_MNT"
  if [ ! -f "$READY" ]; then
    rm -f "$DATA"/.ready-* "$DATA/src.img"
    make_fs "$DATA/src.img" $(( FILES + DIRS + 100000 ))
    mount -o loop,noatime "$DATA/src.img" "$SRC_MNT"
    echo "== generating $FILES files in $DIRS directories (once; kept in $DATA)"
    t0=$(date +%s)
    python3 - "$SRC_MNT/src" "$DIRS" "$PER_DIR" <<'PY'
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
    umount "$SRC_MNT"
    touch "$READY"
  fi
  mount -o loop,ro "$DATA/src.img" "$SRC_MNT"
  SRC=$SRC_MNT/src
  make_fs "$WORK/restore.img" $(( FILES + DIRS * 2 + 100000 ))
  mount -o loop,noatime "$WORK/restore.img" "$DST_MNT"
  "$BAMS" -r "$WORK/repo" repo init -q
  echo "== $FILES files: backup, unchanged, ls, restore"
  sync; echo 3 >/proc/sys/vm/drop_caches
  timed first "$BAMS" -r "$WORK/repo" backup -q --json "$SRC"
  timed unchanged "$BAMS" -r "$WORK/repo" backup -q --json "$SRC"
  timed ls "$BAMS" -r "$WORK/repo" ls latest "$SRC/d$(printf %04d $(( DIRS / 2 )))" --no-recursive
  sync; echo 3 >/proc/sys/vm/drop_caches
  timed restore "$BAMS" -r "$WORK/repo" restore latest --target "$DST_MNT" -q
  listed=$(wc -l <"$WORK/ls.out")
  restored=$(find "$DST_MNT$SRC" -type f | wc -l)
  sample=$(printf 'd%04d' $(( DIRS - 1 )))
  diff -r "$SRC/$sample" "$DST_MNT$SRC/$sample" >/dev/null && same=yes || same=NO
  blobs=$("$BAMS" -r "$WORK/repo" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["blobs"])')
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
  umount "$DST_MNT"
  rm -f "$WORK/restore.img"
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
