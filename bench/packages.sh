#!/usr/bin/env bash
# Package size and install time of bams, side by side with restic and borg from Debian 12.
#
#   bash bench/packages.sh [--no-build]      (root; needs mmdebstrap and cargo-deb)
#
# Builds the release packages (packaging/build-debs.sh, full compression), then, in a clean
# Debian 12 root each, downloads a package and its dependencies first and times only the
# install (`apt-get install` from the local cache), so the mirror's speed does not count.
# Prints a table: .deb size, installed size (dpkg's Installed-Size of the package and of the
# dependencies apt added), install time (median of 3).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "packages.sh: run as root" >&2; exit 1; }
build=1
[ "${1:-}" = "--no-build" ] && build=0
out="$(mktemp -d /var/tmp/bams-bench-debs.XXXXXX)"
trap 'for m in "$out"/root*/proc; do umount -l "$m" 2>/dev/null || true; done; rm -rf --one-file-system "$out"' EXIT

if [ "$build" = 1 ]; then
  bash packaging/build-debs.sh --output "$out/debs" >/dev/null
else
  bash packaging/build-debs.sh --no-build --output "$out/debs" >/dev/null
fi
mmdebstrap --quiet --variant=apt bookworm "$out/base"

# One install of $@ (apt arguments) into a copy of the clean root, timed; prints seconds.
install_once() {
  local root="$out/root.$RANDOM"
  cp -a "$out/base" "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp "$out"/debs/*.deb "$root/tmp/"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only --no-install-recommends "$@" >/dev/null 2>&1
  local t0 t1
  t0=$(date +%s.%N)
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  # Installed size of everything apt added, KiB.
  chroot "$root" dpkg-query -W -f='${Installed-Size}\n' >"$root/sizes"
  chroot "$out/base" dpkg-query -W -f='${Installed-Size}\n' >"$out/base-sizes"
  local added base
  added=$(awk '{s += $1} END {print s}' "$root/sizes")
  base=$(awk '{s += $1} END {print s}' "$out/base-sizes")
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') $((added - base))"
  rm -rf --one-file-system "$root"
}

median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

row() {
  local name="$1" deb_size="$2"; shift 2
  local times=() size=0
  for _ in 1 2 3; do
    read -r t s < <(install_once "$@")
    times+=("$t"); size="$s"
  done
  printf '| %-22s | %10s | %12s | %8.2f s |\n' "$name" "$deb_size" "$((size / 1024)) MiB" "$(median3 "${times[@]}")"
}

deb_of() { stat -c %s "$1" | awk '{printf "%.1f MiB", $1 / 1048576}'; }
apt_size() { apt-cache show "$1" | awk '/^Size:/ {printf "%.1f MiB", $2 / 1048576; exit}'; }

echo "| package (with its dependencies) | .deb | installed | install time |"
echo "|---|---:|---:|---:|"
row "bams" "$(deb_of "$out"/debs/bams_*.deb)" /tmp/"$(basename "$out"/debs/bams_*.deb)"
row "bams + bams-agent" "$(deb_of "$out"/debs/bams-agent_*.deb) more" /tmp/"$(basename "$out"/debs/bams_*.deb)" /tmp/"$(basename "$out"/debs/bams-agent_*.deb)"
row "restic (Debian 12)" "$(apt_size restic)" restic
row "borgbackup (Debian 12)" "$(apt_size borgbackup)" borgbackup
