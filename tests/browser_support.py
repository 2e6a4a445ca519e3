"""A real headless Chromium for the browser tests, driven through the DevTools protocol with aiohttp.

- `find_chromium()`: the distribution's Chromium (`chromium` on PATH, or /usr/bin/chromium), or None.
- `Chromium`: starts it headless on an empty profile with a DevTools port on loopback; `close()` ends its
  whole process group. `BrowserUnavailable` when it cannot start (the tests skip, saying why).
- `DevToolsPage`: one tab: `call` a DevTools method, `evaluate` JavaScript, `wait_for` a condition, and
  take a PNG screenshot.
- xterm.js, the terminal textual-serve draws the app in (on a canvas): `find_xterm` reaches its Terminal
  object from the DevTools heap (textual-serve keeps it in a closure, not on `window`), `xterm_text` reads
  its screen buffer, `xterm_backgrounds` lists the blank cells with a true-colour background.
- `png_colours(png, box)`: how many distinct colours a region of a screenshot has, and the share of its
  most common one; `cells_drawn(png, layout)`: how many of those cells have their colour in the screenshot
  (Pillow, which matplotlib already brings).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

# Without the background-networking switches Chromium keeps trying to reach Google's services, which a closed
# network refuses; --disable-gpu keeps it on the software rasteriser that every machine has.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                  # Every name but loopback fails at once (textual-serve's page asks Google for a font; where
                  # no DNS answers, that stylesheet would hold the page's scripts back until it times out).
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


class BrowserUnavailable(RuntimeError):
    """No Chromium here, or it would not start: the browser tests skip with this message."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def end_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session=True), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; anything else left in its group (children) gets the same signal once more.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


class Chromium:
    """A headless Chromium on a fresh profile in `profile_dir`, with its DevTools endpoint on loopback."""

    def __init__(self, executable: str, profile_dir: Path, *, width: int = 1400, height: int = 900) -> None:
        self.profile_dir = profile_dir
        profile_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = profile_dir.parent / f"{profile_dir.name}.log"
        self._log = open(self.log_path, "wb")  # closed in close()
        cmd = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
               "about:blank"]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise BrowserUnavailable(f"{executable} would not start: {exc}") from exc
        self.port = 0

    def wait_for_devtools(self, timeout_s: float = 60.0) -> int:
        """The DevTools port, once Chromium has written it to DevToolsActivePort."""
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserUnavailable(f"chromium exited with {self.proc.returncode} before opening its DevTools "
                                         f"port: {self.log_tail()}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].strip().isdigit():
                self.port = int(lines[0])
                return self.port
            time.sleep(0.1)
        raise BrowserUnavailable(f"chromium did not open its DevTools port in {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:].strip() or "(it wrote nothing)"

    def close(self) -> None:
        end_process_group(self.proc)
        self._log.close()


class DevToolsPage:
    """One tab of the browser, over its DevTools websocket."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session, self._ws = session, ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, devtools_port: int) -> DevToolsPage:
        async with session.put(f"http://127.0.0.1:{devtools_port}/json/new?about:blank") as resp:
            resp.raise_for_status()
            target = await resp.json(content_type=None)
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return cls(session, ws)

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.json()
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def call(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, probe: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 90.0,
                       every_s: float = 0.25) -> Any:
        """Poll `probe` until it returns something true; TimeoutError naming `what` (and the last value)."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(every_s)
        raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; last seen: {value!r}"[:4000])

    async def press(self, key: str, code: str, key_code: int, text: str = "") -> None:
        """One key, down and up, as a person's keyboard sends it to the focused element."""
        await self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, text=text,
                        windowsVirtualKeyCode=key_code)
        await self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=key_code)

    async def screenshot(self, timeout_s: float = 60.0) -> bytes:
        result = await self.call("Page.captureScreenshot", timeout_s, format="png")
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()


