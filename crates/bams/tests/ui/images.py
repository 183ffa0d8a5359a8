"""The Images and Machines screens in a real browser (Debian's chromium driven by Playwright).
Run by tests/web_ui.rs against a throwaway server that has a machine `lab1` (accepted) and
one that registered itself by booting, with:

  BAMS_URL          the server
  ADMIN_PASSWORD    the admin's password
  USER_PASSWORD     the password of `alice` (role user)
  WORK              scratch directory (a disk image to upload)
  SCREENSHOTS       if set, where to write screenshots

An image user creates an image (a bad name is refused at its field), uploads a version from
a file field, boots it on a machine; an administrator accepts the waiting machine; neither
sees actions the other's role lacks.
"""

import os
import re
import sys

from playwright.sync_api import sync_playwright, expect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fail, finish, launch  # noqa: E402

BASE = os.environ["BAMS_URL"]
WORK = os.environ["WORK"]
SHOTS = os.environ.get("SCREENSHOTS")


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)


def login(page, user, password, path):
    page.goto(BASE + path)
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: url.endswith(path))


def watch(page, who):
    page.on("pageerror", lambda e: fail(f"{who}: page error on {page.url}: {e}"))
    page.on("dialog", lambda d: (fail(f"{who}: a dialog opened: {d.message}"), d.dismiss()))
    page.on("console", lambda m: m.type == "error" and "status of 400" not in m.text
            and fail(f"{who}: console error on {page.url}: {m.text}"))


def user_flow(browser):
    page = browser.new_page()
    watch(page, "alice")
    login(page, "alice", os.environ["USER_PASSWORD"], "/bare-metal/images")
    nav = page.locator("nav").inner_text()
    if "Jobs" in nav or "Users" in nav:
        fail(f"an image user sees backup or admin screens in the navigation: {nav}")
    page.click("summary:has-text('New image')")
    page.fill("#iname", "a/b")
    page.fill("#isize", "1048576")
    page.click("button:has-text('Create image')")
    expect(page.locator('[data-error-for="name"]').first).to_contain_text("invalid image name")
    page.fill("#iname", "course-disk")
    page.fill("#idisk", "/dev/vda")
    page.click("button:has-text('Create image')")
    page.wait_for_url(re.compile(r"/bare-metal/images/[0-9a-f-]{36}$"))
    expect(page.locator("table")).to_contain_text("empty")
    uuid = page.url.rsplit("/", 1)[1]
    # Upload a version from a file field: the browser streams the file as the body.
    disk = os.path.join(WORK, "disk.img")
    with open(disk, "wb") as f:
        f.write(os.urandom(1 << 20))
    page.click("summary:has-text('Upload a new version')")
    page.set_input_files("#vfile", disk)
    page.click("button:has-text('Upload')")
    expect(page.locator("tbody tr").first).to_contain_text("upload", timeout=30000)
    rows = page.locator("tbody tr").count()
    if rows != 2:
        fail(f"two versions expected after the upload, the table has {rows}")
    # Download link of version 2 serves the uploaded bytes.
    with page.expect_download() as dl:
        page.click(f'a[href="/api/v1/images/{uuid}/versions/2"]')
    got = dl.value.path()
    if open(got, "rb").read() != open(disk, "rb").read():
        fail("the downloaded version differs from the uploaded file")
    # Boot it on lab1 with sync back.
    page.click("summary:has-text('Boot on a machine')")
    page.select_option("#bversion", "2")
    page.check("input[name=update]")
    page.click("button:has-text('Queue the boot')")
    page.wait_for_url(re.compile(r"/bare-metal/machines/\d+$"))
    expect(page.locator("dl.facts")).to_contain_text("course-disk v2 (sync back)")
    if page.locator("button:has-text('Remove')").count() or page.locator("button:has-text('Accept')").count():
        fail("an image user sees administrators' machine actions")
    shot(page, "machine")
    page.goto(BASE + f"/bare-metal/images/{uuid}")
    shot(page, "image")
    page.close()


def admin_flow(browser):
    page = browser.new_page()
    watch(page, "admin")
    login(page, "admin", os.environ["ADMIN_PASSWORD"], "/bare-metal/machines")
    expect(page.locator("table")).to_contain_text("waiting to be accepted")
    page.click("button:has-text('Accept')")
    expect(page.locator("table")).not_to_contain_text("waiting to be accepted")
    expect(page.locator("table")).to_contain_text("course-disk v2 (sync back)")
    shot(page, "machines")
    page.goto(BASE + "/bare-metal/images")
    expect(page.locator("table").first).to_contain_text("course-disk")
    page.click("summary:has-text('New image set')")
    uuid = page.locator("table code").first.inner_text()
    page.fill("#sname", "course")
    page.fill("#sentries", f"{uuid}@2+update")
    page.click("button:has-text('Create set')")
    expect(page.locator("table").nth(1)).to_contain_text("(sync back)")
    shot(page, "images")
    page.close()


with sync_playwright() as p:
    b = launch(p)
    try:
        user_flow(b)
        admin_flow(b)
    except Exception as e:  # noqa: BLE001 - reported as a failure with its message
        fail(f"{type(e).__name__}: {e}")
    b.close()
finish("images UI")
