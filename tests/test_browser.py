"""Headless Chromium (Debian's package, driven by Playwright) on what a person looks at: optuna-dashboard over a
finished small campaign shows dal-search's custom surface plot, and the HTML report renders every figure with
the network cut off; the dashboard asks for its token and refuses writes. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
SURFACE_ID = "user-defined-plot:dal-sensitivity-to-q-s-x-q-e-open-question-3"
TOKEN = secrets.token_hex(32)  # the dashboard's, given as $DAL_SEARCH_DASHBOARD_TOKEN
# A comparison as search/stats.py states it: difference, 95 % interval, n seeds and the verdict.
FINDING = re.compile(r"[+-]\d+\.\d points of test accuracy, 95 % CI \[[+-]\d+\.\d, [+-]\d+\.\d\], "
                     r"n=3 seeds paired: (better|worse|no detectable difference)")

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: apt-get install chromium")]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "dal_search", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def finished_campaign(tmp_path_factory):
    """A real campaign run to the end with the CLI: a 2 x 2 grid of DAL's q_s x q_e (two schedule shapes) and CE,
    then `dal-search report`, which writes the HTML and pushes the figures into the studies."""
    tmp = tmp_path_factory.mktemp("browser")
    spec = {"name": "web", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
            "arms": {"dal": {"q_start": [0.4, 0.8], "q_end": [1.0, 1.5], "schedule": ["linear", "cosine"]},
                     "ce": {}},
            "budget": {"trials": 1, "seeds": [0, 1, 2]}, "train": {"epochs": 2, "threads": 1}, "sampler": "grid"}
    (tmp / "web.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / 'web.db'}"
    _cli("run", str(tmp / "web.yaml"), "--storage", url)
    html = tmp / "report.html"
    r = _cli("report", "--storage", url, "--campaign", "web", "--out", str(html))
    assert "figures drawn" in r.stderr
    return url, html


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(finished_campaign):
    url, _ = finished_campaign
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dal_search", "dashboard", "--storage", url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "DAL_SEARCH_DASHBOARD_TOKEN": TOKEN})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ask = urllib.request.Request(f"{base}/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(ask, timeout=2) as resp:
                    studies = json.load(resp)["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"dashboard did not start: {proc.stdout.read()[-2000:]}")
                time.sleep(0.3)
        yield base, {s["study_name"]: s["study_id"] for s in studies}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    from dal_search.search.report import CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_dashboard_shows_the_custom_surface_plot(dashboard, browser):
    base, ids = dashboard
    assert set(ids) == {"web/dal/digits/symmetric-0.4", "web/ce/digits/symmetric-0.4"}
    page = browser.new_page(viewport={"width": 1600, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    study = f"/dashboard/studies/{ids['web/dal/digits/symmetric-0.4']}"
    page.goto(f"{base}{study}?token={TOKEN}")  # signs in once: a cookie, and the token leaves the address
    assert page.url == f"{base}{study}"
    plot = page.locator(f'[id="{SURFACE_ID}"]')
    plot.locator(".main-svg").first.wait_for(timeout=60_000)
    plot.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-study.png"), full_page=True)
    plot.screenshot(path=str(ARTIFACTS / "dashboard-surface.png"))
    # the rendered DOM is dal-search's heatmap: its title, its axes, one heatmap image per schedule shape, the
    # 4 grid points of each and each panel's best point (a star)
    assert "Sensitivity of DAL to q_s x q_e" in plot.locator(".gtitle").text_content()
    assert plot.locator(".xtitle").first.text_content() == "q_s (q_start)"
    assert plot.locator("g.hm image").count() == 2
    assert plot.locator("g.scatterlayer path.point").count() == 2 * 4 + 2
    # the findings, in words, are the study's note: each comparison with n, its interval and a verdict
    page.goto(f"{base}/dashboard/studies/{ids['web/dal/digits/symmetric-0.4']}/note")
    page.get_by_text("best q_s x q_e point", exact=False).first.wait_for(timeout=30_000)
    note = page.locator("body").inner_text()
    assert FINDING.search(note), note[-3000:]
    assert "DAL vs CE (the best baseline on noisy validation accuracy" in note
    # the CE study carries the shared figures (DAL vs baselines) as well
    page.goto(f"{base}/dashboard/studies/{ids['web/ce/digits/symmetric-0.4']}")
    page.locator('[id="user-defined-plot:dal-dal-vs-baselines"] .main-svg').first.wait_for(timeout=60_000)
    assert not errors, errors


def test_report_renders_every_figure_offline(finished_campaign, browser):
    _, html = finished_campaign
    text = html.read_text()
    drawn = text.count('class="plotly-graph-div"')
    assert drawn >= 4  # arms, surface, shapes, best trial's curves
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
    page = context.new_page()
    requested: list[str] = []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            requested.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {drawn}",
                           timeout=60_000)
    assert page.locator(".js-plotly-plot").count() == drawn
    for i in range(drawn):  # every figure drew its traces, not an empty frame
        assert page.locator(".js-plotly-plot").nth(i).locator(".plot .trace, g.hm, g.trace").count() > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    # the findings as a reader sees them: each comparison with n, its interval and a verdict
    findings = page.locator("ul.findings li").all_inner_texts()
    assert findings and all(FINDING.search(f) for f in findings), findings
    assert not requested, f"the report fetched from the network: {requested}"
    assert not errors, errors
    context.close()


def test_report_pngs_through_chromium(finished_campaign, tmp_path):
    """`--png-dir` writes one PNG per drawn figure (kaleido when present, else this Chromium)."""
    url, _ = finished_campaign
    _cli("report", "--storage", url, "--campaign", "web", "--out", str(tmp_path / "r.html"),
         "--png-dir", str(tmp_path / "png"), "--no-dashboard")
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) >= 4
    for p in pngs:
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width = int.from_bytes(head[16:20], "big")
        assert width >= 400


def test_dashboard_asks_for_its_token_and_refuses_writes(dashboard, browser):
    """Without credentials (or with a wrong token) nothing is shown; with the token as HTTP Basic's password
    the study page renders dal-search's figures; a DELETE of the study, from the signed-in page or with the
    token as a bearer, is refused (403) and the study is still there."""
    base, ids = dashboard
    dal = ids["web/dal/digits/symmetric-0.4"]
    from playwright.sync_api import Error as PlaywrightError

    anonymous = browser.new_context()
    page = anonymous.new_page()
    for url in (f"{base}/dashboard/studies/{dal}", f"{base}/api/studies", f"{base}/?token={'0' * 64}"):
        # Chromium is challenged for credentials it does not have and shows nothing of the page
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(url)
        resp = anonymous.request.get(url, max_redirects=0)  # the same request, answer in hand
        assert resp.status == 401, url
        assert resp.headers["www-authenticate"] == 'Basic realm="dal-search"'
        assert "study_summaries" not in resp.text()
    assert anonymous.request.delete(f"{base}/api/studies/{dal}").status == 401
    anonymous.close()

    signed_in = browser.new_context(http_credentials={"username": "anyone", "password": TOKEN},
                                    viewport={"width": 1600, "height": 1400})
    page = signed_in.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    assert page.goto(f"{base}/dashboard/studies/{dal}").status == 200
    page.locator(f'[id="{SURFACE_ID}"] .main-svg').first.wait_for(timeout=60_000)
    assert "Sensitivity of DAL to q_s x q_e" in page.locator(f'[id="{SURFACE_ID}"] .gtitle').text_content()
    status = page.evaluate(f"fetch('/api/studies/{dal}', {{method: 'DELETE'}}).then(r => r.status)")
    assert status == 403
    bearer = signed_in.request.delete(f"{base}/api/studies/{dal}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status == 403
    note = signed_in.request.put(f"{base}/api/studies/{dal}/note", data={"version": 1, "body": "defaced"},
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert note.status == 403
    ask = urllib.request.Request(f"{base}/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(ask, timeout=10) as resp:
        assert dal in {st["study_id"] for st in json.load(resp)["study_summaries"]}
    assert not errors, errors
    signed_in.close()
