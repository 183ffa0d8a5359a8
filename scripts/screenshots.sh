#!/usr/bin/env bash
# Screenshots of the web UI's main screens and of the Cockpit plugin, taken from the real UI in
# Debian's chromium by the browser tests (tests/web_ui.rs), into docs/screenshots/.
# Needs scripts/setup-dev.sh (chromium, Playwright, cockpit-ws) and root (the Cockpit test
# makes Linux users).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/docs/screenshots
mkdir -p "$out"
BAMS_SCREENSHOTS=$out cargo test --locked -q -p bams --test web_ui -- --test-threads=1
ls "$out"
