#!/usr/bin/env bash
# Build the Debian packages bams and bams-agent into target/debian/ with cargo-deb.
#
#   bash packaging/build-debs.sh                       # release build, version from Cargo.toml
#   bash packaging/build-debs.sh --no-build --profile dev --deb-version 0.1.0-2 --output DIR
#                                                      # package an existing target/debug/bams
#
# The binary is stripped; its debug symbols (the release profile keeps them for profiling) go
# into a separate bams-dbgsym .ddeb, installed only where someone debugs.
# Before cargo-deb runs, the binary writes what the packages carry besides itself into
# packaging/debian/generated/: man pages (clap_mangen), shell completions (clap_complete), and the
# packaged config: packaging/config.yaml with HTTPS on (the certificate the postinst makes).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
output=target/debian
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --deb-version) extra+=(--deb-version "$2"); shift 2 ;;
        --fast) extra+=(--fast); shift ;;
        --output) output="$2"; shift 2 ;;
        *) echo "build-debs.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v cargo-deb >/dev/null || { echo "build-debs.sh: cargo-deb is missing (bash scripts/setup-dev.sh installs it)" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-target}"
case "$profile" in dev) bin="$target_dir/debug/bams" ;; *) bin="$target_dir/$profile/bams" ;; esac
if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" -p bams
fi
[ -x "$bin" ] || { echo "build-debs.sh: $bin is missing (build it, or drop --no-build)" >&2; exit 1; }

assets=packaging/debian/generated
rm -rf "$assets"
mkdir -p "$assets/completions"
"$bin" man --dir "$assets/man" -q
"$bin" completions bash >"$assets/completions/bams.bash"
"$bin" completions zsh >"$assets/completions/_bams"
"$bin" completions fish >"$assets/completions/bams.fish"
# The packaged config turns HTTPS and the local socket on; everything else stays the
# documented defaults.
python3 - packaging/config.yaml "$assets/config.yaml" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
old = "tls:\n  cert: null\n  key: null\n"
if old not in text:
    sys.exit("build-debs.sh: packaging/config.yaml has no 'tls: cert: null key: null' block to turn on")
new = ("tls:\n  cert: /etc/bams/tls/cert.pem   # made by the package (bams tls self-signed)\n"
       "  key: /etc/bams/tls/key.pem\n")
text = text.replace(old, new)
old = "socket: null\n"
if old not in text:
    sys.exit("build-debs.sh: packaging/config.yaml has no 'socket: null' line to turn on")
text = text.replace(old, "socket: /run/bams/api.sock   # the Cockpit plugin's way in\n")
open(dst, "w").write(text)
PY

# cargo-deb refuses nothing for dev builds, but warns: the binary is not optimized.
mkdir -p "$output"
cargo deb -p bams --no-build --dbgsym --profile "$profile" "${extra[@]}" --output "$output/"
cargo deb -p bams --variant agent --no-build --profile "$profile" "${extra[@]}" --output "$output/"
