"""The dashboard in a real headless browser (Playwright + Debian's chromium): sign in,
start a session with an uploaded CSV against real agents, watch it reach COMPLETED with
its accuracy curve drawn, then stop a second session with its button."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from servekit import PASSWORD, SMALL, make_csv, running

pytest.importorskip("fastapi")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run does it where it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'byzctl[browser]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as svc:
        yield svc


def test_sign_in_start_a_session_see_it_complete_with_its_curve_then_stop_one(service, browser, tmp_path):
    csv = make_csv(tmp_path / "points.csv")
    page = browser.new_page()
    page.goto(service.url)
    page.fill("#username", "alice")
    page.fill("#password", "not the password")
    page.click("#signin-button")
    page.wait_for_selector("#signin-error:has-text('wrong user name or password')")
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    page.wait_for_selector("#agents-summary:has-text('3 online, 3 idle')", timeout=60_000)

    page.fill("#overrides", "\n".join(SMALL))
    page.set_input_files("#dataset", str(csv))
    page.click("#start-button")
    page.wait_for_selector("#sessions tbody tr", timeout=60_000)
    page.wait_for_selector("#detail-state:has-text('COMPLETED')", timeout=180_000)
    assert page.get_attribute("#curve", "data-points") == "4"
    inked = page.evaluate("""() => {
        const c = document.getElementById('curve'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 60 && d[i + 3] > 0) blue++;
        return blue;
    }""")
    assert inked > 200, f"the curve's blue pixels: {inked}"
    assert page.inner_text("#sessions tbody tr:first-child").count("20/20") == 1

    page.fill("#overrides", "\n".join([*SMALL, "rounds=400", "eval_every=2"]))
    page.click("#start-button")
    page.wait_for_selector("#sessions tbody tr:first-child button.stop", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#sessions tbody tr:first-child').innerText.match(/ ([1-9]\\d*)\\/400/)",
                           timeout=120_000)
    page.click("#sessions tbody tr:first-child button.stop")
    page.wait_for_selector("#sessions tbody tr:first-child :text('INTERRUPTED')", timeout=60_000)
    page.wait_for_selector("#agents-summary:has-text('3 online, 3 idle')", timeout=60_000)
