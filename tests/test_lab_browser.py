"""JupyterLab with the ctrlstack sidebar in headless Chromium (Debian's, driven by Playwright).

One server and one browser page for the module; the tests run in order as a user would:
look at the map, launch from the form, scale, insert the client snippet into a notebook and
run it, open the dashboard through the proxy, stop.  Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from tests.labserver import REPO, LabServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
NAME = "ui1"
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "source": "", "outputs": [], "execution_count": None}
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: run `make browser-deps`")
    root = tmp_path_factory.mktemp("browser")
    (root / "notebooks").mkdir()
    (root / "notebooks" / "demo.ipynb").write_text(json.dumps(NOTEBOOK))
    with LabServer(root) as server:
        yield server
        leftover = server.request("GET", "ctrlstack/api/clusters")[1]
        for c in leftover or []:
            server.request("DELETE", f"ctrlstack/api/clusters/{c['name']}")
        assert not leftover, f"clusters left running: {leftover}"


@pytest.fixture(scope="module")
def console() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(lab: LabServer, console: list[str]) -> Iterator[Page]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        pg = context.new_page()
        # The location names the resource of a "Failed to load resource" error (its text
        # does not), so the filters below can tell a known poll from a fault.
        pg.on(
            "console",
            lambda m: (
                console.append(f"{m.type}: {m.text} [{m.location.get('url', '')}]")
                if m.type == "error"
                else None
            ),
        )
        pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        pg.goto(f"{lab.base}lab/tree/demo.ipynb?token={lab.token}")
        try:
            yield pg
        finally:
            context.close()
            browser.close()


@pytest.fixture(autouse=True)
def _shot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A screenshot of the page when a test fails (test-artifacts/FAILED-<test>.png)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "page" in request.fixturenames:
        shot(request.getfixturevalue("page"), f"FAILED-{request.node.name}")


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def card(page: Page, state: str | None = None) -> Locator:
    selector = f'#ctrlstack-sidebar .ctrlstack-card[data-cluster="{NAME}"]'
    if state:
        selector += f'[data-state="{state}"]'
    return page.locator(selector)


def test_sidebar_shows_this_machines_cpus(page: Page) -> None:
    from ctrlstack.topology.discover import discover

    cells = page.locator("#ctrlstack-sidebar .ctrlstack-cpu")
    cells.first.wait_for(timeout=90_000)
    shown = sorted(int(c) for c in cells.evaluate_all("els => els.map(e => e.dataset.cpu)"))
    assert shown == sorted(discover().cpus)
    assert page.locator("#ctrlstack-sidebar .ctrlstack-package").count() == len(discover().packages)
    page.locator("#ctrlstack-sidebar .ctrlstack-launch").wait_for()
    shot(page, "01-sidebar")


def test_form_checks_fields_before_sending(page: Page, lab: LabServer) -> None:
    form = page.locator("#ctrlstack-sidebar .ctrlstack-form")
    form.locator('[data-path="workers"]').fill("0")
    form.locator(".ctrlstack-launch").click()
    error = form.locator('[data-error-for="workers"]')
    expect(error).to_contain_text(">= 1")
    assert lab.request("GET", "ctrlstack/api/clusters")[1] == []
    form.locator('[data-path="workers"]').fill("auto")


def test_launch_from_form_draws_workers_on_map(page: Page) -> None:
    form = page.locator("#ctrlstack-sidebar .ctrlstack-form")
    form.locator('[data-path="name"]').fill(NAME)
    form.locator('[data-path="workers"]').fill("1")
    form.locator('[data-path="threads"]').fill("1")
    form.locator(".ctrlstack-launch").click()
    card(page, "running").wait_for(timeout=120_000)
    owned = page.locator(f'#ctrlstack-sidebar .ctrlstack-cpu[data-owner="{NAME}"]')
    owned.first.wait_for(timeout=30_000)
    assert owned.count() == 1
    expect(card(page)).to_have_attribute("data-connected", "1")
    shot(page, "02-launched")


def test_server_side_error_shown_next_to_field(page: Page, console: list[str]) -> None:
    form = page.locator("#ctrlstack-sidebar .ctrlstack-form")
    form.locator('[data-path="name"]').fill(NAME)  # taken: 409 from the server
    form.locator(".ctrlstack-launch").click()
    expect(form.locator('[data-error-for="name"]')).to_contain_text("already exists")
    form.locator('[data-path="name"]').fill("")
    # Chromium itself logs every non-2xx fetch; this one was provoked on purpose.
    expected = "status of 409 (Conflict)"
    assert sum(expected in line for line in console) == 1
    console[:] = [line for line in console if expected not in line]


def test_scale_changes_worker_count(page: Page) -> None:
    c = card(page, "running")
    scale_n = c.locator(".ctrlstack-scale-n")
    scale_n.fill("2")
    # Focus elsewhere, then statuses arrive (polls every 1-5 s): what was typed must stay.
    scale_n.blur()
    page.wait_for_timeout(6_000)
    expect(scale_n).to_have_value("2")
    c.locator(".ctrlstack-scale").click()
    expect(card(page)).to_have_attribute("data-connected", "2", timeout=60_000)
    owned = page.locator(f'#ctrlstack-sidebar .ctrlstack-cpu[data-owner="{NAME}"]')
    expect(owned).to_have_count(2, timeout=30_000)
    expect(c.locator(".ctrlstack-worker")).to_have_count(2)
    shot(page, "03-scaled")


def test_inserted_snippet_connects(page: Page) -> None:
    card(page, "running").locator(".ctrlstack-insert").click()
    cell = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    expect(cell.locator(".cm-content")).to_contain_text(f'ctrlstack.connect("{NAME}")')
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-Notebook .jp-OutputArea-output")
    expect(output.first).to_contain_text("tls://", timeout=120_000)
    expect(output.first).not_to_contain_text("Error")
    shot(page, "04-snippet")


def test_dashboard_opens_through_proxy(page: Page, lab: LabServer) -> None:
    link = card(page, "running").locator(".ctrlstack-dashboard")
    href = link.get_attribute("href")
    assert href is not None
    assert "/proxy/" in href
    assert href.startswith(lab.base)
    with page.context.expect_page() as opened:
        link.click()
    dash = opened.value
    dash.wait_for_load_state()
    assert "/proxy/" in dash.url
    # Bokeh draws its plots only after its websocket (also proxied) delivered the document.
    dash.locator("canvas").first.wait_for(timeout=60_000)
    dash.screenshot(path=str(ARTIFACTS / "05-dashboard.png"))
    dash.close()


def test_submitted_runs_show_in_the_sidebar(page: Page, lab: LabServer) -> None:
    """A run record (as ``ctrlstack submit`` writes it) appears with state, input and output."""
    from ctrlstack.runs.record import RunRecord, runs_dir, save

    run = RunRecord(
        id="20261205-120000-abcd",
        kind="notebook",
        input=str(lab.notebook_dir / "demo.ipynb"),
        output_dir=str(lab.notebook_dir / "runs"),
        profile="local",
        mode="local",
        state="failed",
        error="cell 2: ZeroDivisionError",
    )
    save(run, lab.state_dir)
    try:
        row = page.locator(f'#ctrlstack-sidebar .ctrlstack-run[data-run="{run.id}"]')
        expect(row).to_have_attribute("data-state", "failed", timeout=30_000)
        expect(row.locator(".ctrlstack-run-input")).to_have_text("demo.ipynb")
        expect(row.locator(".ctrlstack-run-output")).to_have_attribute("title", run.output)
        expect(row).to_contain_text("ZeroDivisionError")
    finally:
        (runs_dir(lab.state_dir) / f"{run.id}.json").unlink()


def test_dask_labextension_panes_show_the_cluster(page: Page, lab: LabServer) -> None:
    """The card's "Dask panes" points dask-labextension at the proxied dashboard and opens them."""
    button = card(page, "running").locator(".ctrlstack-dask-panes")
    expect(button).to_be_visible()
    href = card(page, "running").locator(".ctrlstack-dashboard").get_attribute("href")
    assert href is not None
    proxied = href.removesuffix("status")
    button.click()
    panes = page.locator(".dask-DaskDashboard-widget iframe")
    panes.first.wait_for(timeout=60_000)
    srcs = panes.evaluate_all("els => els.map(e => e.getAttribute('src'))")
    assert srcs
    assert all(src.startswith(proxied + "individual-") for src in srcs), srcs
    # dask-labextension's own URL box now holds the ctrlstack cluster's proxied dashboard.
    box = page.locator("#dask-dashboard-launcher input").first
    assert proxied.rstrip("/") in (box.input_value() or "")
    # The pane draws the cluster's plot (Bokeh canvas after its proxied websocket delivered it).
    task_stream = page.frame_locator('.dask-DaskDashboard-widget iframe[src*="task-stream"]')
    task_stream.locator("canvas").first.wait_for(timeout=60_000)
    shot(page, "05b-dask-panes")
    # Close the panes: the next test stops the cluster behind them.
    tabs = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab[data-id^="dask-dashboard-"]')
    while tabs.count():
        tabs.first.locator(".lm-TabBar-tabCloseIcon").click()
    expect(panes).to_have_count(0)


def test_stop_removes_the_card(page: Page, lab: LabServer, console: list[str]) -> None:
    card(page, "running").locator(".ctrlstack-stop").click()
    expect(card(page)).to_have_count(0, timeout=60_000)
    expect(page.locator("#ctrlstack-sidebar .ctrlstack-cpu.ctrlstack-mod-owned")).to_have_count(0)
    assert lab.request("GET", "ctrlstack/api/clusters")[1] == []
    shot(page, "06-stopped")
    # dask-labextension keeps checking the URL it was pointed at (now without a dashboard
    # behind the proxy); Chromium logs those failed fetches.  Anything else is a fault.
    console[:] = [line for line in console if "individual-plots.json" not in line]
    assert console == [], "browser console errors:\n" + "\n".join(console)
