"""`autoresearch serve` in a real browser: the distribution's headless Chromium opens the page and shows the run.

The test plays the loop: it holds the run's lock and writes to its ledger, so the served UI is the live one
(with controls, as `serve` runs by default). Chromium is driven through the DevTools protocol (aiohttp's
websocket client; tests/browser_support.py). It checks what a person at the browser would:

- the terminal on the page shows the run: its tag, its trial count, the running trial, the best val_bpb;
- a screenshot shows that screen: many colours, and the cells' backgrounds where the terminal says they are;
- the page is live: a trial the loop finishes appears on it, and a steering message typed into the page
  reaches the run's ledger.

Skipped, saying why, where no Chromium can be started (`apt-get install chromium`; .ci/run installs it).
Screenshots are left in the test's tmp_path (serve.png, and failure.png when it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from supervisor.core.paths import RunPaths
from supervisor.core.types import RunState
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from tests.browser_support import (
    BrowserUnavailable,
    Chromium,
    DevToolsPage,
    cells_drawn,
    end_process_group,
    find_chromium,
    png_colours,
    xterm_backgrounds,
    xterm_text,
)
from tests.loop_support import PROJECT
from tests.tui_support import synthetic_ledger

pytest.importorskip("textual_serve")  # the `serve` extra; a dev dependency too

pytestmark = pytest.mark.timeout(300)

TAG = "night"
RUNNING = "gradient clipping at 1.0"  # the running trial synthetic_ledger(running=True) leaves
FINISHED_VAL = 1.071234  # the val_bpb the test gives that trial when it "finishes" it
STEER = "try a wider MLP next"
WAIT_S = 120.0  # every wait polls; the limit is only for a machine that never gets there


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """A headless Chromium with its DevTools port open; skips the test where none can be started."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the browser test of "
                    "`autoresearch serve` needs one")
    try:
        browser = Chromium(executable, tmp_path / "chromium-profile")
    except BrowserUnavailable as exc:
        pytest.skip(f"Chromium cannot be used here: {exc}")
    try:
        browser.wait_for_devtools(timeout_s=WAIT_S)
    except BrowserUnavailable as exc:
        browser.close()
        pytest.skip(f"Chromium cannot be used here: {exc}")
    yield browser
    browser.close()


@dataclass
class ServedRun:
    url: str
    ledger: Ledger  # the loop's writer
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_run(tmp_path: Path) -> Iterator[ServedRun]:
    """A run with five trials and a sixth running, its lock held as the loop holds it, and `autoresearch serve`
    on it (loopback, a free port). Serve and the app processes it starts are ended as one process group."""
    journals = tmp_path / "journals"
    run_dir = journals / TAG
    synthetic_ledger(run_dir, trials=5, running=True)
    lock = RunLock(RunPaths(run_dir).lock)
    lock.acquire(TAG)
    ledger = Ledger(RunPaths(run_dir).ledger)
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "supervisor.cli.main", "serve", "--tag", TAG,
                                   "--journals", str(journals), "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        yield ServedRun(url=f"http://127.0.0.1:{port}/", ledger=ledger, log=log)
    finally:
        end_process_group(server)
        ledger.close()
        lock.release()


async def _wait_for_server(session: aiohttp.ClientSession, served: ServedRun) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            async with session.get(served.url) as page:
                if page.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"`autoresearch serve` did not answer on {served.url}: {served.log_tail()}")
        await asyncio.sleep(0.2)


async def _wait_for_text(page: DevToolsPage, *needles: str) -> str:
    async def probe() -> str | None:
        text = await xterm_text(page)
        return text if all(n in text for n in needles) else None

    try:
        return await page.wait_for(probe, f"the page's terminal to show {needles}", timeout_s=WAIT_S)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- the terminal shows:\n{await xterm_text(page)}") from None


