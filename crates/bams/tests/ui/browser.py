"""The web UI in a real browser: Debian's chromium driven by Playwright (from PyPI, never
downloading a browser). Run by tests/web_ui.rs against a throwaway server, with:

  BAMS_URL          the server
  ADMIN_PASSWORD    the admin's password
  VIEWER_PASSWORD   the password of user `viewer` (role viewer)
  SOURCE            a directory to back up (has `sub/` and a file with a hostile name)
  RESTORE_ROOT      a restore root of the server
  WORK              scratch directory (downloads)
  SCREENSHOTS       if set, where to write the screenshots of the main screens

Every failure is collected and printed; the exit status is 1 when there was any.
"""

import filecmp
import json
import os
import re
import sys
import tarfile
import time
from urllib.parse import urlparse

from playwright.sync_api import sync_playwright, expect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fail, finish, launch  # noqa: E402

BASE = os.environ["BAMS_URL"]
ORIGIN = urlparse(BASE).netloc
SOURCE = os.environ["SOURCE"]
RESTORE_ROOT = os.environ["RESTORE_ROOT"]
WORK = os.environ["WORK"]
SHOTS = os.environ.get("SCREENSHOTS")
HOSTILE = "<script>alert('job')</script>"
JOB = "nightly-files"


# Answers with these statuses are expected while set (a validation error the form shows).
expected_statuses = set()


def watch(page, who):
    """Record console errors (CSP violations among them), page errors, dialogs (a script
    that a hostile name managed to run would open one) and requests to other origins."""
    def on_console(m):
        if m.type != "error":
            return
        status = re.search(r"status of (\d+)", m.text)
        if status and int(status.group(1)) in expected_statuses:
            return
        fail(f"{who}: console error on {page.url}: {m.text}")
    page.on("console", on_console)
    page.on("pageerror", lambda e: fail(f"{who}: page error on {page.url}: {e}"))
    page.on("dialog", lambda d: (fail(f"{who}: a dialog opened: {d.message}"), d.dismiss()))

    def on_request(r):
        host = urlparse(r.url).netloc
        if r.url.startswith("data:") or host == ORIGIN:
            return
        fail(f"{who}: request outside the server's origin: {r.url}")
    page.on("request", on_request)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=False)


def login(page, user, password, next_path="/dashboard"):
    page.goto(BASE + next_path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url and url.endswith(next_path))


def check(cond, msg):
    if not cond:
        fail(msg)


def sweep(page, who, paths, shots=False):
    """Open each page: it answers 200 with its heading and no console error."""
    for path in paths:
        resp = page.goto(BASE + path) or page.reload()
        check(resp is not None and resp.status == 200, f"{who}: {path} answered {resp and resp.status}")
        check(page.locator("main h1").count() == 1, f"{who}: {path} has no heading")
        # Every control has a name a screen reader can say: a <label for>, a wrapping label,
        # or aria-label; every button has text.
        unlabeled = page.evaluate("""() => [...document.querySelectorAll(
              'input:not([type=hidden]), select, textarea, button')].filter(e => {
            if (e.tagName === 'BUTTON') return !(e.textContent.trim() || e.getAttribute('aria-label'));
            return !(e.labels && e.labels.length) && !e.getAttribute('aria-label');
          }).map(e => e.outerHTML.slice(0, 120))""")
        check(not unlabeled, f"{who}: {path} has controls without a label: {unlabeled}")
        page.wait_for_load_state("networkidle")
        if shots:
            parts = path.strip("/").split("?")[0].split("/")
            # Ids become "item": /jobs/3/edit → jobs-item-edit, /snapshots/ab12… → snapshots-item.
            name = "-".join("item" if re.fullmatch(r"\d+|[0-9a-f]{16,}", p) else p for p in parts) or "dashboard"
            shot(page, name)


