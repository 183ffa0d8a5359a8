#!/usr/bin/env bash
# The Debian packages as an operator meets them, in a clean Debian 12 root (mmdebstrap):
#
#   bash packaging/test-debs.sh [BAMS_BINARY]     (root; run by crates/bams/tests/packages.rs)
#
#  1. builds bams and bams-agent 0.1.0-1 and 0.1.0-2 from BAMS_BINARY's build (default: the
#     release build) with packaging/build-debs.sh;
#  2. installs both with apt into the clean root: data directory 0700, role groups, a
#     self-signed certificate whose fingerprint the postinst prints, units enabled, not started;
#  3. starts the packaged server with the packaged config (the unit's ExecStart line, on
#     127.0.0.1 through BAMS_LISTEN) and asks /healthz over HTTPS trusting the certificate;
#     enrolls an agent pinning the fingerprint (and is refused with a wrong one); makes a job
#     and a snapshot;
#  4. upgrades to 0.1.0-2: the catalog (taken back one migration) is migrated, `bams doctor`
#     says so; the certificate, the config, the job and the snapshot stay;
#  5. removes: /var/lib/bams and the config stay; purges: both go;
#  6. `systemd-analyze verify` on both units.
# Prints package sizes and install time (bench/packages.sh reports them for release builds).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-debs: $*"; }
fail() { echo "test-debs: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages into a chroot)"
for tool in cargo-deb mmdebstrap chroot curl jq openssl systemd-analyze; do
  command -v "$tool" >/dev/null || fail "$tool is missing (bash scripts/setup-dev.sh installs it)"
done

bin="${1:-target/release/bams}"
[ -x "$bin" ] || fail "$bin is missing"
case "$bin" in */debug/bams) profile=dev ;; */release/bams) profile=release ;; *) fail "$bin: expected target/{debug,release}/bams" ;; esac
work="$(mktemp -d /var/tmp/bams-debs.XXXXXX)"
root="$work/root"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  umount -l "$root/proc" 2>/dev/null || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# 1. Two versions of both packages.
for v in 0.1.0-1 0.1.0-2; do
  bash packaging/build-debs.sh --no-build --profile "$profile" --fast --deb-version "$v" --output "$work/debs" >"$work/build-$v.log" 2>&1 ||
    { cat "$work/build-$v.log"; fail "building the $v packages"; }