# The object textual-serve builds per terminal element holds `terminal` (the xterm.js Terminal) and
# `websocket_url`; the first one found is kept on window for the later reads.
_FIND_XTERM = """function () {
    const found = this.find(o => o && o.terminal && o.terminal.buffer && o.websocket_url !== undefined);
    if (found) { window.__autoresearchXterm = found.terminal; }
    return Boolean(found);
}"""

_XTERM_TEXT = """(() => {
    const term = window.__autoresearchXterm, buffer = term.buffer.active, rows = [];
    for (let y = 0; y < term.rows; y++) {
        const line = buffer.getLine(buffer.viewportY + y);
        rows.push(line ? line.translateToString(true) : "");
    }
    return rows.join("\\n");
})()"""

_XTERM_BACKGROUNDS = """(() => {
    const term = window.__autoresearchXterm, buffer = term.buffer.active;
    const box = term.element.querySelector(".xterm-screen").getBoundingClientRect();
    const cells = [];
    for (let y = 0; y < term.rows; y++) {
        const line = buffer.getLine(buffer.viewportY + y);
        for (let x = 0; line && x < term.cols; x++) {
            const cell = line.getCell(x);
            if (cell && cell.isBgRGB() && !cell.isInverse() && cell.getChars().trim() === "") {
                cells.push([x, y, cell.getBgColor()]);
            }
        }
    }
    return {left: box.left, top: box.top, width: box.width, height: box.height, cols: term.cols,
            rows: term.rows, cell_w: box.width / term.cols, cell_h: box.height / term.rows,
            scale: window.devicePixelRatio, cells: cells};
})()"""


async def find_xterm(page: DevToolsPage) -> bool:
    """Whether the page has an xterm.js terminal of textual-serve's; keeps it for `xterm_text`."""
    if await page.evaluate("Boolean(window.__autoresearchXterm)"):
        return True
    prototype = (await page.call("Runtime.evaluate", expression="Object.prototype"))["result"]["objectId"]
    objects = (await page.call("Runtime.queryObjects", prototypeObjectId=prototype))["objects"]["objectId"]
    try:
        result = await page.call("Runtime.callFunctionOn", objectId=objects, functionDeclaration=_FIND_XTERM,
                                 returnByValue=True)
    finally:
        await page.call("Runtime.releaseObject", objectId=objects)
    return bool(result["result"].get("value"))


async def xterm_text(page: DevToolsPage) -> str:
    """The terminal's screen as text, one line per row (what xterm.js has drawn or is about to)."""
    return await page.evaluate(_XTERM_TEXT) if await find_xterm(page) else ""


async def xterm_backgrounds(page: DevToolsPage) -> dict[str, Any]:
    """Where the cells are on the page, and every blank cell with a true-colour background: [col, row, rgb]."""
    return await page.evaluate(_XTERM_BACKGROUNDS)


def png_colours(png: bytes, box: tuple[int, int, int, int] | None = None) -> tuple[int, float]:
    """(distinct colours, share of the most common colour) of the PNG, or of `box` (left, top, right, bottom)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if box is not None:
        image = image.crop(box)
    counts = image.getcolors(maxcolors=1 << 24) or []
    total = image.width * image.height
    return len(counts), (max(n for n, _ in counts) / total if counts and total else 1.0)


def cells_drawn(png: bytes, layout: dict[str, Any], tolerance: int = 6) -> tuple[int, int, int]:
    """(cells whose centre pixel has their background colour, cells checked, distinct backgrounds checked)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = layout["scale"] or 1
    matched = checked = 0
    for col, row, rgb in layout["cells"]:
        x = int((layout["left"] + (col + 0.5) * layout["cell_w"]) * scale)
        y = int((layout["top"] + (row + 0.5) * layout["cell_h"]) * scale)
        if not (0 <= x < image.width and 0 <= y < image.height):
            continue
        want = ((rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF)
        got = image.getpixel((x, y))
        checked += 1
        matched += all(abs(a - b) <= tolerance for a, b in zip(want, got, strict=True))
    return matched, checked, len({rgb for _, _, rgb in layout["cells"]})
