"""`dali-abs label` in a real browser: headless Debian Chromium driven by Playwright.

The setup installs what it needs (Debian package ``chromium`` with apt-get, the Python
package ``playwright`` with pip into the running interpreter); the Playwright browser
download is not used. If the installation fails the tests fail with the reason.
Set ``DALI_ABS_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dali_abs.dataset import load_dataset
from dali_abs.labels import read_labels

CHROMIUM = os.environ.get("DALI_ABS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
R = 8  # tiny_dataset's grid


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=1200)


def _ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail(f"{CHROMIUM} not found and there is no apt-get to install the Debian package chromium")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        pytest.fail(f"{CHROMIUM} not found; installing the Debian package chromium needs root (or sudo)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (prefix + [apt, "update"], prefix + [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        r = _run(cmd, env)
        if r.returncode != 0:
            pytest.fail(f"installing chromium failed: {' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM


def _ensure_playwright():
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        pass
    r = _run([sys.executable, "-m", "pip", "install", "-q", "playwright"])
    if r.returncode != 0:
        pytest.fail(f"pip install playwright failed (exit {r.returncode}):\n{r.stdout[-3000:]}")
    importlib.invalidate_caches()
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError as e:
        pytest.fail(f"playwright installed but cannot be imported: {e}")


@pytest.fixture(scope="session")
def browser():
    chromium = _ensure_chromium()
    sync_api = _ensure_playwright()
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:
        pw.stop()
        pytest.fail(f"cannot launch {chromium} with Playwright: {e}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def start(tiny_dataset, tmp_path):
    from dali_abs.labeling.server import serve
    from dali_abs.labeling.session import LabelSession

    servers = []

    def make(host="127.0.0.1", **kw):
        session = LabelSession(load_dataset(tiny_dataset), tmp_path / "labels.csv", **kw)
        server = serve(session, host, 0)
        server.start_background()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 900, "height": 800})
    pg = ctx.new_page()
    pg.set_default_timeout(15000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.errors = errors
    yield pg
    ctx.close()
    assert not errors, errors  # no script errors, no CSP violations


def wait_js(pg, expr: str, timeout: float = 15.0) -> None:
    """Poll a JS expression until it is truthy. (``page.wait_for_function`` evaluates its
    predicate with eval(), which the page's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not pg.evaluate(expr):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expr}; page state {canvas_state(pg)}; errors {pg.errors}")
        pg.wait_for_timeout(25)


def wait_ready(pg, index: int | None = None, pending_zero: bool = True):
    """Wait until the page shows an image (optionally ``index``) and every save has returned."""
    cond = "c.dataset.id && c.dataset.mask"
    if index is not None:
        cond += f" && c.dataset.index === '{index}'"
    if pending_zero:
        cond += " && document.body.dataset.pending === '0'"
    wait_js(pg, f"(() => {{ const c = document.getElementById('canvas'); return !!({cond}); }})()")


def canvas_state(pg) -> dict:
    return pg.evaluate("(() => { const c = document.getElementById('canvas'); return {id: c.dataset.id, "
                       "index: +c.dataset.index, mask: c.dataset.mask, source: c.dataset.source, "
                       "counter: document.getElementById('counter').textContent}; })()")


def centre(pg, row: int, col: int) -> tuple[float, float]:
    box = pg.locator("#canvas").bounding_box()
    return box["x"] + (col + 0.5) * box["width"] / R, box["y"] + (row + 0.5) * box["height"] / R


def mask_of(*cells: tuple[int, int]) -> str:
    m = ["0"] * (R * R)
    for r, c in cells:
        m[r * R + c] = "1"
    return "".join(m)


def saved(out: Path) -> dict[str, str]:
    return {k: "".join("1" if v else "0" for v in g.ravel()) for k, g in read_labels(out).items()}


def test_paint_reload_and_keys(browser, page, start, tmp_path):
    server = start(count=4, grid=R)
    out = tmp_path / "labels.csv"
    ids = server.session.ids
    page.goto(server.url)
    wait_ready(page, 0)
    st = canvas_state(page)
    assert st == {"id": ids[0], "index": 0, "mask": "0" * R * R, "source": "empty", "counter": "labelled 0 / 4"}
    box = page.locator("#canvas").bounding_box()
    assert box["width"] >= 256  # a 64 px image is scaled up

    # Click two patches, then drag along row 6 from column 1 to 4.
    page.mouse.click(*centre(page, 1, 2))
    page.mouse.click(*centre(page, 4, 5))
    page.mouse.move(*centre(page, 6, 1))
    page.mouse.down()
    page.mouse.move(*centre(page, 6, 4), steps=10)
    page.mouse.up()
    want = mask_of((1, 2), (4, 5), (6, 1), (6, 2), (6, 3), (6, 4))
    wait_js(page, "document.getElementById('counter').textContent === 'labelled 1 / 4'")
    wait_ready(page, 0)
    assert canvas_state(page)["mask"] == want
    assert saved(out) == {ids[0]: want}
    # A drag that starts on a foreground patch erases.
    page.mouse.move(*centre(page, 6, 4))
    page.mouse.down()
    page.mouse.move(*centre(page, 6, 3), steps=5)
    page.mouse.up()
    want = mask_of((1, 2), (4, 5), (6, 1), (6, 2))
    wait_js(page, f"document.getElementById('canvas').dataset.mask === '{want}'")
    wait_ready(page, 0)
    assert saved(out) == {ids[0]: want}

    # Reload: the page shows the same image with the saved mask.
    page.reload()
    wait_ready(page, 0)
    st = canvas_state(page)
    assert st == {"id": ids[0], "index": 0, "mask": want, "source": "saved", "counter": "labelled 1 / 4"}

    # Keys: i inverts (and saves), n moves on, c clears (a valid all-background label), p goes back.
    page.keyboard.press("i")
    inverted = "".join("1" if ch == "0" else "0" for ch in want)
    wait_js(page, f"document.getElementById('canvas').dataset.mask === '{inverted}'")
    wait_ready(page, 0)
    assert saved(out) == {ids[0]: inverted}
    page.keyboard.press("n")
    wait_ready(page, 1)
    assert canvas_state(page)["source"] == "empty"
    page.keyboard.press("c")
    wait_js(page, "document.getElementById('counter').textContent === 'labelled 2 / 4'")
    wait_ready(page, 1)
    assert saved(out) == {ids[0]: inverted, ids[1]: "0" * R * R}
    page.keyboard.press("ArrowLeft")
    wait_ready(page, 0)
    assert canvas_state(page)["mask"] == inverted

    # A fresh visit (no #index in the address) resumes at the first unlabelled image.
    page.goto(server.url.rstrip("/") + "/")
    page.evaluate("location.hash = ''")
    page.reload()
    wait_ready(page, 2)
    assert canvas_state(page)["counter"] == "labelled 2 / 4"


def test_prediction_prefill_accept_and_correct(browser, page, start, tiny_models, tmp_path):
    server = start(count=3, model=tiny_models[0])
    out = tmp_path / "labels.csv"
    ids = server.session.ids
    page.goto(server.url)
    wait_ready(page, 0)
    probs = np.array(server.session.prediction(ids[0])["probabilities"])
    pred = "".join("1" if p >= 0.5 else "0" for p in probs)
    st = canvas_state(page)
    assert st["source"] == "prediction" and st["mask"] == pred and st["counter"] == "labelled 0 / 3"
    assert not out.exists()  # a prediction is not a label until accepted or edited
    page.keyboard.press("a")
    wait_js(page, "document.getElementById('counter').textContent === 'labelled 1 / 3'")
    wait_ready(page, 0)
    assert canvas_state(page)["source"] == "saved"
    assert saved(out) == {ids[0]: pred}
    # Correct one patch of the next image's prediction: prediction + correction is saved.
    page.keyboard.press("n")
    wait_ready(page, 1)
    probs1 = np.array(server.session.prediction(ids[1])["probabilities"])
    corrected = ["1" if p >= 0.5 else "0" for p in probs1]
    corrected[3 * R + 3] = "0" if corrected[3 * R + 3] == "1" else "1"
    page.mouse.click(*centre(page, 3, 3))
    wait_js(page, "document.getElementById('counter').textContent === 'labelled 2 / 3'")
    wait_ready(page, 1)
    assert saved(out) == {ids[0]: pred, ids[1]: "".join(corrected)}


def test_beyond_loopback_the_printed_url_logs_in_and_the_token_leaves_the_address_bar(browser, page, start, tmp_path):
    server = start(host="0.0.0.0", count=3, grid=R)
    assert "?token=" in server.url
    page.goto(server.url)
    wait_ready(page, 0)
    assert page.evaluate("location.search") == "" and server.token not in page.url
    assert server.token not in page.evaluate("document.cookie")  # HttpOnly: no script can read it
    page.mouse.click(*centre(page, 2, 3))
    wait_js(page, "document.getElementById('counter').textContent === 'labelled 1 / 3'")
    wait_ready(page, 0)
    assert saved(tmp_path / "labels.csv") == {server.session.ids[0]: mask_of((2, 3))}
    page.reload()  # the cookie alone carries the session on
    wait_ready(page, 0)
    assert canvas_state(page)["source"] == "saved"
    # A fresh browser without the token gets nothing.
    ctx = browser.new_context()
    try:
        other = ctx.new_page()
        assert other.goto(server.url.split("?")[0]).status == 403
    finally:
        ctx.close()