done
for deb in "$work"/debs/*.deb; do say "built $(basename "$deb"): $(stat -c %s "$deb") bytes"; done
dpkg-deb -c "$work/debs/bams_0.1.0-1_amd64.deb" >"$work/contents"
for f in ./usr/bin/bams ./etc/bams/config.yaml ./usr/lib/systemd/system/bams.service ./usr/share/man/man1/bams.1 \
         ./usr/share/man/man1/bams-agent-enroll.1 ./usr/share/bash-completion/completions/bams \
         ./usr/share/zsh/vendor-completions/_bams ./usr/share/fish/vendor_completions.d/bams.fish; do
  grep -qE " ${f//./\\.}(\.gz)?$" "$work/contents" || fail "bams package lacks $f"
done
dpkg-deb -c "$work/debs/bams-agent_0.1.0-1_amd64.deb" >"$work/agent-contents"
grep -q ' ./etc/default/bams-agent$' "$work/agent-contents" || fail "bams-agent lacks /etc/default/bams-agent"
grep -qw bams <<<"$(dpkg-deb -f "$work/debs/bams-agent_0.1.0-1_amd64.deb" Depends)" || fail "bams-agent does not depend on bams"
grep -q bacula-sd <<<"$(dpkg-deb -f "$work/debs/bams_0.1.0-1_amd64.deb" Recommends)" || fail "bams does not recommend bacula-sd"

# 2. A clean root, and the packages installed with apt (which brings their dependencies).
t0=$(date +%s)
mmdebstrap --quiet --variant=apt bookworm "$root"
say "clean bookworm root in $(($(date +%s) - t0)) s"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
cp "$work"/debs/*.deb "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update -qq
t0=$(date +%s)
in_root apt-get install -y -q --no-install-recommends /tmp/bams_0.1.0-1_amd64.deb /tmp/bams-agent_0.1.0-1_amd64.deb >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "apt-get install of the packages"; }
say "installed bams and bams-agent with their dependencies in $(($(date +%s) - t0)) s"
grep '^bams' "$work/install.log" | sed 's/^/test-debs:   postinst: /'
fingerprint="$(sed -n 's/^bams:   \([0-9A-F:]\{95\}\)$/\1/p' "$work/install.log")"
[ -n "$fingerprint" ] || fail "the postinst printed no fingerprint"
[ "$(stat -c %a "$root/var/lib/bams")" = 700 ] || fail "/var/lib/bams is not 0700"
[ "$(stat -c %a "$root/etc/bams/tls/key.pem")" = 600 ] || fail "the TLS key is not 0600"
for g in bams-admin bams-operator bams-viewer; do in_root getent group "$g" >/dev/null || fail "group $g missing"; done
[ -L "$root/etc/systemd/system/multi-user.target.wants/bams.service" ] || fail "bams.service is not enabled"
[ -L "$root/etc/systemd/system/multi-user.target.wants/bams-agent.service" ] || fail "bams-agent.service is not enabled"
[ "$(in_root bams tls fingerprint /etc/bams/tls/cert.pem)" = "$fingerprint" ] || fail "the printed fingerprint is not the certificate's"
[ "$(openssl x509 -in "$root/etc/bams/tls/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)" = "$fingerprint" ] ||
  fail "openssl disagrees with the printed fingerprint"

# 3. The packaged server: the unit's ExecStart line, the packaged config, HTTPS on.
exec_start="$(sed -n 's/^ExecStart=//p' "$root/usr/lib/systemd/system/bams.service")"
port=$((20000 + RANDOM % 20000))
start_server() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin BAMS_LISTEN="127.0.0.1:$port" $exec_start >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 150); do
    curl -fsS --cacert "$root/etc/bams/tls/cert.pem" "https://localhost:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  cat "$work/server.log"; fail "the packaged server did not answer /healthz over HTTPS"
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
start_server
say "packaged server ($exec_start) answered https://localhost:$port/healthz: $(curl -fsS --cacert "$root/etc/bams/tls/cert.pem" "https://localhost:$port/healthz")"
# The local socket of the packaged config, for the Cockpit plugin the package installs.
sock="$root/run/bams/api.sock"
[ -S "$sock" ] || fail "the packaged server made no socket at /run/bams/api.sock"
[ "$(stat -c %a "$sock")" = 666 ] || fail "the socket is not connectable by everyone (the check is the peer's uid)"
[ "$(curl -fsS --unix-socket "$sock" http://localhost/api/v1/auth/me | jq -r .role)" = admin ] ||
  fail "root on the local socket is not an admin"
for f in manifest.json index.html bams.js bams.css favicon.svg; do
  [ -s "$root/usr/share/cockpit/bams/$f" ] || fail "the Cockpit plugin lacks $f"
done
grep -q 'content="/run/bams/api.sock"' "$root/usr/share/cockpit/bams/index.html" || fail "the plugin does not name the socket"
say "local socket answers root as admin; Cockpit plugin installed in /usr/share/cockpit/bams"
[ -x "$root/usr/share/bams/build-netboot.sh" ] || fail "the package lacks build-netboot.sh"
bash -n "$root/usr/share/bams/build-netboot.sh" || fail "build-netboot.sh does not parse"
api() { curl -fsS --cacert "$root/etc/bams/tls/cert.pem" -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
password="$(cat "$root/var/lib/bams/initial-admin-password")"
token="$(curl -fsS --cacert "$root/etc/bams/tls/cert.pem" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$password\"}" "https://localhost:$port/api/v1/auth/login" | jq -r .token)"
# An agent pins the certificate by the fingerprint the postinst printed.
enroll() {
  local t; t="$(api -d "{\"name\":\"$1\"}" "https://localhost:$port/api/v1/agents" | jq -r .enrollment_token)"
  "$bin" agent enroll --server "https://127.0.0.1:$port" --token "$t" --fingerprint "$2" --state-dir "$work/agent-$1" -q
}
enroll pinned "$fingerprint" || fail "enrolling with the printed fingerprint"
if enroll wrong "$(echo "$fingerprint" | tr 0-9A-F 1-9A-F0)" 2>"$work/wrong.log"; then fail "a wrong fingerprint was trusted"; fi
grep -q 'fingerprint' "$work/wrong.log" || { cat "$work/wrong.log"; fail "the refusal does not name the fingerprint"; }
say "agent enrollment: the printed fingerprint is trusted, another one refused"
job="$(api -d '{"name":"docs","type":"backup","paths":["/usr/share/doc/bams"],"repository":1}' "https://localhost:$port/api/v1/jobs" | jq -r .id)"
run="$(api -X POST "https://localhost:$port/api/v1/jobs/$job/run" | jq -r .run_id)"
for _ in $(seq 1 150); do
  status="$(api "https://localhost:$port/api/v1/runs/$run" | jq -r .status)"
  [ "$status" = succeeded ] && break
  [ "$status" = failed ] && fail "the backup failed: $(api "https://localhost:$port/api/v1/runs/$run")"
  sleep 0.2
done
snapshot="$(api "https://localhost:$port/api/v1/runs/$run" | jq -r .snapshot_id)"
[ "$snapshot" != null ] || fail "the backup made no snapshot"
stop_server
[ ! -e "$sock" ] || fail "the server left its socket behind when it stopped"

# 4. Upgrade: data, config, certificate, job and snapshot stay; the catalog is migrated. Both
#    versions here carry the same schema, so the catalog is first taken back to what the
#    previous migration (0012) left: the upgrade must apply 0013 again.
command -v sqlite3 >/dev/null || fail "sqlite3 is missing (bash scripts/setup-dev.sh installs it)"
sqlite3 "$root/var/lib/bams/catalog.db" "DROP TABLE machine_events; DROP TABLE machine_macs; DROP TABLE machines;
  DROP TABLE image_sets; DROP TABLE image_versions; DROP TABLE images; ALTER TABLE users DROP COLUMN email;
  DELETE FROM _sqlx_migrations WHERE version = 13;"
in_root bams doctor --config /etc/bams/config.yaml >"$work/doctor-before.txt" || true
grep -q 'catalog  1 migration(s) pending' "$work/doctor-before.txt" || { cat "$work/doctor-before.txt"; fail "doctor did not report the pending migration"; }
cert_before="$(sha256sum "$root/etc/bams/tls/cert.pem")"
echo "# operator's change" >>"$root/etc/bams/config.yaml"
in_root apt-get install -y -q --no-install-recommends /tmp/bams_0.1.0-2_amd64.deb /tmp/bams-agent_0.1.0-2_amd64.deb >"$work/upgrade.log" 2>&1 ||
  { cat "$work/upgrade.log"; fail "upgrading"; }
[ "$(in_root dpkg-query -W -f='${Version}' bams)" = 0.1.0-2 ] || fail "bams is not at 0.1.0-2"
grep -q '^bams: catalog: 1 migration(s) applied now' "$work/upgrade.log" || { cat "$work/upgrade.log"; fail "the upgrade did not migrate the catalog"; }
say "upgrade: $(grep '^bams: catalog:' "$work/upgrade.log")"
[ "$(sha256sum "$root/etc/bams/tls/cert.pem")" = "$cert_before" ] || fail "the upgrade replaced the certificate"
grep -q "operator's change" "$root/etc/bams/config.yaml" || fail "the upgrade lost a change to the config"
start_server
api "https://localhost:$port/api/v1/jobs/$job" | jq -e '.name == "docs"' >/dev/null || fail "the job is gone after the upgrade"
api "https://localhost:$port/api/v1/snapshots" | jq -e --arg s "$snapshot" 'any(.items[]; .id == $s)' >/dev/null ||
  fail "the snapshot is gone after the upgrade"
# The root shares this host's disk, whose free space is not what is under test: a FAIL on
# `space` alone (the host is nearly full) is reported, any other FAIL fails the test.
if ! in_root bams doctor --config /etc/bams/config.yaml >"$work/doctor-after.txt"; then
  if grep '^FAIL' "$work/doctor-after.txt" | grep -qv '^FAIL  space '; then
    cat "$work/doctor-after.txt"
    fail "doctor failed after the upgrade"
  fi
  grep -q '^FAIL  space ' "$work/doctor-after.txt" || { cat "$work/doctor-after.txt"; fail "doctor failed after the upgrade"; }
  say "doctor: only this host's free space failed (not the package's doing)"
fi
grep -q '^ok    catalog' "$work/doctor-after.txt" || { cat "$work/doctor-after.txt"; fail "the catalog is not current after the upgrade"; }
sed 's/^/test-debs:   doctor: /' "$work/doctor-after.txt"
stop_server
say "upgraded 0.1.0-1 -> 0.1.0-2: job $job and snapshot ${snapshot:0:12} kept, certificate and config untouched"

# 5. Remove keeps data and config; purge removes them.
in_root apt-get remove -y -q bams-agent bams >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "removing"; }
[ ! -e "$root/usr/bin/bams" ] || fail "remove left the binary"
[ -f "$root/var/lib/bams/catalog.db" ] || fail "remove deleted the catalog"
[ -f "$root/etc/bams/config.yaml" ] || fail "remove deleted the config"
in_root apt-get purge -y -q bams-agent bams >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purging"; }
[ ! -e "$root/var/lib/bams" ] || fail "purge left /var/lib/bams"
[ ! -e "$root/etc/bams" ] || fail "purge left /etc/bams"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/bams.service" ] || fail "purge left the unit enabled"
say "remove kept /var/lib/bams and /etc/bams; purge removed both"

# 6. The units as systemd reads them (the binary they start must exist: this build's).
units="$work/units"
mkdir -p "$units"
sed "s#/usr/bin/bams#$(realpath "$bin")#" packaging/bams.service >"$units/bams.service"
sed "s#/usr/bin/bams#$(realpath "$bin")#" packaging/bams-agent.service >"$units/bams-agent.service"
SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$units/bams.service" "$units/bams-agent.service" >"$work/verify.log" 2>&1 ||
  { cat "$work/verify.log"; fail "systemd-analyze verify"; }
if [ -s "$work/verify.log" ]; then cat "$work/verify.log"; fail "systemd-analyze verify warned"; fi
say "systemd-analyze verify: both units clean"
say "all package checks passed"
