"""What the terminal UI costs: CPU while a trial streams metrics; on a long night, the time to open `review`,
to scroll its table and to open a trial, and the memory of the review process.

    python benchmarks/ui_cost.py [--seconds 10] [--size 160x48] [--trials 1000] [--points 600]
                                 [--scroll-rounds 3] [--settle 5] [--quick] [--json]

Part 1, UI CPU. The real app (`autoresearch attach`) runs in a pseudo-terminal of the given size, as a person
would run it, while another thread of this script plays the loop: it holds the run's lock and appends metric
rows to the running trial's ledger once a second (the loop's flush interval), at a given number of training
steps per second. The app's own CPU time (user + system, from /proc) over the window is reported as a share
of one core. Rates: the real trainer's step rate on this machine (measured here by running
trainer/train.py for 10 s on the CPU, unless --trainer-rate is given), 20 steps/s (a small model on a GPU)
and 200 steps/s (a stress rate). Baselines measured in the same run: a bare Textual app (a Static and a
Footer) in the same terminal, and our app on a run where nothing happens.

Part 2, review. A synthetic night of --trials trials, each with a full metric curve of --points rows, a
diff, a journal entry and turns, written through the Ledger API. Reported: opening the ledger and computing
`run_status` (the data the screen needs; the baseline), the in-process time from creating the app to the
experiments table holding every trial, a cold `autoresearch review` process until its first frame shows
the run, and opening the journal browser and one trial.

Part 3, scrolling the experiments table of that night, in-process through Textual's pilot: jump to the first
row (ctrl+home), page down to the last row, page back up, jump to the last row (ctrl+end; with a row cursor
Textual binds `end` to scrolling to the rightmost column), --scroll-rounds times. Each keypress is timed from
the press until `pilot.pause()` returns and the detail pane shows the highlighted trial: wall time (which
includes the pilot's own idle-detection sleeps, about 3 x 20 ms) and this process's CPU time (all threads, so
the detail pane's ledger read counts). Baseline in the same run: the same keys on a bare Textual `DataTable`
of the same size holding the same rows and columns.

Part 4, memory: resident memory (VmRSS, and the peak VmHWM, from /proc/PID/status) of the cold `autoresearch
review` process of part 2 when its first frame shows, --settle seconds later, and after paging through the
whole table in the terminal; baseline: the bare Textual app of part 1 in the same pseudo-terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.run.status import run_status  # noqa: E402
from supervisor.store.ledger import Ledger  # noqa: E402
from supervisor.store.lock import RunLock  # noqa: E402
from tests.tui_support import synthetic_ledger  # noqa: E402

if TYPE_CHECKING:
    from textual.pilot import Pilot
    from textual.widgets import DataTable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[P\]X^_].*?(?:\x1b\\|\x07)|\x1b[@-_]", re.S)

BARE_APP = """
from textual.app import App
from textual.widgets import Footer, Static
class Bare(App):
    BINDINGS = [("q", "quit", "Quit")]
    def compose(self):
        yield Static("a bare Textual app: the floor of any Textual UI")
        yield Footer()
Bare().run()
"""


# ---- a process in a pseudo-terminal ----------------------------------------------------------------------------
class PtyProcess:
    def __init__(self, cmd: list[str], cols: int, rows: int) -> None:
        import fcntl
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     start_new_session=True, cwd=ROOT)
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.output += data

    def text(self) -> str:
        with self.lock:
            return ANSI.sub(b"", bytes(self.output)).decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> float:
        """Seconds from the start until `pattern` (a regex over the text without escapes) was on screen."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if regex.search(self.text()):
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{self.text()[-2000:]}")
            time.sleep(0.01)
        raise TimeoutError(f"{pattern!r} never appeared")

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def forget_output(self) -> None:
        """Drop what was drawn so far, so that `wait_for` sees only what is drawn from now on."""
        with self.lock:
            self.output.clear()

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now (VmRSS) and its peak so far (VmHWM), in MiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                      if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


