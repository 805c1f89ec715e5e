"""The page in a real headless Chromium (Debian's, driven by Playwright): solve live, click a node,
read its code and output, open an example, walk the classroom view; bad input; projector, replay,
Stop; a closed tab frees its session. Screenshots go to tests/ui/screenshots/ (the README shows
them). Nothing asserts on speed: waits are generous because this CPU's speed varies 5-100x."""

from __future__ import annotations

import json
import re
import time

import pytest

from uihelpers import SCREENSHOTS, wait_idle

PROBLEM = "Tom has 3 boxes with 4 apples in each box. How many apples does he have?"
SEARCH_TIMEOUT = 900_000  # ms
NODES_JS = """() => { const d = document.querySelector('#rstar-tree-view .rstar-tree');
                      return d ? parseInt(d.dataset.nodes || '0') : 0; }"""


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.external = []  # any request that leaves the machine (the app must work offline)
    page.on("request", lambda r: page.external.append(r.url)
            if not (r.url.startswith(url) or r.url.startswith(("data:", "blob:"))) else None)
    page.goto(url)
    page.wait_for_selector("#rstar-problem textarea")
    page.wait_for_function("() => window.Plotly !== undefined", timeout=60_000)  # served locally
    wait_status(page, "^Ready")  # the page's load event has answered (so it cannot overwrite later messages)
    return page


def status(page) -> str:
    return page.inner_text("#rstar-status")


def wait_status(page, pattern: str, timeout=60_000):
    page.wait_for_function(
        "(re) => new RegExp(re).test(document.querySelector('#rstar-status').innerText)", arg=pattern,
        timeout=timeout)


