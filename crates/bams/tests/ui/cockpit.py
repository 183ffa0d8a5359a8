"""The Cockpit plugin in a real Cockpit: cockpit-ws started by tests/web_ui.rs, two Linux
users logged in with PAM (one in bams-viewer, one in bams-admin), the plugin installed in their
~/.local/share/cockpit/bams, talking to the server over its unix socket. Environment:

  COCKPIT_URL                    cockpit-ws
  VIEWER_USER, VIEWER_PASSWORD   a member of bams-viewer
  ADMIN_USER, ADMIN_PASSWORD     a member of bams-admin
  JOB                            a job the server has (the admin runs it from Cockpit)
  SCREENSHOTS                    optional: where to write a screenshot of the plugin
"""

import base64
import os
import re
import sys

from playwright.sync_api import sync_playwright, expect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fail, finish, launch  # noqa: E402

URL = os.environ["COCKPIT_URL"]
PLUGIN = URL + "/cockpit/@localhost/bams/index.html"
JOB = os.environ["JOB"]


def session(browser, user, password):
    """A browser context logged into Cockpit as `user` (PAM, through /cockpit/login)."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    r = ctx.request.get(URL + "/cockpit/login", headers={"Authorization": "Basic " + auth})
    if r.status != 200:
        fail(f"Cockpit login of {user}: {r.status} {r.text()[:200]}")
    page = ctx.new_page()

    def on_console(m):
        if m.type == "error":
            fail(f"{user}: console error on {page.url}: {m.text}")
    page.on("console", on_console)
    page.on("pageerror", lambda e: fail(f"{user}: page error: {e}"))
    return ctx, page


def main():
    with sync_playwright() as p:
        browser = launch(p)

        # A viewer: the dashboard and the job list come from the API over the socket; no
        # action is offered.
        ctx, page = session(browser, os.environ["VIEWER_USER"], os.environ["VIEWER_PASSWORD"])
        page.goto(PLUGIN)
        expect(page.locator("#content h1")).to_have_text("Dashboard", timeout=30_000)
        expect(page.locator("[data-whoami]")).to_contain_text("unix:" + os.environ["VIEWER_USER"])
        expect(page.locator("[data-whoami]")).to_contain_text("viewer")
        page.locator(".nav a[href='/jobs']").click()
        expect(page.locator("#content h1")).to_have_text("Jobs")
        expect(page.locator("#content")).to_contain_text(JOB)
        if page.locator("#content button[data-action]").count() != 0:
            fail("the viewer is offered actions in Cockpit")
        # Inside Cockpit's own shell, as a person reaches it from the menu.
        page.goto(URL + "/bams")
        frame = page.frame_locator("iframe[name*='bams']")
        expect(frame.locator("#content h1")).to_have_text("Dashboard", timeout=30_000)
        if os.environ.get("SCREENSHOTS"):
            page.screenshot(path=os.path.join(os.environ["SCREENSHOTS"], "cockpit.png"))
        ctx.close()

        # An admin runs the job from Cockpit and follows its log to the end (SSE through the
        # bridge).
        ctx, page = session(browser, os.environ["ADMIN_USER"], os.environ["ADMIN_PASSWORD"])
        page.goto(PLUGIN)
        expect(page.locator("#content h1")).to_have_text("Dashboard", timeout=30_000)
        page.locator(".nav a[href='/jobs']").click()
        expect(page.locator("#content h1")).to_have_text("Jobs")
        page.locator("#content a", has_text=JOB).click()
        expect(page.locator("#content h1")).to_have_text("Job " + JOB)
        page.locator("#content button", has_text="Run now").click()
        expect(page.locator("#content h1")).to_have_text(re.compile(r"Run #\d+"))
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=120_000)
        expect(page.locator("pre.log")).to_contain_text("snapshot")
        # A download through a Cockpit external channel: the diagnostics bundle.
        page.locator(".nav a[href='/logs']").click()
        expect(page.locator("#content h1")).to_have_text("Logs")
        with page.expect_download() as dl:
            page.locator("#content a", has_text="Download diagnostics bundle").click()
        path = dl.value.path()
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic != b"\x1f\x8b":
            fail(f"the diagnostics bundle is not gzip: {magic!r} ({os.path.getsize(path)} bytes)")
        ctx.close()
        browser.close()
    finish("cockpit")


if __name__ == "__main__":
    main()