# ---- the loop's side: a run with a trial streaming metrics -----------------------------------------------------
class StreamingTrial:
    """Holds the run's lock and appends metric rows once a second, as the loop does for a running trial."""

    def __init__(self, run_dir: Path, steps_per_s: float) -> None:
        self.run_dir = run_dir
        self.steps_per_s = steps_per_s
        self.stop_event = threading.Event()
        self.lock = RunLock(run_dir / "run.lock")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StreamingTrial:
        self.lock.acquire(self.run_dir.name)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.lock.release()

    def _run(self) -> None:
        ledger = Ledger(self.run_dir / "ledger.sqlite")
        trial = ledger.running_trials()[-1]
        seq = ledger.metric_count(trial.id)
        step, elapsed, carry = seq, 0.0, 0.0
        try:
            while not self.stop_event.wait(1.0):
                carry += self.steps_per_s
                n, carry = int(carry), carry - int(carry)
                rows = []
                for _ in range(n):
                    step += 1
                    elapsed += 1.0 / max(self.steps_per_s, 1e-9)
                    rows.append({"step": step, "elapsed": elapsed, "loss": 3.0 + 5.0 / (1 + step / 50), "lr": 0.02,
                                 "tokens_per_s": 500_000.0, "mfu": 40.0, "vram_mb": 40_000.0})
                ledger.add_metrics(trial.id, seq, rows)
                seq += len(rows)
        finally:
            ledger.close()


def measure_cpu(cmd: list[str], size: tuple[int, int], seconds: float, warmup: float,
                ready_pattern: str, run: StreamingTrial | None = None) -> float:
    """Share of one core used by the app over `seconds`, after it drew its first frame and `warmup` passed."""
    app = PtyProcess(cmd, *size)
    try:
        app.wait_for(ready_pattern, timeout=120)
        if run is not None:
            run.__enter__()
        try:
            time.sleep(warmup)
            before, start = app.cpu_seconds(), time.perf_counter()
            time.sleep(seconds)
            used, wall = app.cpu_seconds() - before, time.perf_counter() - start
        finally:
            if run is not None:
                run.__exit__(None, None, None)
        return 100.0 * used / wall
    finally:
        app.stop()


def trainer_rate(cache: Path | None) -> float:
    """Metric lines per second of the real trainer on this machine's CPU (10 s of training)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if cache is None:
            cache = tmp / "cache"
            subprocess.run([sys.executable, str(ROOT / "trainer/prepare.py"), "--source", "embedded", "--profile",
                            "small", "--max-mb", "3", "--cache", str(cache)], check=True, capture_output=True)
        metrics = tmp / "metrics.jsonl"
        env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_TIME_BUDGET": "10",
               "AUTORESEARCH_DEVICE": "cpu", "AUTORESEARCH_METRICS": str(metrics)}
        subprocess.run([sys.executable, str(ROOT / "trainer/train.py")], env=env, check=True, capture_output=True)
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        return len(rows) / max(rows[-1]["elapsed"], 1e-9)


# ---- part 2: review on a long night -------------------------------------------------------------------------------
async def table_filled(app: Any, pilot: Pilot, n: int) -> None:
    """Wait until review's experiments table holds all `n` trials and the screen has settled."""
    from supervisor.tui.widgets import ExperimentsTable

    while not (app.view.tag and app.screen.query(ExperimentsTable)
               and app.screen.query_one(ExperimentsTable).row_count == n):
        await pilot.pause(0.01)
    await pilot.pause()


