"""What the browser tests share: Debian's chromium as Playwright starts it here (no sandbox as
root, no background traffic to Google's hosts, which this machine's network refuses), and
the failure list every check writes to."""

import sys

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg, flush=True)


def launch(playwright):
    return playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])


def finish(what):
    """Exit 1 with the count when anything failed, else say that every check passed."""
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print(f"{what}: every check passed")
