#!/usr/bin/env bash
# A server-less demo of the repository commands: build bams, create a repository
# under ./bams-data with the embedded defaults, back up a sample tree, list, check, restore and
# compare. Re-runnable: each run adds a snapshot to the same repository.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p bams
BAMS=$PWD/target/release/bams
DATA=${BAMS_DATA_DIR:-$PWD/bams-data}
REPO=$DATA/repo
mkdir -p "$DATA"
# A generated password kept next to the repository (0600): demo only; use your own in production.
if [ ! -f "$DATA/password" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 > "$DATA/password")
fi
export BAMS_PASSWORD_FILE=$DATA/password BAMS_REPOSITORY=$REPO
[ -f "$REPO/config" ] || "$BAMS" repo init
SRC=${1:-$PWD/crates}
"$BAMS" backup "$SRC" --tag demo
"$BAMS" snapshots
"$BAMS" check --read-data
rm -rf "$DATA/restore"
"$BAMS" restore latest --target "$DATA/restore" --verify
diff -r --no-dereference "$SRC" "$DATA/restore$SRC" && echo "demo: restored tree is identical to $SRC"
"$BAMS" stats