def review_timings(run_dir: Path, size: tuple[int, int]) -> dict[str, float]:
    from supervisor.tui.app import SupervisorApp
    from supervisor.tui.screens import JournalScreen, TrialScreen

    out: dict[str, float] = {}
    start = time.perf_counter()
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    out["open ledger (integrity check)"] = time.perf_counter() - start
    start = time.perf_counter()
    status = run_status(ledger, run_dir / "run.lock")
    out["run_status (baseline: the data alone)"] = time.perf_counter() - start
    n = len(status["trials"])

    async def drive() -> None:
        t0 = time.perf_counter()
        app = SupervisorApp(ledger, run_dir, review=True)
        async with app.run_test(size=size) as pilot:
            await table_filled(app, pilot, n)
            out["review in-process: app created -> table holds every trial"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            await pilot.press("j")
            while not (isinstance(app.screen, JournalScreen) and app.screen.items):
                await pilot.pause(0.01)
            await pilot.pause()
            out["journal browser: key -> every entry listed"] = time.perf_counter() - t1
            await pilot.press("escape")
            await pilot.pause()
            t2 = time.perf_counter()
            app.open_trial(n // 2)
            while not (isinstance(app.screen, TrialScreen) and app.screen.trial is not None):
                await pilot.pause(0.01)
            await pilot.pause()
            out["trial screen: open -> diff, log, curve, journal shown"] = time.perf_counter() - t2

    asyncio.run(drive())
    ledger.close()
    return out


# ---- part 3: scrolling the experiments table ---------------------------------------------------------------------
JUMP_TOP, PAGE_DOWN, PAGE_UP, JUMP_END = "ctrl+home", "pagedown", "pageup", "ctrl+end"
SCROLL_CASES = {
    JUMP_TOP: "ctrl+home: jump to the first row",
    PAGE_DOWN: "pagedown: page by page to the last row",
    PAGE_UP: "pageup: page by page back to the first row",
    JUMP_END: "ctrl+end: jump to the last row",
}
Samples = dict[str, list[tuple[float, float]]]  # key -> (wall s, CPU s) of each press


async def timed_press(pilot: Pilot, key: str, caught_up: Callable[[], bool]) -> tuple[float, float]:
    """Wall and CPU seconds from pressing `key` until the screen has refreshed and `caught_up()` holds."""
    wall, cpu = time.perf_counter(), time.process_time()
    await pilot.press(key)
    await pilot.pause()
    deadline = time.monotonic() + 30
    while not caught_up():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the screen never caught up after {key!r}")
        await pilot.pause(0.002)
    return time.perf_counter() - wall, time.process_time() - cpu


async def scroll_through(pilot: Pilot, table: DataTable, rounds: int, caught_up: Callable[[], bool]) -> Samples:
    """Jump to the top, page down to the last row, page back up, jump to the last row; `rounds` times."""
    samples: Samples = {key: [] for key in SCROLL_CASES}
    last = table.row_count - 1
    table.move_cursor(row=last)  # both tables start where review opens: on the newest trial
    await pilot.pause()
    while not caught_up():
        await pilot.pause(0.01)
    for _round in range(rounds):
        for key, target in ((JUMP_TOP, 0), (PAGE_DOWN, last), (PAGE_UP, 0), (JUMP_END, last)):
            for _press in range(table.row_count + 1):  # a bound: a key that stopped moving the cursor ends the test
                samples[key].append(await timed_press(pilot, key, caught_up))
                if table.cursor_row == target or key in (JUMP_TOP, JUMP_END):
                    break
            if table.cursor_row != target:
                raise RuntimeError(f"{key!r} left the cursor on row {table.cursor_row}, not {target}")
    return samples


HOLD_RATE_HZ = 30.0  # a terminal's key autorepeat


async def hold_pagedown(pilot: Pilot, table: DataTable, caught_up: Callable[[], bool]) -> dict[str, float]:
    """pagedown from the first row to the last at the autorepeat rate, as a person holding the key down: CPU
    per press, and the lag from the last press until the screen has caught up."""
    table.move_cursor(row=0)
    await pilot.pause()
    while not caught_up():
        await pilot.pause(0.01)
    presses = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while table.cursor_row < table.row_count - 1 and presses <= table.row_count:
        table.action_page_down()  # what the key's binding runs; the pilot's own waits would cap the rate
        presses += 1
        await asyncio.sleep(1 / HOLD_RATE_HZ)
    released = time.perf_counter()
    while not caught_up():
        await pilot.pause(0.002)
    await pilot.pause()
    end = time.perf_counter()
    return {"presses": presses, "seconds": end - wall, "lag_ms": (end - released) * 1000,
            "cpu_per_press_ms": (time.process_time() - cpu) / max(presses, 1) * 1000}


def press_stats(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls, cpus = [w * 1000 for w, _ in samples], [c * 1000 for _, c in samples]
    return {"presses": len(samples), "wall_mean_ms": mean(walls), "wall_max_ms": max(walls),
            "cpu_mean_ms": mean(cpus), "cpu_max_ms": max(cpus)}


def scroll_timings(run_dir: Path, size: tuple[int, int], rounds: int) -> dict[str, Any]:
    """Per-keypress latency of scrolling review's experiments table, and of a bare DataTable with its rows."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from supervisor.tui.app import SupervisorApp
    from supervisor.tui.widgets import ExperimentsTable

    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    n = len(run_status(ledger, run_dir / "run.lock")["trials"])
    ours: Samples = {}
    bare: Samples = {}
    held: dict[str, dict[str, float]] = {}
    shape: dict[str, Any] = {}

    async def drive_ours() -> None:
        app = SupervisorApp(ledger, run_dir, review=True)
        async with app.run_test(size=size) as pilot:
            await table_filled(app, pilot, n)
            screen = app.screen
            table = screen.query_one(ExperimentsTable)
            detail = screen.query_one("#detail")

            def caught_up() -> bool:
                # On a wide terminal every highlighted row loads its diff into the detail pane (in a thread);
                # the keypress is done when that pane shows the highlighted trial.
                if not screen.has_class("-wide"):
                    return True
                return str(detail.border_title or "").startswith(f"trial {table.selected_trial_id()} ")

            ours.update(await scroll_through(pilot, table, rounds, caught_up))
            held["ours"] = await hold_pagedown(pilot, table, caught_up)
            # What the baseline needs to hold the same rows in a table of the same size.
            shape["columns"] = [(str(c.key.value), c.width) for c in table.ordered_columns]
            shape["rows"] = [(str(r.key.value), table.get_row(r.key)) for r in table.ordered_rows]
            shape["size"] = table.outer_size
            shape["page_rows"] = table.scrollable_content_region.height - table.header_height

    class BareTable(App[None]):
        def compose(self) -> ComposeResult:
            table = DataTable(cursor_type="row", zebra_stripes=True)
            table.styles.width, table.styles.height = shape["size"].width, shape["size"].height
            yield table

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            for name, width in shape["columns"]:
                table.add_column(name, key=name, width=width)
            for key, cells in shape["rows"]:
                table.add_row(*cells, key=key)
            table.focus()

    async def drive_bare() -> None:
        app = BareTable()
        async with app.run_test(size=size) as pilot:
            table = app.query_one(DataTable)
            while table.row_count < n:
                await pilot.pause(0.01)
            await pilot.pause()
            bare.update(await scroll_through(pilot, table, rounds, lambda: True))
            held["bare"] = await hold_pagedown(pilot, table, lambda: True)

    asyncio.run(drive_ours())
    ledger.close()
    asyncio.run(drive_bare())
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for key, label in SCROLL_CASES.items():
        cases[label] = {"ours": press_stats(ours[key]), "bare": press_stats(bare[key])}
    cases["all keypresses"] = {"ours": press_stats([x for v in ours.values() for x in v]),
                               "bare": press_stats([x for v in bare.values() for x in v])}
    return {"rows": n, "rounds": rounds, "table_size": f"{shape['size'].width}x{shape['size'].height}",
            "page_rows": shape["page_rows"], "cases": cases, "held": held}


# ---- part 4: memory ------------------------------------------------------------------------------------------------
PTY_KEYS = {JUMP_TOP: b"\x1b[1;5H", PAGE_DOWN: b"\x1b[6~"}  # what an xterm sends


def page_through(app: PtyProcess, trials: int, page_rows: int) -> bool:
    """In the terminal: jump to the first trial, then page down to the last. True if the last one was shown."""
    app.forget_output()
    app.send(PTY_KEYS[JUMP_TOP])
    try:
        app.wait_for(r"trial 1 · diff", timeout=30)
    except TimeoutError:
        return False  # a narrow terminal has no detail pane to tell where the cursor is
    app.forget_output()
    for _ in range(-(-trials // max(page_rows, 1)) + 1):
        app.send(PTY_KEYS[PAGE_DOWN])
        time.sleep(0.05)  # about a person holding the key down
    try:
        app.wait_for(rf"trial {trials} · diff", timeout=30)
    except TimeoutError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per CPU row")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--size", default="160x48", help="terminal COLSxROWS (default 160x48)")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--points", type=int, default=600, help="metric rows per trial (600: 300 s at 2 steps/s)")
    parser.add_argument("--trainer-rate", type=float, help="steps/s of the real trainer (default: measure it)")
    parser.add_argument("--cache", help="a prepared data cache for measuring the trainer's rate")
    parser.add_argument("--scroll-rounds", type=int, default=3, help="times the table is scrolled down and up")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the first frame to read memory")
    parser.add_argument("--quick", action="store_true", help="5 s windows, 200 trials, one scroll: a smoke run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.trials, args.warmup, args.scroll_rounds, args.settle = 5.0, 200, 2.0, 1, 2.0
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    size = (cols, rows)
    results: dict[str, object] = {"size": args.size}
    work = Path(tempfile.mkdtemp(prefix="ui-cost-"))
    try:
        rate = args.trainer_rate or trainer_rate(Path(args.cache) if args.cache else None)
        results["trainer_steps_per_s"] = rate
        journals = work / "journals"
        live_dir = journals / "live"
        synthetic_ledger(live_dir, trials=40, metric_points=args.points, running=True)
        attach = [sys.executable, "-m", "supervisor.cli.main", "attach", "--tag", "live", "--journals", str(journals)]
        bare = [sys.executable, "-c", BARE_APP]
        cpu: list[tuple[str, float]] = []
        cpu.append(("baseline: bare Textual app, idle", measure_cpu(bare, size, args.seconds, args.warmup, "bare")))
        cpu.append(("our app, run not moving (no writes)",
                    measure_cpu(attach, size, args.seconds, args.warmup, r"\d+/\d+ trials")))
        for label, steps in ((f"streaming at the trainer's rate here ({rate:.1f} steps/s)", rate),
                             ("streaming at 20 steps/s (small model on a GPU)", 20.0),
                             ("streaming at 200 steps/s (stress)", 200.0)):
            cpu.append((label, measure_cpu(attach, size, args.seconds, args.warmup, r"\d+/\d+ trials",
                                           StreamingTrial(live_dir, steps))))
        results["cpu_percent_of_one_core"] = dict(cpu)

        big_dir = journals / "night"
        t = time.perf_counter()
        synthetic_ledger(big_dir, trials=args.trials, metric_points=args.points, running=False)
        build = time.perf_counter() - t
        ledger_mb = (big_dir / "ledger.sqlite").stat().st_size / 2**20
        timings = review_timings(big_dir, size)
        scroll = scroll_timings(big_dir, size, args.scroll_rounds)
        memory: dict[str, dict[str, float]] = {}
        cold = PtyProcess([sys.executable, "-m", "supervisor.cli.main", "review", "--tag", "night", "--journals",
                           str(journals)], *size)
        try:
            timings["review cold process: start -> first frame with the run"] = cold.wait_for(
                rf"{args.trials}/\d+\s*trials", timeout=120)
            memory["review: first frame"] = cold.memory_mb()
            time.sleep(args.settle)
            memory[f"review: {args.settle:g} s later"] = cold.memory_mb()
            paged = page_through(cold, args.trials, scroll["page_rows"])
            time.sleep(1.0)
            memory["review: after paging through every row" + ("" if paged else " (not confirmed)")] = (
                cold.memory_mb())
        finally:
            cold.stop()
        bare_app = PtyProcess(bare, *size)
        try:
            bare_app.wait_for("bare")
            memory["baseline: bare Textual app, first frame"] = bare_app.memory_mb()
            time.sleep(args.settle)
            memory[f"baseline: bare Textual app, {args.settle:g} s later"] = bare_app.memory_mb()
        finally:
            bare_app.stop()
        results["review"] = timings
        results["scroll"] = scroll
        results["memory_mib"] = memory
        results["ledger"] = {"trials": args.trials, "metric_rows": args.trials * args.points,
                             "size_mb": round(ledger_mb, 1), "build_s": round(build, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"UI CPU, terminal {args.size}, {args.seconds:g} s windows (share of one core; this machine has "
          f"{os.cpu_count()} cores)\n")
    print("| case | CPU % of one core |\n|---|---|")
    for label, value in results["cpu_percent_of_one_core"].items():  # type: ignore[union-attr]
        print(f"| {label} | {value:.1f} |")
    led = results["ledger"]
    print(f"\nreview on {led['trials']:,} trials, {led['metric_rows']:,} metric rows, ledger "  # type: ignore[index]
          f"{led['size_mb']} MB (built in {led['build_s']} s)\n")  # type: ignore[index]
    print("| step | seconds |\n|---|---|")
    for label, value in results["review"].items():  # type: ignore[union-attr]
        print(f"| {label} | {value:.3f} |")
    print_scroll(results["scroll"])  # type: ignore[arg-type]
    print_memory(results["memory_mib"], led["size_mb"])  # type: ignore[arg-type, index]
    return 0


def print_scroll(scroll: dict[str, Any]) -> None:
    print(f"\nscrolling the experiments table ({scroll['rows']:,} rows, table {scroll['table_size']} cells, "
          f"{scroll['page_rows']} rows a page, {scroll['rounds']} rounds): per keypress, ms, mean / worst; wall includes the pilot's idle waits, "
          f"CPU is this process's (all threads)\n")
    print("| keys | presses | wall: ours | wall: bare DataTable | CPU: ours | CPU: bare DataTable "
          "| CPU ratio (means) |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, pair in scroll["cases"].items():
        ours, bare = pair["ours"], pair["bare"]
        presses = str(ours["presses"]) if ours["presses"] == bare["presses"] else f"{ours['presses']} / {bare['presses']}"
        print(f"| {label} | {presses} | {ours['wall_mean_ms']:.1f} / {ours['wall_max_ms']:.1f} "
              f"| {bare['wall_mean_ms']:.1f} / {bare['wall_max_ms']:.1f} "
              f"| {ours['cpu_mean_ms']:.1f} / {ours['cpu_max_ms']:.1f} "
              f"| {bare['cpu_mean_ms']:.1f} / {bare['cpu_max_ms']:.1f} "
              f"| {ours['cpu_mean_ms'] / max(bare['cpu_mean_ms'], 1e-9):.1f} |")
    held = scroll["held"]
    print(f"\nholding pagedown from the first row to the last ({HOLD_RATE_HZ:g} presses/s, the key's action called "
          f"directly): CPU per press, and the lag from the last press until the screen shows the last row\n")
    print("| table | presses | seconds | lag after release, ms | CPU per press, ms |\n|---|---:|---:|---:|---:|")
    for name, label in (("ours", "review's experiments table"), ("bare", "bare DataTable (baseline)")):
        row = held[name]
        print(f"| {label} | {row['presses']} | {row['seconds']:.2f} | {row['lag_ms']:.0f} | "
              f"{row['cpu_per_press_ms']:.1f} |")


def print_memory(memory: dict[str, dict[str, float]], ledger_mb: float) -> None:
    print(f"\nmemory of the review process (ledger {ledger_mb} MB) and of a bare Textual app, same terminal\n")
    print("| process, moment | RSS MiB | peak RSS (VmHWM) MiB |\n|---|---:|---:|")
    for label, value in memory.items():
        print(f"| {label} | {value['rss']:.1f} | {value['peak']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
