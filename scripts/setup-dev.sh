#!/usr/bin/env bash
# Installs the system packages BAMS needs to build, test and benchmark on Debian 12.
# Idempotent: safe to run again; `apt-get update` runs first as apt needs fresh lists.
#
# Robust to newer versions that a machine image already carries (backports, point releases):
# a package that is already installed is left as it is and not asked for again, and
# `qemu-block-extra` (pinned to exactly its `qemu-utils` version) is installed only when
# `qemu-img` cannot load its iSCSI module, in the version of the `qemu-utils` present. A
# package apt cannot install is named in the error instead of failing the whole list.
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
  qemu-utils                      # qemu-img reads a LUN over iSCSI in the tests
  lvm2                            # vgs/lvs on machines with device-mapper (fixtures elsewhere)
  systemd-journal-remote          # writes real journal files that the log tests read with journalctl
  python3-aiosmtpd                # a real SMTP server (STARTTLS) for the notification tests
  bsdutils                        # script(1): a pseudo-terminal for the progress-bar tests
  mmdebstrap                      # clean Debian roots for the setup and package tests
  chromium                        # the web UI's browser tests (driven by Playwright, below)
  cockpit-ws cockpit-bridge cockpit-system  # the Cockpit plugin, tested through a real cockpit-ws
  fonts-dejavu-core               # one font for chromium's screenshots
  ipxe-qemu                       # the NIC boot ROM of the network-boot test VM
  cpio kmod binutils              # scripts/build-netboot.sh: initramfs, depmod, strip
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-dev.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

# True when dpkg has the package fully installed (any version: a newer one is kept).
installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

install_missing() {
  [ "$#" -eq 0 ] && return 0
  if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    # One at a time, so the error names the package apt cannot install.
    local failed=()
    for p in "$@"; do
      installed "$p" || apt-get install -y -qq --no-install-recommends "$p" >/dev/null || failed+=("$p")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
      echo "setup-dev.sh: apt cannot install: ${failed[*]}" >&2
      exit 1
    fi
  fi
}
install_missing "${missing[@]}"

# bookworm-backports as an apt source (once): where a preinstalled backported qemu-utils came
# from, so its companions can come from there too.
add_backports() {
  [ -e /etc/apt/sources.list.d/bams-bookworm-backports.sources ] && return 0
  cat >/etc/apt/sources.list.d/bams-bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
}

# qemu-img must speak iSCSI (the iSCSI tests read LUNs with it). It does through the
# block-iscsi module of qemu-block-extra, whose version must equal qemu-utils' exactly:
# bookworm's 7.2 cannot go beside a preinstalled newer qemu-utils (a backport), so take the
# module from wherever that qemu-utils came from. `qemu-img --help` lists iscsi either way;
# only opening an iscsi:// URL shows whether the module loads.
qemu_iscsi_ok() {
  local out
  out="$(timeout 20 qemu-img info iscsi://127.0.0.1:1/iqn.2000-01.io.bams:probe/0 2>&1 || true)"
  ! grep -qiE 'unable to load module|unknown protocol|not whitelisted' <<<"$out"
}
if ! qemu_iscsi_ok; then
  want="$(dpkg-query -W -f='${Version}' qemu-utils)"
  if ! apt-cache madison qemu-block-extra | awk '{print $3}' | grep -qxF "$want"; then
    case "$want" in
      # The preinstalled qemu-utils is a bookworm backport: add that suite (apt never picks
      # a backport unless asked by version, as below).
      *~bpo12*) add_backports ;;
    esac
  fi
  apt-get install -y -qq --no-install-recommends "qemu-block-extra=$want" >/dev/null ||
    { echo "setup-dev.sh: cannot install qemu-block-extra $want to match qemu-utils $want" >&2; exit 1; }
  qemu_iscsi_ok || { echo "setup-dev.sh: qemu-img still cannot load its iSCSI module" >&2; exit 1; }
fi

# qemu-system-x86 runs the network-boot test VM (TCG). Its qemu-system-common must not be
# older than the qemu-utils present: next to a preinstalled backport, take it (and the
# seabios it needs) from the same suite.
if ! installed qemu-system-x86; then
  want="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
  case "$want" in
    *~bpo12*)
      add_backports
      apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null ||
        { echo "setup-dev.sh: cannot install qemu-system-x86 from bookworm-backports next to qemu-utils $want" >&2; exit 1; }
      ;;
    *) install_missing qemu-system-x86 ;;
  esac
fi

# From PyPI, in their own venv: a real S3-compatible server for tests (moto's server mode),
# the OpenAPI fuzzer that drives every route (schemathesis), and Playwright, which drives
# Debian's /usr/bin/chromium in the UI tests (`playwright install` is never run: no browser is
# downloaded).
if [ ! -x /opt/bams-venv/bin/python3 ] || ! /opt/bams-venv/bin/python3 -c 'import moto.server, playwright' 2>/dev/null ||
   [ ! -x /opt/bams-venv/bin/schemathesis ]; then
  python3 -m venv /opt/bams-venv
  /opt/bams-venv/bin/pip install -q 'moto[server]' 'schemathesis>=4,<5' 'playwright>=1.40,<2'
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-dev.sh: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
# cargo-deb builds the Debian packages (packaging/build-debs.sh; the package test uses it).
CARGO_DEB_VERSION=3.7.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
echo "setup-dev.sh: system packages ready"
