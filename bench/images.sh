#!/usr/bin/env bash
# Bare-metal images benchmark (issue 15): bams against the seed's way (full .img files over
# plain HTTP, bench/seed_baseline.py), in one run.
#
# Dataset (built once under $BENCH_DIR, reused): a 4 GiB ext4 disk image holding real files
# (/usr/share and a Python stdlib, ~1.4 GB), and v2 = v1 with every 33rd file (~3 %)
# overwritten in place on a loop mount; a 1 GiB image (/usr/share/doc and locale) for the
# concurrent flashes.
# Steps, each for bams and the baseline:
#   upload v1 and v2 with curl as the seed's scripts do (bytes stored per version),
#   download v2, flash v2 onto a disk holding v1 (bytes fetched against the bytes that really
#   changed: differing 4 KiB blocks), and for bams the machine's round trip through the boot
#   API (sync a disk holding v2 back with v1 as parent, then flash v1 again).
# Then 20 `bams flash` at once of one version onto empty disks in /dev/shm: wall time,
# aggregate throughput, server CPU seconds and peak RSS.
#
# Needs root (loop mount) and scripts/setup-dev.sh (curl, jq, python3).
# Usage: bench/images.sh          (BENCH_DIR=/var/tmp/bams-images-bench, CONC=20, SIZE=4G)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/var/tmp/bams-images-bench}
SIZE=${SIZE:-4G}
CONC=${CONC:-20}
PY_LIB=${PY_LIB:-$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')}
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
mkdir -p "$BENCH_DIR"
IMG1=$BENCH_DIR/disk-v1.img
IMG2=$BENCH_DIR/disk-v2.img
SMALL=$BENCH_DIR/small.img
WORK=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
SHM=$(mktemp -d /dev/shm/bams-images-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK" "$SHM"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
mib() { python3 -c "print(f'{$1 / 1048576:.1f} MiB')"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ---- dataset ----
if [ ! -f "$BENCH_DIR/.ready" ]; then
  rm -f "$IMG1" "$IMG2" "$SMALL"
  mnt=$(mktemp -d)
  truncate -s "$SIZE" "$IMG1"
  mkfs.ext4 -q -F "$IMG1"
  mount -o loop "$IMG1" "$mnt"
  cp -a /usr/share "$mnt/share"
  cp -a "$PY_LIB" "$mnt/python"
  umount "$mnt"
  cp --sparse=always "$IMG1" "$IMG2"
  mount -o loop "$IMG2" "$mnt"
  (cd "$mnt" && find . -type f -size +0 | sort | awk 'NR % 33 == 0' | while read -r f; do
     s=$(stat -c %s "$f"); head -c "$s" /dev/urandom | dd of="$f" conv=notrunc status=none; done)
  umount "$mnt"
  truncate -s 1G "$SMALL"
  mkfs.ext4 -q -F "$SMALL"
  mount -o loop "$SMALL" "$mnt"
  cp -a /usr/share/doc /usr/share/locale "$mnt/"
  umount "$mnt"; rmdir "$mnt"
  touch "$BENCH_DIR/.ready"
fi
CHANGED=$(python3 bench/changed_blocks.py "$IMG1" "$IMG2")
IMG_BYTES=$(stat -c %s "$IMG1")
SUM2=$(sha256sum "$IMG2" | cut -d' ' -f1)
echo "dataset: $(mib "$IMG_BYTES") image, $(du -sm "$IMG1" | cut -f1) MiB used; v2 changes $(mib "$CHANGED") in 4 KiB blocks"

# ---- bams ----
PORT=$(free_port)
mkdir -p "$WORK/server"
echo > "$WORK/none.yaml"
BAMS_CONFIG=$WORK/none.yaml BAMS_DATA_DIR=$WORK/server BAMS_LISTEN=127.0.0.1:$PORT \
  BAMS_BACULA_SD_CONFIG=$WORK/bacula-sd.conf "$BAMS" server >"$WORK/server.out" 2>"$WORK/server.log" &
SPID=$!; PIDS+=("$SPID")
for _ in $(seq 1 300); do grep -q "listening on" "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT
PW=$(cat "$WORK/server/initial-admin-password")
TOKEN=$(curl -sf -H 'content-type: application/json' -d "{\"username\":\"admin\",\"password\":\"$PW\"}" "$URL/api/v1/auth/login" | jq -r .token)
H="Authorization: Bearer $TOKEN"
api() { curl -sf -H "$H" -H 'content-type: application/json' "$@"; }
UUID=$(api -d "{\"name\":\"bench\",\"size\":$IMG_BYTES,\"disk\":\"/dev/vda\"}" "$URL/api/v1/images" | jq -r .uuid)
upload() { curl -sf -H "$H" -F "file=@$1" "$URL/image/$UUID" | awk '{print $4}'; }
t=$(now); V1=$(upload "$IMG1"); B_UP1=$(since "$t")
t=$(now); V2=$(upload "$IMG2"); B_UP2=$(since "$t")
VERS=$(api "$URL/api/v1/images/$UUID/versions")
B_ST1=$(jq ".[] | select(.number == $V1) | .bytes_added" <<<"$VERS")
B_ST2=$(jq ".[] | select(.number == $V2) | .bytes_added" <<<"$VERS")
t=$(now); got=$(curl -sf -H "$H" "$URL/image/$UUID/$V2" | sha256sum | cut -d' ' -f1); B_DOWN=$(since "$t")
[ "$got" = "$SUM2" ] || { echo "bams download of v2 differs" >&2; exit 1; }
cp --sparse=always "$IMG1" "$WORK/target.img"
sync; echo 3 >/proc/sys/vm/drop_caches
t=$(now)
B_FLASH_JSON=$(BAMS_TOKEN=$TOKEN "$BAMS" flash --server "$URL" --image "$UUID@$V2" --device "$WORK/target.img" --json)
B_FLASH=$(since "$t")
B_FETCH=$(jq .bytes_fetched <<<"$B_FLASH_JSON")
cmp -s "$WORK/target.img" "$IMG2" || { echo "bams flash of v2 is not v2" >&2; exit 1; }

# The machine's round trip through the boot API: its disk holds v1 (flashed, with update).
MAC=52:54:00:be:0c:01
MID=$(api -d "{\"name\":\"bench1\",\"macs\":[\"$MAC\"]}" "$URL/api/v1/machines" | jq .id)
boot_token() { curl -sf "$URL/boot/$MAC.ipxe" | grep -o 'bams.token=[0-9a-f]*' | cut -d= -f2; }
cp --sparse=always "$IMG1" "$WORK/machine.img"
api -d "{\"image\":\"$UUID\",\"version\":$V1,\"update\":true}" "$URL/api/v1/machines/$MID/boot" >/dev/null
"$BAMS" flash --server "$URL" --boot-token "$(boot_token)" --device-map "/dev/vda=$WORK/machine.img" --quiet
cp --sparse=always "$IMG2" "$WORK/machine.img"   # the machine's work: v1 became v2
api -d "{\"image\":\"$UUID\",\"version\":$V1}" "$URL/api/v1/machines/$MID/boot" >/dev/null
t=$(now)
"$BAMS" flash --server "$URL" --boot-token "$(boot_token)" --device-map "/dev/vda=$WORK/machine.img" --quiet
B_TRIP=$(since "$t")
cmp -s "$WORK/machine.img" "$IMG1" || { echo "the machine is not back at v1" >&2; exit 1; }
LAST=$(api "$URL/api/v1/images/$UUID/versions" | jq '.[-1]')
B_SYNC_SENT=$(jq .bytes_sent <<<"$LAST")
[ "$(curl -sf -H "$H" "$URL/image/$UUID/$(jq .number <<<"$LAST")" | sha256sum | cut -d' ' -f1)" = "$SUM2" ] ||
  { echo "the synced version is not the machine's disk" >&2; exit 1; }
B_TRIP_FETCH=$(api "$URL/api/v1/machines/$MID/history" | jq '.[0].details.flashed[0].report.bytes_fetched')

# ---- baseline: full .img files over HTTP ----
BPORT=$(free_port)
mkdir -p "$WORK/seed"
python3 bench/seed_baseline.py "$BPORT" "$WORK/seed" &
PIDS+=("$!")
for _ in $(seq 1 100); do curl -s "127.0.0.1:$BPORT/" >/dev/null && break; sleep 0.1; done
SEED=http://127.0.0.1:$BPORT
t=$(now); curl -sf -X POST -T "$IMG1" -H "content-type: application/octet-stream" "$SEED/image/bench" >/dev/null; S_UP1=$(since "$t")
t=$(now); curl -sf -X POST -T "$IMG2" -H "content-type: application/octet-stream" "$SEED/image/bench" >/dev/null; S_UP2=$(since "$t")
S_ST1=$(stat -c %s "$WORK/seed/bench-1.img"); S_ST2=$(stat -c %s "$WORK/seed/bench-2.img")
t=$(now); got=$(curl -sf "$SEED/image/bench/2" | sha256sum | cut -d' ' -f1); S_DOWN=$(since "$t")
[ "$got" = "$SUM2" ] || { echo "baseline download differs" >&2; exit 1; }
cp --sparse=always "$IMG1" "$WORK/target2.img"
sync; echo 3 >/proc/sys/vm/drop_caches
t=$(now)
curl -sf "$SEED/image/bench/2" | dd of="$WORK/target2.img" bs=1M conv=notrunc,sparse iflag=fullblock status=none
S_FLASH=$(since "$t")
cmp -s "$WORK/target2.img" "$IMG2" || { echo "baseline flash is not v2" >&2; exit 1; }
rm -f "$WORK"/target*.img "$WORK/machine.img" "$WORK"/seed/*.img

# ---- concurrent flashes ----
SUUID=$(api -d '{"name":"small","size":1073741824}' "$URL/api/v1/images" | jq -r .uuid)
SV=$(curl -sf -H "$H" -F "file=@$SMALL" "$URL/image/$SUUID" | awk '{print $4}')
for i in $(seq 1 "$CONC"); do truncate -s 1G "$SHM/d$i.img"; done
( while kill -0 "$SPID" 2>/dev/null; do awk '/VmRSS/{print $2}' "/proc/$SPID/status"; sleep 0.2; done ) >"$WORK/rss.txt" &
RSSPID=$!; PIDS+=("$RSSPID")
c0=$(cpu_ticks "$SPID")
t=$(now)
FLASHES=()
for i in $(seq 1 "$CONC"); do
  BAMS_TOKEN=$TOKEN "$BAMS" flash --server "$URL" --image "$SUUID@$SV" --device "$SHM/d$i.img" --json >"$WORK/f$i.json" &
  FLASHES+=("$!")
done
for p in "${FLASHES[@]}"; do wait "$p" || { echo "a concurrent flash failed" >&2; exit 1; }; done
C_WALL=$(since "$t")
c1=$(cpu_ticks "$SPID")
kill "$RSSPID" 2>/dev/null || true
C_CPU=$(python3 -c "print(f'{($c1 - $c0) / $(getconf CLK_TCK):.1f}')")
C_RSS=$(sort -n "$WORK/rss.txt" | tail -1)
C_FETCHED=$(cat "$WORK"/f*.json | jq -s 'map(.bytes_fetched) | add')
for i in $(seq 1 "$CONC"); do cmp -s "$SHM/d$i.img" "$SMALL" || { echo "concurrent flash $i differs" >&2; exit 1; }; done

# ---- report ----
python3 - <<PY
def r(a, b):
    return f"{a / b:.2f}" if b else "-"
mib = lambda n: f"{n / 1048576:,.1f} MiB"
rows = [
    ("upload v1 (whole image, curl)", f"{$B_UP1:.2f} s", f"{$S_UP1:.2f} s", r($B_UP1, $S_UP1)),
    ("stored for v1", mib($B_ST1), mib($S_ST1), r($B_ST1, $S_ST1)),
    ("upload v2", f"{$B_UP2:.2f} s", f"{$S_UP2:.2f} s", r($B_UP2, $S_UP2)),
    ("stored for v2", mib($B_ST2), mib($S_ST2), r($B_ST2, $S_ST2)),
    ("download v2", f"{$B_DOWN:.2f} s", f"{$S_DOWN:.2f} s", r($B_DOWN, $S_DOWN)),
    ("flash v2 onto a disk holding v1", f"{$B_FLASH:.2f} s", f"{$S_FLASH:.2f} s", r($B_FLASH, $S_FLASH)),
    ("bytes fetched by that flash", mib($B_FETCH), mib($IMG_BYTES), r($B_FETCH, $IMG_BYTES)),
]
print()
print("| step | bams | full .img over HTTP | bams/baseline |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
print()
print(f"really changed between v1 and v2: {mib($CHANGED)}; fetched/changed = {$B_FETCH / $CHANGED:.2f}")
print(f"machine round trip (sync v2 back with v1 as parent, flash v1 again): {$B_TRIP:.2f} s, "
      f"sync sent {mib($B_SYNC_SENT)} ({$B_SYNC_SENT / $CHANGED:.2f}x changed), flash fetched {mib($B_TRIP_FETCH)}")
print(f"{$CONC} concurrent flashes of a 1 GiB version onto empty disks: {$C_WALL:.2f} s wall, "
      f"{$C_FETCHED / 1048576 / $C_WALL:,.0f} MiB/s fetched in all ({mib($C_FETCHED)}), "
      f"server CPU {$C_CPU} s, server peak RSS {$C_RSS / 1024:.0f} MiB")
PY