def main():
    with sync_playwright() as p:
        browser = launch(p)
        admin_ctx = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        page = admin_ctx.new_page()
        watch(page, "admin")

        # Logging in from a deep link lands on that page.
        login(page, "admin", os.environ["ADMIN_PASSWORD"], "/jobs/new")
        expect(page.locator("main h1")).to_have_text("New job")

        # The schedule editor previews the next five runs from the scheduler.
        expected_statuses.add(400)
        page.fill("#schedule", "0 3 * * *")
        expect(page.locator("#schedule-preview li")).to_have_count(5)
        page.fill("#schedule", "not a cron")
        expect(page.locator("#schedule-preview .field-error")).to_have_count(1)

        # A bad field comes back from the API and shows at that field.
        page.fill("#name", HOSTILE)
        page.fill("#paths", SOURCE)
        page.fill("#schedule", "")
        page.click("button[type=submit]")
        expect(page.locator('[data-error-for="name"]')).to_contain_text("invalid job name")
        expect(page.locator("#name")).to_have_attribute("aria-invalid", "true")
        page.fill("#name", JOB)
        page.fill("#options", '{"priority": 1000}')
        page.click("button[type=submit]")
        expect(page.locator('[data-error-for="options"]')).to_contain_text("priority")
        page.fill("#options", "")
        page.fill("#keep_last", "5")
        page.fill("#schedule", "0 3 * * *")
        page.click("button[type=submit]")
        try:
            page.wait_for_url(re.compile(r"/jobs/\d+$"))
        except Exception:
            fail("creating the job: " + page.locator("form .alert").inner_text() + " | " +
                 " ".join(page.locator(".field-error").all_inner_texts()))
            raise
        expected_statuses.discard(400)
        job_url = page.url
        job_id = job_url.rsplit("/", 1)[1]
        expect(page.locator("main h1")).to_have_text("Job " + JOB)
        expect(page.locator("main")).to_contain_text("0 3 * * *")

        # Run it and follow the live log to its end.
        page.click("text=Run now")
        page.wait_for_url(re.compile(r"/runs/\d+$"))
        run_url = page.url
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=120_000)
        expect(page.locator("pre.log")).to_contain_text("snapshot", timeout=10_000)
        shot(page, "run-live")

        # The snapshot: browse down to the source, lazily, one directory at a time.
        page.reload()
        snap_link = page.locator("a[href^='/snapshots/']").first
        snap_link.click()
        page.wait_for_url(re.compile(r"/snapshots/[0-9a-f]+"))
        snap_url = page.url
        parts = [p for p in SOURCE.split("/") if p]
        path = ""
        for part in parts:
            path += "/" + part
            button = page.locator(f'li.dir[data-path="{path}"] > button').first
            button.click()
            expect(button).to_have_attribute("aria-expanded", "true")
        expect(page.locator(f'li[data-path="{SOURCE}/sub"]')).to_have_count(1)
        hostile_file = f'{SOURCE}/<img src=x onerror=alert(1)>.txt'
        expect(page.locator(f'li[data-path="{hostile_file}"]')).to_have_count(1)
        # A large directory comes a page at a time.
        page.locator(f'li.dir[data-path="{SOURCE}/many"] > button').click()
        many = page.locator(f'li.dir[data-path="{SOURCE}/many"] > ul > li')
        expect(many).to_have_count(201)
        page.locator(f'li.dir[data-path="{SOURCE}/many"] button[data-more]').click()
        expect(many).to_have_count(250)
        shot(page, "snapshot-browser")

        # Download a file and compare it with the original.
        with page.expect_download() as dl:
            page.locator(f'li[data-path="{SOURCE}/data.bin"] a').click()
        saved = os.path.join(WORK, "data.bin")
        dl.value.save_as(saved)
        check(filecmp.cmp(saved, os.path.join(SOURCE, "data.bin"), shallow=False), "downloaded file differs")

        # Restore a folder to another path and compare it.
        target = os.path.join(RESTORE_ROOT, "from-ui")
        page.fill("#rpath", SOURCE + "/sub")
        page.fill("#rtarget", target)
        page.click("form[data-api*='/restore'] button[type=submit]")
        expect(page.locator("#restored")).to_be_visible(timeout=60_000)
        restored = target + SOURCE + "/sub"
        if not os.path.isdir(restored):
            restored = target
        cmp = filecmp.dircmp(os.path.join(SOURCE, "sub"), restored)
        check(not cmp.left_only and not cmp.right_only and not cmp.diff_files,
              f"restored folder differs: {cmp.left_only} {cmp.right_only} {cmp.diff_files}")

        # A folder as a tar download: the same files as the source.
        page.goto(snap_url)
        for part_path in ["/".join([""] + parts[:i + 1]) for i in range(len(parts))]:
            page.locator(f'li.dir[data-path="{part_path}"] > button').first.click()
        with page.expect_download() as dl:
            page.locator(f'li.dir[data-path="{SOURCE}/sub"] a[download]').click()
        tar_path = os.path.join(WORK, "sub.tar")
        dl.value.save_as(tar_path)
        with tarfile.open(tar_path) as t:
            t.extractall(os.path.join(WORK, "from-tar"), filter="data")
        cmp = filecmp.dircmp(os.path.join(SOURCE, "sub"), os.path.join(WORK, "from-tar", "sub"))
        check(not cmp.left_only and not cmp.right_only and not cmp.diff_files,
              f"the folder's tar differs: {cmp.left_only} {cmp.right_only} {cmp.diff_files}")

        # A file name found across snapshots.
        page.goto(BASE + "/snapshots/find?name=B.TXT&repository=1")
        expect(page.locator("main table")).to_contain_text("sub/deeper/b.txt")

        # A second run after a change: the snapshot page shows what changed since its parent.
        with open(os.path.join(SOURCE, "added-later.txt"), "w") as f:
            f.write("new\n")
        page.goto(run_url)
        page.click("text=Run again")
        page.wait_for_url(lambda url: url != run_url and re.search(r"/runs/\d+$", url) is not None)
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=120_000)
        page.reload()
        page.locator("a[href^='/snapshots/']").first.click()
        page.click("text=Changes since its parent")
        expect(page.locator("main table")).to_contain_text("added-later.txt")

        # Upkeep from the repositories page: a check job made from its link, run, shown there.
        page.goto(BASE + "/repositories")
        page.locator("main a", has_text="check").first.click()
        expect(page.locator("#type")).to_have_value("check")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/jobs/\d+$"))
        page.click("text=Run now")
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=120_000)
        page.goto(BASE + "/repositories")
        expect(page.locator("main table").first).to_contain_text("succeeded")

        # A pool on the repository, from the form, then edited.
        page.click("summary:text('Add a pool')")
        page.fill("#pname", "nightly-pool")
        page.fill("#pkeep_daily", "7")
        page.click("form[data-api='POST /api/v1/pools'] button[type=submit]")
        pool_row = page.locator("main table").last.locator("tr", has_text="nightly-pool")
        expect(pool_row).to_contain_text("keep_daily")
        pool_row.locator("summary", has_text="Edit").click()
        pool_row.locator("input[name='retention.keep_daily']").fill("14")
        pool_row.locator("button", has_text="Save").click()
        expect(page.locator("main table").last.locator("tr", has_text="nightly-pool")).to_contain_text("14")

        # Permissions: the viewer may read the default repository's files.
        page.goto(BASE + "/admin/permissions")
        page.click("summary:text('Add an entry')")
        page.fill("#apath", "/repositories/default")
        page.select_option("#auser", "viewer")
        page.select_option("#arole", "reader")
        page.click("form[data-api='POST /api/v1/acl'] button[type=submit]")
        expect(page.locator("main table")).to_contain_text("/repositories/default")
        page.locator("main tr", has_text="/repositories/default").locator("button", has_text="Remove").click()
        page.click("#confirm-ok")
        expect(page.locator("main table")).to_have_count(0)

        # The dashboard forecasts when the repository's disk fills at the pace of recent runs.
        page.goto(BASE + "/dashboard")
        expect(page.locator("#cap-h")).to_be_visible()
        expect(page.locator("section[aria-labelledby=cap-h]")).to_contain_text("/day")
        # A few MiB a day on a large disk: "not within 10 years", or a date when the disk is small.
        cap = page.locator("section[aria-labelledby=cap-h] tbody tr").first
        check(cap.locator("time").count() == 1 or "not within 10 years" in cap.inner_text(),
              "no forecast: " + cap.inner_text())

        # An agent: its one-time enrollment command, with a copy button.
        page.goto(BASE + "/agents")
        page.click("summary:text('Add an agent')")
        page.fill("#aname", "web1")
        page.click("form[data-api='POST /api/v1/agents'] button[type=submit]")
        expect(page.locator("#enroll")).to_be_visible()
        expect(page.locator("#enroll-cmd")).to_contain_text("bams agent enroll --server")
        token = page.locator('#enroll [data-field="enrollment_token"]').inner_text()
        check(len(token) > 20, f"enrollment token missing: {token!r}")
        shot(page, "agents")

        # Administration: a user added from the form, an API token shown once, the audit log
        # names what was done, a test notification reports its channels.
        page.goto(BASE + "/admin/users")
        page.click("summary:text('Add a user')")
        page.fill("#username", "operator1")
        page.fill("#password", "operator-password")
        page.select_option("#role", "operator")
        page.click("form[data-api='POST /api/v1/users'] button[type=submit]")
        expect(page.locator("main table")).to_contain_text("operator1")
        page.goto(BASE + "/admin/tokens")
        page.click("summary:text('Create an API token')")
        page.fill("#tname", "monitoring")
        page.click("form[data-api='POST /api/v1/tokens'] button[type=submit]")
        expect(page.locator("#new-token")).to_be_visible()
        check(page.locator("#token-secret").inner_text().strip().startswith("bams_"),
              "the new token's secret is not shown: " + page.locator("#token-secret").inner_text())
        page.goto(BASE + "/admin/audit?user=admin")
        expect(page.locator("main table")).to_contain_text("POST /api/v1/tokens")
        expect(page.locator("main table")).to_contain_text("operator1")
        page.goto(BASE + "/admin/notifications")
        page.click("text=Send a test notification")
        expect(page.locator("#test-result")).to_be_visible()

        # The tape library's picture: load a cartridge into a drive, then unload it.
        page.goto(BASE + "/storage/tape")
        load = page.locator(".slot button", has_text="Load into drive 0").first
        barcode = load.locator("xpath=..").locator("strong").inner_text()
        load.click()
        expect(page.locator(".card", has_text="Drive 0")).to_contain_text(barcode)
        shot(page, "tape")
        page.locator(".card", has_text="Drive 0").locator("button", has_text="Unload").click()
        expect(page.locator(".card", has_text="Drive 0")).to_contain_text("empty")
        # A media pool, then a cartridge labeled for it: the volume appears in the pool.
        page.click("summary:text('Add a media pool')")
        page.fill("#pname", "weekly")
        page.fill("#pdays", "28")
        page.click("form[data-api='POST /api/v1/tape/pools'] button[type=submit]")
        expect(page.locator("main table", has_text="weekly").first).to_be_visible()
        page.click("summary:text('Label a cartridge')")
        page.select_option("#lbarcode", barcode)
        page.select_option("#lpool", "weekly")
        page.click("form[data-api*='/label'] button[type=submit]")
        expect(page.locator("main table", has_text="Barcode")).to_contain_text(barcode)
        expect(page.locator("main table", has_text="Barcode")).to_contain_text("weekly")
        page.click("summary:text(\"Change a media pool's policy\")")
        page.select_option("#epool", "weekly")
        page.fill("#edays", "35")
        page.click("form[data-api*='/tape/pools/'] button[type=submit]")
        expect(page.locator("main table", has_text="Keep (days)")).to_contain_text("35")

        # A disk repository made from the form, then deleted behind a typed confirmation.
        page.goto(BASE + "/storage/disks")
        page.click("summary:text('Add a disk repository')")
        page.fill("#dname", "shelf1")
        page.fill("#dpath", os.path.join(WORK, "shelf1"))
        page.click("form[data-api='POST /api/v1/disk/repositories'] button[type=submit]")
        row = page.locator("main tr", has_text="shelf1")
        expect(row).to_contain_text("ok")
        row.locator("button", has_text="Delete with its repositories").click()
        expect(page.locator("#confirm-ok")).to_be_disabled()
        page.fill("#confirm-input", "shelf")
        expect(page.locator("#confirm-ok")).to_be_disabled()
        page.fill("#confirm-input", "shelf1")
        page.click("#confirm-ok")
        expect(page.locator("main tr", has_text="shelf1")).to_have_count(0)

        # Every page as admin, without console errors.
        admin_pages = ["/dashboard", "/jobs", "/jobs/new", f"/jobs/{job_id}", f"/jobs/{job_id}/edit", "/runs",
                       urlparse(run_url).path, "/snapshots", urlparse(snap_url).path + "?" + urlparse(snap_url).query,
                       "/repositories", "/agents", "/logs", "/admin/users", "/admin/tokens", "/admin/audit",
                       "/admin/notifications", "/storage/disks", "/storage/tape", "/storage/iscsi", "/storage/bacula",
                       "/snapshots/find?name=a.txt", "/admin/permissions", "/account"]
        sweep(page, "admin", admin_pages, shots=True)

        # Forget by keep rules: the preview names the older snapshot, then it goes.
        page.goto(BASE + "/snapshots")
        check(page.locator("main tbody tr").count() == 2, "two snapshots before forgetting")
        page.click("summary:text('Forget by keep rules')")
        page.fill("#fkeep_last", "1")
        page.click("button[name=dry_run][value=true]")
        expect(page.locator("#forget-preview")).to_be_visible()
        removed = json.loads(page.locator("#forget-preview pre").inner_text())
        check(len(removed) == 1, f"the preview should name one snapshot: {removed}")
        check(page.locator("main tbody tr").count() == 2, "a preview removed something")
        page.click("button[name=dry_run][value=false]")
        page.click("#confirm-ok")
        expect(page.locator("main tbody tr")).to_have_count(1)
        snap_url = BASE + page.locator("main tbody a[href^='/snapshots/']").first.get_attribute("href")

        # A forged POST without the CSRF token is refused, even with the session cookie.
        r = admin_ctx.request.post(BASE + f"/api/v1/jobs/{job_id}/run", data="{}",
                                   headers={"Content-Type": "application/json"})
        check(r.status == 403 and "csrf" in r.text(), f"POST without CSRF token: {r.status} {r.text()}")

        # A real cross-site form post from another site's page (classic CSRF): the browser does
        # not send the SameSite=Strict session cookie, the server refuses, no run is queued.
        runs_url = BASE + f"/api/v1/runs?job={job_id}&limit=500"
        before = len(admin_ctx.request.get(runs_url).json()["items"])
        attacker = admin_ctx.new_page()
        evil = (f'<form id="f" method="post" action="{BASE}/api/v1/jobs/{job_id}/run" enctype="text/plain">'
                '<input name="x" value="y"></form><script>document.getElementById("f").submit()</script>')
        attacker.route("http://attacker.test/**",
                       lambda r: r.fulfill(status=200, content_type="text/html", body=evil))
        attacker.goto("http://attacker.test/")
        attacker.wait_for_url(BASE + "/api/**")
        check("unauthorized" in attacker.content(), "the cross-site post was not refused: " + attacker.content()[:300])
        after = len(admin_ctx.request.get(runs_url).json()["items"])
        check(after == before, f"a cross-site post queued a run ({before} → {after})")
        attacker.close()

        # An expired or removed session goes to the login page, then back.
        admin_ctx.clear_cookies()
        login(page, "admin", os.environ["ADMIN_PASSWORD"], "/runs")
        expect(page.locator("main h1")).to_have_text("Runs")
        page.click("button[data-logout]")
        page.wait_for_url(re.compile(r"/login"))

        # A viewer: sees state, never an action button, never backed-up content.
        viewer_ctx = browser.new_context(viewport={"width": 1366, "height": 900})
        vpage = viewer_ctx.new_page()
        watch(vpage, "viewer")
        login(vpage, "viewer", os.environ["VIEWER_PASSWORD"])
        viewer_pages = ["/dashboard", "/jobs", f"/jobs/{job_id}", "/runs", urlparse(run_url).path, "/snapshots",
                        urlparse(snap_url).path + "?" + urlparse(snap_url).query, "/repositories", "/agents", "/logs",
                        "/admin/tokens", "/storage/disks", "/storage/tape", "/storage/iscsi", "/storage/bacula", "/account"]
        for path in viewer_pages:
            sweep(vpage, "viewer", [path])
            # (Reading actions, such as measuring a repository's usage, and managing one's own
            # API tokens are the viewer's to take: they would not answer 403.)
            # Their own password and second factor too (on /account).
            own = path == "/account"
            offered = vpage.locator("button[data-action]:not([data-action^='GET ']):not([data-action*='/api/v1/tokens'])"
                                    + (":not([data-action*='/api/v1/auth/'])" if own else "") + ", "
                                    "form[data-api]:not([data-api='POST /api/v1/tokens'])"
                                    + (":not([data-api*='/api/v1/auth/']):not([data-api^='PATCH /api/v1/users/'])" if own else "")
                                    + ", a[href='/jobs/new'], a[href$='/edit']")
            n = offered.count()
            check(n == 0, f"viewer is offered {n} action(s) on {path}: "
                  + " ".join(offered.nth(i).evaluate("e => e.outerHTML")[:200] for i in range(n)))
            check(vpage.locator("ul.tree").count() == 0, f"viewer sees a file browser on {path}")
        expected_statuses.add(403)
        for path in ["/jobs/new", "/admin/users", "/admin/audit", "/admin/notifications", "/admin/permissions"]:
            resp = vpage.goto(BASE + path)
            check(resp.status == 403, f"viewer opening {path}: {resp.status}")
        check(vpage.locator("a[href='/admin/users']").count() == 0, "the viewer's navigation offers Users")
        resp = vpage.goto(BASE + urlparse(snap_url).path + "/browse?path=/")
        check(resp.status == 403, f"viewer browsing a snapshot: {resp.status}")

        browser.close()
    finish("web UI")


if __name__ == "__main__":
    main()