def _check_screenshot(png: bytes, layout: dict, path: Path) -> None:
    """The screenshot shows a drawn screen, and it is the terminal's: its cells' colours where they should be."""
    left, top, scale = layout["left"], layout["top"], layout["scale"] or 1
    box = (int(left * scale), int(top * scale), int((left + layout["width"]) * scale),
           int((top + layout["height"]) * scale))
    colours, dominant = png_colours(png, box)
    assert colours >= 50 and dominant < 0.8, (f"the screenshot's terminal looks blank ({colours} colours, the "
                                              f"commonest covers {dominant:.0%}): see {path}")
    matched, checked, backgrounds = cells_drawn(png, layout)
    assert checked >= 200 and backgrounds >= 3, f"too few coloured cells to compare ({checked}, {backgrounds})"
    assert matched >= 0.9 * checked, (f"only {matched} of {checked} terminal cells have their background colour in "
                                      f"the screenshot: see {path}")


async def _browse(chromium: Chromium, served: ServedRun, shots: Path) -> None:
    async with aiohttp.ClientSession() as session:
        await _wait_for_server(session, served)
        page = await DevToolsPage.open(session, chromium.port)
        try:
            await _use_the_page(page, served, shots)
        except BaseException:
            print(f"serve's log:\n{served.log_tail()}")
            with contextlib.suppress(Exception):
                (shots / "failure.png").write_bytes(await page.screenshot(timeout_s=30))
                print(f"the page at the failure: {shots / 'failure.png'}")
            raise
        finally:
            await page.close()


async def _use_the_page(page: DevToolsPage, served: ServedRun, shots: Path) -> None:
    await page.call("Page.navigate", url=served.url)
    best = served.ledger.best_keep()
    assert best is not None and best.val_bpb is not None
    # The run as the loop left it: tag, trials, the one running, the best result.
    await _wait_for_text(page, TAG, "5/100 trials", RUNNING, f"{best.val_bpb:.6f}")
    await page.wait_for(lambda: page.evaluate(
        "getComputedStyle(document.querySelector('.textual-terminal')).opacity === '1'"
        " && !document.body.classList.contains('-closed')"), "the terminal to be shown", timeout_s=WAIT_S)
    layout = await xterm_backgrounds(page)
    png = await page.screenshot()
    (shots / "serve.png").write_bytes(png)
    _check_screenshot(png, layout, shots / "serve.png")

    # Live, from the run to the page: the loop finishes the running trial; the page shows it.
    running = served.ledger.trials()[-1]
    assert running.description == RUNNING
    served.ledger.finish_trial(running.id, status="keep", val_bpb=FINISHED_VAL, parent_val_bpb=best.val_bpb,
                               delta=FINISHED_VAL - best.val_bpb, flagged=False, decision="kept: better",
                               training_seconds=300.0, wall_seconds=320.0, num_steps=900)
    served.ledger.set_state(RunState.RUNNING, "the agent is choosing the next trial")
    await _wait_for_text(page, "6/100 trials", f"{FINISHED_VAL:.6f}")

    # Live, from the page to the run: keys typed into the browser steer the agent through the ledger.
    await page.evaluate("window.__autoresearchXterm.focus()")
    await page.press("s", "KeyS", 83, text="s")
    await _wait_for_text(page, f"Steer the agent of {TAG}")
    await page.call("Input.insertText", text=STEER)
    await _wait_for_text(page, STEER)
    await page.press("Enter", "Enter", 13, text="\r")

    async def steered() -> list:
        return [c for c in served.ledger.take_commands() if c.arg == STEER]

    commands = await page.wait_for(steered, "the steering message to reach the ledger", timeout_s=WAIT_S)
    assert commands[0].command == "steer"


def test_serve_shows_the_live_run_in_headless_chromium(chromium: Chromium, served_run: ServedRun,
                                                       tmp_path: Path) -> None:
    asyncio.run(_browse(chromium, served_run, tmp_path))
    assert f"serving {TAG} (with controls" in served_run.log.read_text()
