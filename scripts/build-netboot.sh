#!/usr/bin/env bash
# Build the management OS that machines network-boot to be flashed: the Debian kernel
# (linux-image-amd64), an initramfs of busybox-static, the network and disk drivers, the
# `bams` binary with its libraries, and a small /init that brings up the network by DHCP and
# runs `bams flash --from-cmdline --power` (the server's boot script puts bams.server= and a
# one-time bams.token= on the kernel command line). Nothing is compiled: every piece is a
# Debian package or this project's binary.
#
#   scripts/build-netboot.sh [OUT_DIR] [BAMS_BINARY]
#
# OUT_DIR defaults to /var/lib/bams/netboot (where `bams server` looks by default, see
# images.netboot_dir); BAMS_BINARY to the `bams` on PATH. Writes OUT_DIR/vmlinuz and
# OUT_DIR/initrd.img. The packages are fetched with `apt-get download` into
# $BAMS_NETBOOT_CACHE (default /var/cache/bams/netboot) and reused.
set -euo pipefail

out="${1:-/var/lib/bams/netboot}"
bams="${2:-$(command -v bams || true)}"
cache="${BAMS_NETBOOT_CACHE:-/var/cache/bams/netboot}"
[ -n "$bams" ] && [ -x "$bams" ] || { echo "build-netboot: no bams binary (give its path as the 2nd argument)" >&2; exit 1; }
for tool in apt-get dpkg-deb cpio gzip depmod ldd strip; do
  command -v "$tool" >/dev/null || { echo "build-netboot: $tool is missing (bash scripts/setup-dev.sh installs it)" >&2; exit 1; }
done

mkdir -p "$cache" "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Packages: the kernel the linux-image-amd64 metapackage points at, and busybox-static.
kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[ -n "$kpkg" ] || { echo "build-netboot: apt knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
(
  cd "$cache"
  for p in "$kpkg" busybox-static; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p" >/dev/null 2>&1 || { echo "build-netboot: cannot download $p" >&2; exit 1; }
  done
)
dpkg-deb -x "$(ls "$cache/${kpkg}"_*.deb | head -1)" "$work/kernel"
dpkg-deb -x "$(ls "$cache"/busybox-static_*.deb | head -1)" "$work/busybox"
kver="$(ls "$work/kernel/lib/modules" | head -1)"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

# 2. The root: busybox, the drivers machines need to reach the server and their disks.
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,lib64,lib/x86_64-linux-gnu,"lib/modules/$kver/kernel"}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
kmods="$work/kernel/lib/modules/$kver"
# Ethernet of the vendors lab machines and servers carry, and the usual disk controllers (not
# Fibre Channel or iSCSI HBAs: 20 MB of drivers a flash never needs).
for d in drivers/virtio drivers/block drivers/nvme drivers/ata \
  drivers/scsi/scsi_mod.ko drivers/scsi/sd_mod.ko drivers/scsi/virtio_scsi.ko drivers/scsi/scsi_common.ko \
  drivers/scsi/scsi_transport_sas.ko drivers/scsi/raid_class.ko drivers/scsi/megaraid drivers/scsi/mpt3sas \
  drivers/scsi/hpsa.ko drivers/scsi/smartpqi drivers/scsi/aacraid \
  drivers/net/ethernet/intel drivers/net/ethernet/realtek drivers/net/ethernet/broadcom drivers/net/ethernet/amd \
  drivers/net/ethernet/aquantia drivers/net/ethernet/atheros drivers/net/ethernet/marvell \
  drivers/net/virtio_net.ko drivers/net/net_failover.ko drivers/net/mii.ko drivers/net/mdio drivers/net/phy \
  drivers/net/pcs drivers/ptp drivers/pps drivers/dca block net/core lib crypto arch; do
  [ -e "$kmods/kernel/$d" ] || continue
  mkdir -p "$root/lib/modules/$kver/kernel/$(dirname "$d")"
  cp -a "$kmods/kernel/$d" "$root/lib/modules/$kver/kernel/$(dirname "$d")/"
done
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"

# 3. bams and the libraries it links.
cp "$bams" "$root/bin/bams"
strip "$root/bin/bams"
for lib in $(ldd "$bams" | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# 4. /init and the DHCP hook.
cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/busybox sh
case "$1" in
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
    echo "bams: $interface has $ip" ;;
esac
EOF
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "bams: management OS $(uname -r)"
# Drivers for what is there: PCI devices first, then what sits on the buses they bring
# (virtio, SCSI), each pass one modprobe for all devices.
for bus in pci virtio scsi; do
  aliases="$(cat /sys/bus/$bus/devices/*/modalias 2>/dev/null | sort -u)"
  [ -n "$aliases" ] && modprobe -q -a $aliases 2>/dev/null
done
modprobe -q -a sd_mod nvme ahci 2>/dev/null
sleep 1
up=""
for n in $(ls /sys/class/net | grep -v '^lo$'); do
  if udhcpc -i "$n" -n -q -t 10 -T 2 -s /etc/udhcpc.script; then up="$n"; break; fi
done
[ -n "$up" ] || echo "bams: no network interface got an address"
if /bin/bams flash --from-cmdline --power; then
  echo "bams: done"
else
  echo "bams: the flash failed; rebooting in 30 seconds (the boot stays queued)"
  sleep 30
fi
sync
reboot -f
EOF
chmod 755 "$root/init" "$root/etc/udhcpc.script"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"
install -m 0644 "$work/vmlinuz" "$out/vmlinuz.new"
install -m 0644 "$work/initrd.img" "$out/initrd.img.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initrd.img.new" "$out/initrd.img"
echo "build-netboot: $out/vmlinuz ($kpkg) and $out/initrd.img ($(du -h "$out/initrd.img" | cut -f1))"
