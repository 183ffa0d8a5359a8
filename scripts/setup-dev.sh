#!/usr/bin/env bash
# Installs the system packages BAMS needs to build, test and benchmark on Debian 12.
# Idempotent: safe to run again; `apt-get update` runs first as apt needs fresh lists.
set -euo pipefail

packages=(
  build-essential pkg-config      # C parts of crates (zstd)
  acl attr                        # setfacl/getfacl, setfattr: POSIX ACL and xattr tests
  fuse3                           # fusermount3 for `bams mount`
  e2fsprogs xfsprogs btrfs-progs  # mkfs for image tests, benchmarks and disk repositories
  restic borgbackup               # peers for the benchmark in bench/
  time                            # /usr/bin/time -v for peak RSS in bench/
  postgresql                      # catalog tests run on a throwaway cluster (initdb/pg_ctl)
  openssl                         # self-signed certificates for the TLS tests
  apache2-utils                   # ab: concurrent load for the API benchmark in bench/
  sqlite3 jq curl                 # seeding the API benchmark; README examples
  python3-venv python3-pip        # moto, the S3-compatible server of the tests (below)
  bacula-sd                       # `bacula-sd -t` validates generated storage daemon configs
  mtx mt-st                       # tape changers and drives (a missing changer is tested for real)
  tgt libiscsi-bin                # iSCSI target daemon, and iscsi-ls as a userspace initiator
  qemu-utils qemu-block-extra     # qemu-img reads a LUN over iSCSI in the tests
  lvm2                            # vgs/lvs on machines with device-mapper (fixtures elsewhere)
  systemd-journal-remote          # writes real journal files that the log tests read with journalctl
  python3-aiosmtpd                # a real SMTP server (STARTTLS) for the notification tests
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-dev.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# A real S3-compatible server for tests: moto's server mode, from PyPI, in its own venv.
if [ ! -x /opt/bams-venv/bin/python3 ] || ! /opt/bams-venv/bin/python3 -c 'import moto.server' 2>/dev/null; then
  python3 -m venv /opt/bams-venv
  /opt/bams-venv/bin/pip install -q 'moto[server]'
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-dev.sh: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
echo "setup-dev.sh: system packages ready"
