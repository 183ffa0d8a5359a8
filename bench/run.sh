#!/usr/bin/env bash
# Side-by-side benchmark: bams vs restic vs borg (Debian packages) on one machine, one run.
#
# Dataset (built once under $BENCH_DIR, reused): a tree of real files (/usr/share + a Python
# stdlib, ~1.1 GiB, ~90k files) and a 3 GiB ext4 image on a loop device holding a copy of it;
# image v2 = v1 with ~3% of its files overwritten in place.
# Steps per tool: first tree backup with the page cache dropped (3 runs into throwaway
# repositories, median), init, first tree backup warm (3 runs into fresh repositories,
# median), unchanged re-backup (3 runs, median), re-backup after 2% of files changed, image v1
# and v2 (page cache dropped), full restore of the tree (checked byte-identical with diff -r),
# repository size, peak RSS. Prints a table of times/sizes, bams/peer ratios and issue 18's
# targets.
#
# Needs root (loop mount) and scripts/setup-dev.sh (restic, borgbackup, /usr/bin/time).
# Usage: bench/run.sh            (BENCH_DIR=/var/tmp/bams-bench by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/var/tmp/bams-bench}
PY_LIB=${PY_LIB:-$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')}
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
export BAMS_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
mkdir -p "$BENCH_DIR"
DATA=$BENCH_DIR/tree
IMG1=$BENCH_DIR/image-v1.img
IMG2=$BENCH_DIR/image-v2.img

# ---- dataset ----
if [ ! -f "$BENCH_DIR/.tree-ready" ]; then
  rm -rf "$DATA"; mkdir -p "$DATA"
  cp -a /usr/share "$DATA/share"
  cp -a "$PY_LIB" "$DATA/python"
  touch "$BENCH_DIR/.tree-ready"
fi
if [ ! -f "$BENCH_DIR/.image-ready" ]; then
  rm -f "$IMG1" "$IMG2"
  truncate -s 3G "$IMG1"
  mkfs.ext4 -q -F "$IMG1"
  mnt=$(mktemp -d)
  mount -o loop "$IMG1" "$mnt"
  cp -a "$DATA/." "$mnt/"
  umount "$mnt"
  cp --sparse=always "$IMG1" "$IMG2"
  mount -o loop "$IMG2" "$mnt"
  # ~3% of files overwritten in place with new bytes of the same size.
  (cd "$mnt" && find . -type f -size +0 | sort | awk 'NR % 33 == 0' | while read -r f; do
     s=$(stat -c %s "$f"); head -c "$s" /dev/urandom | dd of="$f" conv=notrunc status=none; done)
  umount "$mnt"; rmdir "$mnt"
  touch "$BENCH_DIR/.image-ready"
fi
# Bytes that really changed between the image versions: differing 4 KiB blocks.
CHANGED=$(python3 bench/changed_blocks.py "$IMG1" "$IMG2")
# Change 2% of the tree's files for the incremental step (on a copy, so reruns start equal).
MOD=$BENCH_DIR/tree-mod
rm -rf "$MOD"; cp -a "$DATA" "$MOD"
(cd "$MOD" && find . -type f | sort | awk 'NR % 50 == 0' | while read -r f; do echo "changed $RANDOM" >> "$f"; done)
# The page cache here holds ~2.8 GB: warm the tree right before each tree step so every tool
# reads it from memory. (GNU tar skips reading when writing to /dev/null, so use cat.)
warm() { find "$1" -type f -print0 | xargs -0 cat > /dev/null; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

RESULTS=$BENCH_DIR/results.tsv
: > "$RESULTS"
measure() { # tool step command...
  local tool=$1 step=$2; shift 2
  local t; t=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$t" "$@" >/dev/null 2>"$BENCH_DIR/$tool-$step.log" || { echo "$tool $step failed; see $BENCH_DIR/$tool-$step.log" >&2; cat "$BENCH_DIR/$tool-$step.log" >&2; exit 1; }
  read -r secs rss < "$t"; rm -f "$t"
  printf '%s\t%s\t%s\t%s\n' "$tool" "$step" "$secs" "$rss" >> "$RESULTS"
}
size_of() { du -sb "$1" | cut -f1; }

run_tool() { # tool
  local tool=$1 repo=$BENCH_DIR/repo-$1 out=$BENCH_DIR/restore-$1
  rm -rf "$repo" "$out" "$repo-cold"; mkdir -p "$out"
  # A first backup as a nightly job meets its data: nothing in the page cache. Three of them,
  # each into a fresh repository, and the median reported: single cold runs on this virtual
  # disk spread by half (bams 10.2–16.0 s, restic 39–44 s in one hour of session 18).
  for _ in 1 2 3; do
    rm -rf "$repo-cold"
    case $tool in
      bams) "$BAMS" -q -r "$repo-cold" repo init >/dev/null; cold
            measure bams tree0 "$BAMS" -q -r "$repo-cold" backup "$DATA" --host bench ;;
      restic) restic -q -r "$repo-cold" init >/dev/null; cold
              measure restic tree0 restic -q -r "$repo-cold" backup "$DATA" --host bench ;;
      borg) borg init -e repokey "$repo-cold" >/dev/null 2>&1; cold
            measure borg tree0 borg create "$repo-cold::t0" "$DATA" ;;
    esac
  done
  rm -rf "$repo-cold"
  warm "$DATA"
  case $tool in
    bams)
      measure bams init "$BAMS" -q -r "$repo" repo init
      measure bams tree1 "$BAMS" -q -r "$repo" backup "$DATA" --host bench
      for _ in 2 3; do
        rm -rf "$repo"; "$BAMS" -q -r "$repo" repo init >/dev/null; warm "$DATA"
        measure bams tree1 "$BAMS" -q -r "$repo" backup "$DATA" --host bench
      done
      for _ in 1 2 3; do warm "$DATA"; measure bams tree2 "$BAMS" -q -r "$repo" backup "$DATA" --host bench; done
      ;;
    restic)
      measure restic init restic -q -r "$repo" init
      measure restic tree1 restic -q -r "$repo" backup "$DATA" --host bench
      for _ in 2 3; do
        rm -rf "$repo"; restic -q -r "$repo" init >/dev/null; warm "$DATA"
        measure restic tree1 restic -q -r "$repo" backup "$DATA" --host bench
      done
      for _ in 1 2 3; do warm "$DATA"; measure restic tree2 restic -q -r "$repo" backup "$DATA" --host bench; done
      ;;
    borg)
      measure borg init borg init -e repokey "$repo"
      measure borg tree1 borg create "$repo::t1" "$DATA"
      for _ in 2 3; do
        rm -rf "$repo"; borg init -e repokey "$repo" >/dev/null 2>&1; warm "$DATA"
        measure borg tree1 borg create "$repo::t1" "$DATA"
      done
      for n in 1 2 3; do warm "$DATA"; measure borg tree2 borg create "$repo::t2-$n" "$DATA"; done
      ;;
  esac
  # The 2%-changed step backs up the modified copy under the same path via a bind mount.
  mount --bind "$MOD" "$DATA"
  warm "$DATA"
  case $tool in
    bams) measure bams tree3 "$BAMS" -q -r "$repo" backup "$DATA" --host bench ;;
    restic) measure restic tree3 restic -q -r "$repo" backup "$DATA" --host bench ;;
    borg) measure borg tree3 borg create "$repo::t3" "$DATA" ;;
  esac
  umount "$DATA"
  local before; before=$(size_of "$repo")
  cold
  case $tool in
    bams) measure bams img1 "$BAMS" -q -r "$repo" backup --image "$IMG1" --host img ;;
    restic) measure restic img1 restic -q -r "$repo" backup "$IMG1" --host img ;;
    borg) measure borg img1 borg create "$repo::i1" "$IMG1" ;;
  esac
  local mid; mid=$(size_of "$repo")
  cp --sparse=always "$IMG2" "$BENCH_DIR/img-cur.img"
  # Same path for both versions so each tool sees "the same file, changed".
  mount --bind "$IMG2" "$IMG1"
  cold
  case $tool in
    bams) measure bams img2 "$BAMS" -q -r "$repo" backup --image "$IMG1" --host img ;;
    restic) measure restic img2 restic -q -r "$repo" backup "$IMG1" --host img ;;
    borg) measure borg img2 borg create "$repo::i2" "$IMG1" ;;
  esac
  umount "$IMG1"; rm -f "$BENCH_DIR/img-cur.img"
  local after; after=$(size_of "$repo")
  printf '%s\timg2_added\t%s\t0\n' "$tool" "$((after - mid))" >> "$RESULTS"
  printf '%s\timg1_added\t%s\t0\n' "$tool" "$((mid - before))" >> "$RESULTS"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  case $tool in
    bams) local snap; snap=$("$BAMS" -r "$repo" snapshots --host bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
          measure bams restore "$BAMS" -q -r "$repo" restore "$snap" --target "$out" ;;
    restic) local rsnap; rsnap=$(restic -r "$repo" snapshots --host bench --json | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin), key=lambda s: s["time"])[0]["id"])')
            measure restic restore restic -q -r "$repo" restore "$rsnap" --target "$out" ;;
    borg) measure borg restore sh -c "cd '$out' && borg extract '$repo::t1'" ;;
  esac
  diff -r --no-dereference "$DATA" "$out$DATA" >/dev/null || { echo "$tool: restore differs from the source" >&2; exit 1; }
  printf '%s\trepo_size\t%s\t0\n' "$tool" "$(size_of "$repo")" >> "$RESULTS"
  rm -rf "$out"
}

for tool in bams restic borg; do echo "== $tool" >&2; run_tool "$tool"; done
python3 bench/report.py "$RESULTS" "$CHANGED" | tee "$BENCH_DIR/report.md"
