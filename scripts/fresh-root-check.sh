#!/usr/bin/env bash
# Runs the README's commands in a clean Debian 12 root, as a new user meets them.
#
#   scripts/fresh-root-check.sh [--like-host] [--server] [--tests] [--keep]
#
# Builds a minimal bookworm root with mmdebstrap (this machine's apt sources), clones this
# checkout's HEAD into it, and runs `scripts/setup-dev.sh` inside a chroot, timing it and
# listing what it installed. `--like-host` first installs this machine's own qemu-utils into
# the root (repacked with dpkg-repack), reproducing machine images that ship a newer
# qemu-utils than bookworm's. `--server` then runs the first README command (server on
# embedded defaults) and asks `/healthz`; `--tests` runs the second (every test). The host's
# Rust toolchain is bind-mounted, as a new machine of this kind has one. Needs root.
set -euo pipefail

like_host=0 server=0 tests=0 keep=0
for a in "$@"; do
  case "$a" in
    --like-host) like_host=1 ;;
    --server) server=1 ;;
    --tests) tests=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--like-host] [--server] [--tests] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-root-check: run as root" >&2; exit 1; }
command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
src="${BAMS_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
root="$(mktemp -d /var/tmp/bams-fresh.XXXXXX)"
mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ "$keep" -eq 0 ]; then rm -rf --one-file-system "$root"; else echo "fresh-root-check: root kept at $root"; fi
}
trap cleanup EXIT
bind() { mkdir -p "$root$2"; mount --bind "$1" "$root$2"; mounts+=("$root$2"); }

t0=$(date +%s)
mmdebstrap --quiet --variant=apt --include=ca-certificates bookworm "$root"
echo "fresh-root-check: bookworm root in $(($(date +%s) - t0)) s"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /sys /sys
bind /dev /dev
mount -t devpts devpts "$root/dev/pts" 2>/dev/null && mounts+=("$root/dev/pts") || true
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CI="${CI:-}" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"
}
# The machine's own trust anchors (a site CA in front of the package registries is common).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null 2>&1
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"

if [ "$like_host" -eq 1 ]; then
  ( cd "$root/tmp" && dpkg-repack qemu-utils >/dev/null 2>&1 || { apt-get install -y -qq dpkg-repack >/dev/null && dpkg-repack qemu-utils >/dev/null; } )
  in_root apt-get update -qq
  in_root sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /tmp/qemu-utils_*.deb >/dev/null'
  echo "fresh-root-check: root has the host's $(in_root dpkg-query -W qemu-utils)"
fi

git clone -q "$src" "$root/src"
[ -d /root/.cargo ] && bind /root/.cargo /root/.cargo
[ -d /root/.rustup ] && bind /root/.rustup /root/.rustup
in_root dpkg-query -W -f='${Package}\n' | sort >"$root/tmp/before"
t0=$(date +%s)
in_root bash -c 'cd /src && bash scripts/setup-dev.sh'
echo "fresh-root-check: setup-dev.sh took $(($(date +%s) - t0)) s"
in_root dpkg-query -W -f='${Package}\n' | sort >"$root/tmp/after"
echo "fresh-root-check: it installed $(comm -13 "$root/tmp/before" "$root/tmp/after" | wc -l) packages; asked for: $(grep -oE '^  [a-z0-9.+ -]+#' "$src/scripts/setup-dev.sh" | tr -d '#' | xargs)"
echo "fresh-root-check: qemu-img $(in_root qemu-img --version | head -1 | awk '{print $3}'), qemu-block-extra: $(in_root dpkg-query -W -f='${db:Status-Status} ${Version}' qemu-block-extra 2>/dev/null | grep '^installed' || echo 'not installed')"

if [ "$server" -eq 1 ]; then
  in_root bash -c 'cd /src && cargo build --release --locked -p bams -q'
  in_root bash -c 'cd /src && (./target/release/bams server >/tmp/server.log 2>&1 & echo $! >/tmp/server.pid) ; for i in $(seq 1 100); do curl -fs http://127.0.0.1:4848/healthz && exit 0; sleep 0.2; done; cat /tmp/server.log; exit 1'
  echo; echo "fresh-root-check: server on embedded defaults answered /healthz; it printed: $(head -1 "$root/tmp/server.log")"
  kill "$(cat "$root/tmp/server.pid")" 2>/dev/null || true
fi
if [ "$tests" -eq 1 ]; then
  t0=$(date +%s)
  in_root bash -c 'cd /src && cargo test --workspace --locked'
  echo "fresh-root-check: tests passed in $(($(date +%s) - t0)) s"
fi