def set_number(page, label: str, value) -> None:
    """Type into the number box of a slider (found by its label)."""
    box = page.locator(f"label:has-text('{label}')").locator("xpath=..").locator("input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def settle(page, timeout=60_000):
    """Wait until no component shows Gradio's pending/loading tracker."""
    page.wait_for_function("""() => Array.from(document.querySelectorAll('[data-testid=status-tracker]'))
                                  .every(e => e.classList.contains('hide'))""", timeout=timeout)


def inspected_id(page) -> int | None:
    m = re.search(r"Node #(\d+)", page.inner_text("#rstar-insp-header h3") if
                  page.locator("#rstar-insp-header h3").count() else "")
    return int(m.group(1)) if m else None


def click_tree_node(page, view="#rstar-tree-view", index=1) -> None:
    """Click the index-th drawn node marker (plotly draws each point as an SVG path)."""
    pts = page.locator(f"{view} .scatterlayer .trace .points path.point")
    box = pts.nth(index).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def open_example(page, index=0):
    page.locator("#rstar-examples button.gallery-item").nth(index).click()
    wait_status(page, "Opened the recorded example")


def test_solve_live_click_a_node_and_walk_the_classroom(browser, app_url, client):
    SCREENSHOTS.mkdir(exist_ok=True)
    wait_idle(client)
    page = open_page(browser, app_url)
    page.fill("#rstar-problem textarea", PROBLEM)
    page.click("text=Settings")
    set_number(page, "Rollouts", 2)
    set_number(page, "Candidates per step", 2)
    set_number(page, "Time limit (s)", 240)  # bounds the test on a starved CPU (partial tree then)
    page.click("#rstar-solve")
    page.wait_for_function(f"() => ({NODES_JS})() > 1", timeout=SEARCH_TIMEOUT)  # the tree grows
    wait_status(page, "^(Done|Time limit|Stopped)", timeout=SEARCH_TIMEOUT)
    assert re.search(r"\d+ rollouts · \d+ nodes", status(page))

    # click a node in the plot: the inspector shows that node's program and output
    settle(page)
    before = inspected_id(page)  # the end of the chosen path is shown when the search ends
    click_tree_node(page, index=1)
    page.wait_for_function("""(b) => { const h = document.querySelector('#rstar-insp-header h3');
                                       const m = h && h.innerText.match(/Node #(\\d+)/);
                                       return m && Number(m[1]) !== b; }""", arg=before, timeout=60_000)
    settle(page)
    header = page.inner_text("#rstar-insp-header")
    assert re.search(r"Node #\d+", header) and "UCT score" in header
    code = page.inner_text("#rstar-insp-code")
    assert "step 1 (node #" in code
    output = page.input_value("#rstar-insp-output textarea")
    assert output.strip()  # printed output, an error, or the note that nothing printed yet
    page.screenshot(path=str(SCREENSHOTS / "solve.png"), full_page=True)

    # share: the trace download is ready and is a valid trace
    with page.expect_download() as dl:
        page.click("#rstar-dl-trace")
    trace = json.loads(open(dl.value.path(), encoding="utf-8").read())
    assert trace["format"] == "rstar-app-trace" and trace["problem"] == PROBLEM

    # an example opens at once (pre-recorded), then the classroom walks through it
    open_example(page, 0)
    page.click("button[role=tab]:has-text('Classroom')")
    page.wait_for_selector("#rstar-class-md")
    for _ in range(3):
        before = page.inner_text("#rstar-class-md")
        page.click("#rstar-next")
        page.wait_for_function("(t) => document.querySelector('#rstar-class-md').innerText !== t",
                               arg=before, timeout=30_000)
    text = page.inner_text("#rstar-class-md")
    assert "Problem" in text and "Step 1" in text and "hint" in text
    assert page.locator("#rstar-gallery .rstar-card").count() > 0
    settle(page)
    page.wait_for_timeout(800)  # let the replay plot finish drawing
    page.screenshot(path=str(SCREENSHOTS / "classroom.png"), full_page=True)
    assert page.external == []
    page.close()


def test_bad_input_in_the_page_gets_a_clear_message(browser, app_url, tmp_path):
    page = open_page(browser, app_url)
    page.click("#rstar-solve")  # empty
    wait_status(page, "empty")
    page.fill("#rstar-problem textarea", ("7 apples. " * 2000)[:-1] + "?")  # 20,000 characters
    page.click("#rstar-solve")
    wait_status(page, "20,000 characters long")
    bad = tmp_path / "not-a-trace.json"
    bad.write_text("{this is not json")
    with page.expect_file_chooser() as fc:
        page.click("#rstar-upload")
    fc.value.set_files(str(bad))
    wait_status(page, "Could not open this trace")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with page.expect_file_chooser() as fc:
        page.click("#rstar-upload")
    fc.value.set_files(str(deep))
    wait_status(page, "Could not open this trace: not a JSON trace")
    open_example(page, 1)  # and the page still works
    assert page.evaluate(NODES_JS) > 1
    page.close()


def test_a_closed_tab_frees_its_session(browser, app_url, client):
    page = open_page(browser, app_url)
    open_example(page, 0)
    before = client.predict(api_name="/status")["sessions"]
    assert before >= 1
    page.close()
    deadline = time.monotonic() + 120
    while client.predict(api_name="/status")["sessions"] >= before:
        assert time.monotonic() < deadline, "the session was not freed after the tab closed"
        time.sleep(1)


@pytest.mark.slow
def test_stop_in_the_page_keeps_the_partial_tree(browser, app_url, client):
    wait_idle(client)
    page = open_page(browser, app_url)
    page.fill("#rstar-problem textarea", PROBLEM)
    page.click("#rstar-solve")  # default budget: 8 rollouts, far more than we wait for
    page.wait_for_function(f"() => ({NODES_JS})() > 1", timeout=SEARCH_TIMEOUT)
    page.click("#rstar-stop")
    wait_status(page, "^Stopped: partial tree kept", timeout=SEARCH_TIMEOUT)
    assert page.evaluate(NODES_JS) > 1
    page.close()


def test_projector_mode_and_replay(browser, app_url):
    # no search: a recorded example, so the default suite checks the page's keyboard handler,
    # projector class and replay wiring (Play, zoom kept across redraws)
    SCREENSHOTS.mkdir(exist_ok=True)
    page = open_page(browser, app_url)
    open_example(page, 0)
    page.click("button[role=tab]:has-text('Classroom')")
    replay = "document.querySelector('#rstar-replay-view .rstar-tree')"
    page.wait_for_function(f"() => {replay}.offsetWidth > 0 && {replay}.data")
    page.evaluate(f"() => window.Plotly.relayout({replay}, {{'xaxis.range': [0, 2]}})")  # the user zooms in
    page.click("#rstar-play")
    page.wait_for_function("() => /search done/.test(document.querySelector('#rstar-replay-caption').innerText)",
                           timeout=300_000)
    # the figure was redrawn many times while playing; the zoom survived (uirevision)
    assert page.evaluate(f"() => {replay}.layout.xaxis.range") == [0, 2]
    page.check("#rstar-projector input")
    assert "rstar-projector" in page.evaluate("document.body.className")
    assert not page.is_visible("#rstar-gallery")  # teacher controls are hidden
    for _ in range(2):
        before = page.inner_text("#rstar-class-md")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("(t) => document.querySelector('#rstar-class-md').innerText !== t",
                               arg=before, timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "projector.png"))
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.body.classList.contains('rstar-projector')")
    page.close()
