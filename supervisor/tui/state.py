"""What the app shows, as plain objects, and how it gets them: no Textual in this module.

`RunWatcher.poll()` reads a run's ledger incrementally (new turns, new metric rows, the run row) and
recomputes the run's status (`supervisor.run.status.run_status`) only when something changed, so the app can
poll every second without the cost growing with the length of the night. It returns a `RunView` snapshot
and the names of the sections that changed, so the app redraws only those.

While the noise floor is measured there is no trial to follow: the watcher reads the loop's
noise/progress.json (which seed runs, what the finished ones scored) and tails the running seed's
metrics.jsonl, the files a UI in another process can see.

`RunControl` sends the person's commands through the ledger's commands table, the path `autoresearch
control` uses; the review mode has none, so it cannot send anything.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from supervisor.core.errors import UserError
from supervisor.run.status import run_status
from supervisor.store.ledger import Ledger, Trial
from supervisor.store.lock import RunLock
from supervisor.tui import format as fmt

# Sections of a RunView; poll() says which changed.
RUN = "run"                # state, detail, whether a supervisor is live
STATUS = "status"          # trials, best, floor, flagged, counts, reflections, plans, steering
TRIAL = "trial"            # the trial in focus (running, or the latest), with its diff
METRICS = "metrics"        # the focus trial's metric rows
REFERENCE = "reference"    # the curve the focus trial is compared with (its parent, the best keep)
TRANSCRIPT = "transcript"  # new transcript items
LIVE_REPLY = "live_reply"  # the agent's reply as it streams (the loop's agent_reply.live file)
LIVE_REPLY_CHARS = 2000  # the end of a long reply is what is being written now
JOURNAL = "journal"        # the latest journal entry and reflection
TELEMETRY = "telemetry"    # GPU or CPU/RAM reading
NOISE = "noise"            # the noise-floor measurement in progress (its seeds, the running seed's curve)

LIVE_STATES = ("running", "trial", "paused", "noise", "ready")
# A finished run is over: a resume finds its trial budget spent and ends at once, before any agent turn.
OVER_STATES = ("finished",)
STATE_WORDS = {"running": "agent's turn", "trial": "training", "noise": "measuring the noise floor",
               "ready": "starting"}
TRANSCRIPT_LIMIT = 2000
TELEMETRY_HISTORY = 120


@dataclass(frozen=True)
class TranscriptItem:
    """One thing said or done in the run, as the transcript pane shows it."""

    key: str            # unique: "turn:12", "steer:3", "steer:3:delivered"
    time: float
    kind: str           # agent | thinking | tool | refused | error | system | steering | delivered
    title: str
    body: str = ""
    tool: str | None = None
    input: Any = None


def _tool_failed(text: str) -> bool:
    head = text.lstrip()[:40].lower()
    return head.startswith(("error", "refused"))


def transcript_items_from_turn(turn: dict[str, Any]) -> list[TranscriptItem]:
    role = turn["role"]
    key = f"turn:{turn['id']}"
    text = turn.get("text") or ""
    if role == "tool":
        kind = "refused" if turn.get("refused") else ("error" if _tool_failed(text) else "tool")
        return [TranscriptItem(key, turn["created"], kind, turn.get("tool") or "tool", text, turn.get("tool"),
                               turn.get("input"))]
    if role == "agent":
        if not text.strip():
            return []
        return [TranscriptItem(key, turn["created"], "agent", "agent", text)]
    if role == "system":
        return [TranscriptItem(key, turn["created"], "system", "supervisor", text)]
    # Roles an agent adapter may add (e.g. "thinking"): shown as what they are, never dropped.
    kind = "thinking" if "think" in role else "agent"
    return [TranscriptItem(key, turn["created"], kind, role, text)] if text.strip() else []


def tool_input_summary(tool: str | None, data: Any, limit: int = 160) -> str:
    """One line saying what a tool call asked for (the full input is in the trial screen and transcript)."""
    if not isinstance(data, dict):
        return "" if data is None else fmt.one_line(json.dumps(data), limit)
    if tool == "run_trial" and "description" in data:
        return fmt.one_line(data["description"], limit)
    if tool in ("edit_file", "read_file") and "path" in data:
        return str(data["path"])
    if tool == "write_journal" and "hypothesis" in data:
        return fmt.one_line(data["hypothesis"], limit)
    if tool == "write_reflection" and "load_bearing" in data:
        return fmt.one_line(data["load_bearing"], limit)
    parts = [f"{k}={fmt.one_line(json.dumps(v) if not isinstance(v, str) else v, 40)}" for k, v in data.items()]
    return fmt.one_line(", ".join(parts), limit)


def cost_text(status: dict[str, Any], turns_usage: dict[str, int]) -> str | None:
    """The agent's spend and tokens, as the status reports them (LLM agents); None when there is none."""
    cost = status.get("cost")
    if isinstance(cost, dict):
        if not cost.get("turns"):
            return None  # no model has been called (the offline agent): nothing to show
        tokens = f"{fmt.rate(cost.get('tokens_in') or 0)} in / {fmt.rate(cost.get('tokens_out') or 0)} out tokens"
        usd = cost.get("cost_usd")
        if usd is None and not cost.get("priced_cost_usd"):
            return tokens  # the model's price is unknown
        text = f"${usd:.2f}" if usd is not None else f"≥ ${cost['priced_cost_usd']:.2f} (some turns unpriced)"
        if cost.get("max_cost"):
            text += f" of ${float(cost['max_cost']):.2f}"
        return f"{text} · {tokens}"
    text = fmt.money(cost) or fmt.money(status.get("cost_usd"))
    if text:
        return text
    tokens_in, tokens_out = turns_usage.get("in", 0), turns_usage.get("out", 0)
    if tokens_in or tokens_out:
        return f"{fmt.rate(tokens_in)} in / {fmt.rate(tokens_out)} out tokens"
    return None


def _usage_tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    tokens_in = usage.get("input_tokens", usage.get("prompt_tokens", 0))
    tokens_out = usage.get("output_tokens", usage.get("completion_tokens", 0))
    try:
        return int(tokens_in or 0), int(tokens_out or 0)
    except (TypeError, ValueError):
        return 0, 0


@dataclass(frozen=True)
class BudgetProgress:
    phase: str              # starting | training | evaluating
    elapsed_s: float        # training seconds reported by the trainer
    budget_s: float
    wall_s: float           # since the trial started, start-up and evaluation included

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, self.elapsed_s / self.budget_s)) if self.budget_s else 0.0


def budget_progress(metrics: list[dict[str, Any]], budget_s: float, started: float | None,
                    now: float) -> BudgetProgress:
    """How far a run of the trainer (a trial or a noise seed) is into its budget."""
    wall = max(0.0, now - (started or now))
    if not metrics:
        return BudgetProgress("starting", 0.0, budget_s, wall)
    elapsed = float(metrics[-1].get("elapsed") or 0.0)
    phase = "evaluating" if elapsed >= budget_s - 0.5 else "training"
    return BudgetProgress(phase, elapsed, budget_s, wall)


@dataclass(frozen=True)
class NoiseSeed:
    """One run of the unchanged code with a new seed, as the loop's noise/progress.json reports it."""

    index: int                  # 1-based
    seed: int | None
    status: str                 # running | ok | crash | stopped
    started: float | None
    val_bpb: float | None = None
    num_steps: int | None = None
    dir: str = ""               # relative to the run folder; its metrics.jsonl is the live curve


@dataclass
class NoiseView:
    """The noise-floor measurement in progress: the same code run `repeats` times with new seeds."""

    repeats: int
    commit: str
    budget_s: float | None
    seeds: list[NoiseSeed] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)        # the latest seed's curve
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # finished seeds' curves, by index

    @property
    def current(self) -> NoiseSeed | None:
        """The seed running now (None between seeds and before the first)."""
        return self.seeds[-1] if self.seeds and self.seeds[-1].status == "running" else None

    @property
    def finished(self) -> list[NoiseSeed]:
        return [s for s in self.seeds if s.status != "running"]

    def progress(self, now: float) -> BudgetProgress | None:
        seed = self.current
        if seed is None or not self.budget_s:
            return None
        return budget_progress(self.metrics, self.budget_s, seed.started, now)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_noise_progress(data: Any) -> NoiseView | None:
    """The loop's noise/progress.json as a NoiseView; None when it is not what the loop writes."""
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), list):
        return None
    seeds = []
    for raw in data["seeds"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("index"), int):
            continue
        folder = str(raw.get("dir") or "")
        if folder.startswith("/") or ".." in Path(folder).parts:
            continue  # a seed's folder is inside the run folder; the UI reads nothing else
        steps = _number(raw.get("num_steps"))
        seeds.append(NoiseSeed(index=raw["index"], seed=raw.get("seed") if isinstance(raw.get("seed"), int) else None,
                               status=str(raw.get("status") or "running"), started=_number(raw.get("started")),
                               val_bpb=_number(raw.get("val_bpb")), num_steps=None if steps is None else int(steps),
                               dir=folder))
    repeats = data.get("repeats")
    return NoiseView(repeats=repeats if isinstance(repeats, int) else len(seeds), commit=str(data.get("commit") or ""),
                     budget_s=_number(data.get("budget_s")), seeds=seeds)


class MetricsTail:
    """Reads the new complete lines of a JSON-lines metrics file another process appends to."""

    CHUNK = 1 << 20          # at most this much per poll, so one poll never stalls
    MAX_LINE = 4096          # longer is not a metric (the trainer is untrusted)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.CHUNK)
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > self.MAX_LINE:
            self.partial = b""  # an over-long line: its rest parses as garbage and is skipped too
        rows = []
        for line in lines:
            if not line.strip() or len(line) > self.MAX_LINE:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a stray print into the metrics file
            if isinstance(row, dict):
                rows.append(row)
        return rows


@dataclass
class RunView:
    """Everything the screens show, as of one poll. Plain data; the app never mutates it."""

    tag: str = ""
    run_dir: Path = Path(".")
    state: str = "new"
    detail: str = ""
    live: bool = False                      # a supervisor process holds the run's lock now
    supervisor: str | None = None           # who holds it
    status: dict[str, Any] = field(default_factory=dict)
    focus: Trial | None = None              # the running trial, else the latest one
    focus_metrics: list[dict[str, Any]] = field(default_factory=list)
    reference: Trial | None = None          # the focus trial's parent (the best keep it was built on)
    reference_metrics: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[TranscriptItem] = field(default_factory=list)
    new_transcript: list[TranscriptItem] = field(default_factory=list)  # items added by the last poll
    latest_journal: dict[str, Any] | None = None
    latest_journal_trial: Trial | None = None
    latest_reflection: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    telemetry_history: list[float] = field(default_factory=list)  # GPU (or CPU) utilisation, oldest first
    noise: NoiseView | None = None          # while the noise floor is measured
    cost: str | None = None
    live_reply: str = ""                    # what the agent is writing right now, before its turn is recorded
    polled_at: float = 0.0
    error: str | None = None

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.status.get("trials", [])

    @property
    def best(self) -> dict[str, Any] | None:
        return self.status.get("best")

    @property
    def noise_floor(self) -> float | None:
        return self.status.get("noise_floor")

    @property
    def running(self) -> bool:
        return self.focus is not None and self.focus.status == "running"

    @property
    def state_label(self) -> str:
        """The run's state in words a person reads at a glance."""
        if self.state in LIVE_STATES and not self.live:
            return "interrupted"
        return STATE_WORDS.get(self.state, self.state)

    @property
    def over(self) -> bool:
        """The run has finished and nobody runs it: there is nothing left to steer, pause or stop."""
        return self.state in OVER_STATES and not self.live

    def budget_progress(self, now: float | None = None) -> BudgetProgress | None:
        trial = self.focus
        if trial is None or trial.status != "running" or not trial.budget_s:
            return None
        return budget_progress(self.focus_metrics, trial.budget_s, trial.started, time.time() if now is None else now)

    def latest_metric(self) -> dict[str, Any] | None:
        return self.focus_metrics[-1] if self.focus_metrics else None

    def peak_vram_mb(self) -> float | None:
        values = [m["vram_mb"] for m in self.focus_metrics if m.get("vram_mb") is not None]
        if values:
            return max(values)
        return self.focus.peak_vram_mb if self.focus else None


class RunWatcher:
    """Reads one run's ledger incrementally. Use from one thread at a time (the app's poll worker)."""

    def __init__(self, ledger: Ledger, run_dir: Path, *,
                 telemetry: Callable[[], dict[str, Any]] | None = None, telemetry_every_s: float = 2.0,
                 status_every_s: float = 15.0, transcript_limit: int = TRANSCRIPT_LIMIT,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.ledger = ledger
        self.run_dir = Path(run_dir)
        self.lock_path = self.run_dir / "run.lock"
        self.telemetry = telemetry
        self.telemetry_every_s = telemetry_every_s
        self.status_every_s = status_every_s
        self.transcript_limit = transcript_limit
        self.monotonic = monotonic or time.monotonic  # injectable: intervals must not depend on the uptime
        self.view = RunView(run_dir=self.run_dir)
        self._run_updated: float | None = None
        self._last_turn = 0
        # None: never done, so the first poll reads the status and the telemetry whatever the clock says.
        self._status_at: float | None = None
        self._telemetry_at: float | None = None
        self._noise_stamp: tuple[int, int] | None = None   # progress.json's (mtime_ns, size) last read
        self._noise_tail: MetricsTail | None = None
        self._metric_seq = -1
        self._steering_seen: dict[int, bool] = {}   # steering id -> delivered
        self._usage = {"in": 0, "out": 0}
        self._force_status = True
        self._steering_state: list[tuple[int, bool]] = []

    def invalidate(self) -> None:
        """Re-read the status on the next poll (after this app sent a command or a steering message)."""
        self._force_status = True

    def _read_live_reply(self) -> str:
        """The streaming reply the loop writes while a model answers (removed once the turn is recorded)."""
        path = self.run_dir / "agent_reply.live"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 4 * LIVE_REPLY_CHARS))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return text[-LIVE_REPLY_CHARS:].strip()

    def poll(self) -> tuple[RunView, frozenset[str]]:
        changed: set[str] = set()
        view = replace(self.view, new_transcript=[])
        now = self.monotonic()

        run = self.ledger.run_row()
        holder = RunLock.holder(self.lock_path)
        live = holder is not None
        if (run["state"], run["state_detail"], live) != (view.state, view.detail, view.live) or not view.tag:
            changed.add(RUN)
        view.tag, view.state, view.detail, view.live, view.supervisor = (
            run["tag"], run["state"], run["state_detail"], live, holder)

        new_items: list[TranscriptItem] = []
        turns = self.ledger.turns(after_id=self._last_turn)
        for turn in turns:
            new_items.extend(transcript_items_from_turn(turn))
            tokens_in, tokens_out = _usage_tokens(turn.get("usage"))
            self._usage["in"] += tokens_in
            self._usage["out"] += tokens_out
        if turns:
            self._last_turn = turns[-1]["id"]

        # Steering can arrive from another process (`control`, the loop taking this app's command) with no
        # turn and no state change; the table is tiny, so it is compared on every poll.
        steering = [(s["id"], s["delivered"] is not None) for s in self.ledger.steering()]
        if (self._force_status or turns or run["updated"] != self._run_updated or RUN in changed
                or steering != self._steering_state or _due(self._status_at, now, self.status_every_s)):
            self._steering_state = steering
            self._force_status = False
            self._run_updated = run["updated"]
            self._status_at = now
            status = run_status(self.ledger, self.lock_path)
            if status != view.status:
                changed.add(STATUS)
                view.status = status
                new_items.extend(self._steering_items(status.get("steering", [])))
                self._refresh_journal(view, changed)
            cost = cost_text(status, self._usage)
            if cost != view.cost:
                view.cost = cost
                changed.add(STATUS)

        live_reply = self._read_live_reply() if live else ""
        if live_reply != view.live_reply:
            view.live_reply = live_reply
            changed.add(LIVE_REPLY)

        if new_items:
            new_items.sort(key=lambda item: item.time)
            view.transcript = (view.transcript + new_items)[-self.transcript_limit:]
            view.new_transcript = new_items
            changed.add(TRANSCRIPT)

        self._refresh_focus(view, changed)
        self._refresh_noise(view, changed)

        if self.telemetry is not None and _due(self._telemetry_at, now, self.telemetry_every_s):
            self._telemetry_at = now
            sample = self.telemetry()
            view.telemetry = sample
            util = sample.get("gpu_util_percent") if sample.get("kind") == "gpu" else sample.get("cpu_percent")
            if util is not None:
                view.telemetry_history = (view.telemetry_history + [float(util)])[-TELEMETRY_HISTORY:]
            changed.add(TELEMETRY)

        view.polled_at = time.time()
        self.view = view
        return copy.copy(view), frozenset(changed)

    # ---- parts of a poll ------------------------------------------------------------------------------
    def _steering_items(self, steering: list[dict[str, Any]]) -> list[TranscriptItem]:
        items = []
        for s in steering:
            delivered = s.get("delivered") is not None
            seen = self._steering_seen.get(s["id"])
            if seen is None:
                items.append(TranscriptItem(f"steer:{s['id']}", s["created"], "steering", "you", s["message"]))
            if delivered and not seen:
                items.append(TranscriptItem(
                    f"steer:{s['id']}:delivered", s["delivered"], "delivered", "delivered",
                    f"steering message {s['id']} was given to the agent at turn {s.get('delivered_turn')}"))
            self._steering_seen[s["id"]] = delivered
        return items

    def _refresh_journal(self, view: RunView, changed: set[str]) -> None:
        journaled = [t["id"] for t in view.trials if t.get("journal")]
        latest_id = journaled[-1] if journaled else None
        current = view.latest_journal["trial_id"] if view.latest_journal else None
        reflections = view.status.get("reflections") or []
        reflection = reflections[-1] if reflections else None
        if latest_id != current:
            view.latest_journal = self.ledger.journal_for(latest_id) if latest_id is not None else None
            view.latest_journal_trial = self.ledger.trial(latest_id) if latest_id is not None else None
            changed.add(JOURNAL)
        if (reflection or {}).get("id") != (view.latest_reflection or {}).get("id"):
            view.latest_reflection = reflection
            changed.add(JOURNAL)

    def _refresh_focus(self, view: RunView, changed: set[str]) -> None:
        trials = view.trials
        running = [t for t in trials if t["status"] == "running"]
        target = running[-1] if running else (trials[-1] if trials else None)
        target_id = target["id"] if target else None
        focus = view.focus
        if target_id is None:
            if focus is not None:
                view.focus, view.focus_metrics, view.reference, view.reference_metrics = None, [], None, []
                changed.update((TRIAL, METRICS, REFERENCE))
            return
        if focus is None or focus.id != target_id:
            view.focus = self.ledger.trial(target_id)
            view.focus_metrics = []
            self._metric_seq = -1
            changed.update((TRIAL, METRICS))
        elif focus.status != target["status"]:
            view.focus = self.ledger.trial(target_id)  # finished: its numbers and decision are in
            changed.add(TRIAL)
        if view.focus is None:
            return
        if view.focus.status == "running" or TRIAL in changed:
            rows = self.ledger.metrics(view.focus.id, after_seq=self._metric_seq)
            if rows:
                self._metric_seq = rows[-1]["seq"]
                view.focus_metrics = view.focus_metrics + rows
                changed.add(METRICS)
        parent_id = view.focus.parent_trial
        if (view.reference.id if view.reference else None) != parent_id:
            view.reference = self.ledger.trial(parent_id) if parent_id is not None else None
            view.reference_metrics = self.ledger.metrics(parent_id) if parent_id is not None else []
            changed.add(REFERENCE)


    def _refresh_noise(self, view: RunView, changed: set[str]) -> None:
        """While the noise floor is measured: which seed runs, the finished ones' results, the live curve."""
        if view.state != "noise":
            if view.noise is not None:
                view.noise, self._noise_stamp, self._noise_tail = None, None, None
                changed.add(NOISE)
            return
        noise = self._read_noise_progress(view.noise)
        if noise is not view.noise:
            changed.add(NOISE)
        if noise is not None and noise.seeds:
            # Seeds that ended (also those ended before this app opened): their whole curves, read once.
            ended = [s for s in noise.seeds[:-1] if s.index not in noise.curves]
            if ended:
                curves = {s.index: _loss_rows(MetricsTail(self.run_dir / s.dir / "metrics.jsonl").read())
                          for s in ended}
                noise = replace(noise, curves={**noise.curves, **curves})
                changed.add(NOISE)
            latest = self.run_dir / noise.seeds[-1].dir / "metrics.jsonl"
            if self._noise_tail is None or self._noise_tail.path != latest:
                self._noise_tail = MetricsTail(latest)
                noise = replace(noise, metrics=[])
                changed.add(NOISE)
            rows = _loss_rows(self._noise_tail.read())
            if rows:
                noise = replace(noise, metrics=noise.metrics + rows)
                changed.add(NOISE)
        view.noise = noise

    def _read_noise_progress(self, noise: NoiseView | None) -> NoiseView | None:
        """The loop's noise/progress.json when it changed (curves carried over within one measurement)."""
        path = self.run_dir / "noise" / "progress.json"
        try:
            stat = path.stat()
        except OSError:
            return noise  # not written yet: the state line says enough
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._noise_stamp:
            return noise
        try:
            fresh = parse_noise_progress(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return noise  # caught mid-replace: the next poll reads it
        if fresh is None:
            return noise
        self._noise_stamp = stamp
        first = (noise.commit, noise.seeds[0].dir) if noise is not None and noise.seeds else None
        if first is not None and noise is not None and fresh.seeds and first == (fresh.commit, fresh.seeds[0].dir):
            return replace(fresh, metrics=noise.metrics, curves=noise.curves)
        self._noise_tail = None  # another measurement: nothing carries over
        return fresh


def _loss_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if isinstance(r.get("elapsed"), int | float) and isinstance(r.get("loss"), int | float)]


def _due(last: float | None, now: float, every_s: float) -> bool:
    return last is None or now - last >= every_s


class ControlError(UserError):
    """A command the run cannot take now; the message says why."""


class RunControl:
    """Sends the person's commands to the loop through the ledger, like `autoresearch control`."""

    def __init__(self, ledger: Ledger, run_dir: Path) -> None:
        self.ledger = ledger
        self.lock_path = Path(run_dir) / "run.lock"

    def is_live(self) -> bool:
        return RunLock.holder(self.lock_path) is not None

    def send(self, command: str, arg: str = "") -> str:
        """Send one command; returns what to tell the person. Raises ControlError when it cannot be sent."""
        from supervisor.run.loop import COMMANDS

        if command not in COMMANDS:
            raise ControlError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
        arg = arg.strip()
        if command == "steer" and not arg:
            raise ControlError("a steering message needs some text")
        if not self.is_live():
            if self.ledger.run_row()["state"] in OVER_STATES:
                # A resume of a finished run ends at once: a stored message would never be read.
                raise ControlError(f"the run is over (finished): there is nothing to {command}")
            if command == "steer":
                # Nobody runs the loop: store it; the next --resume delivers it at the first turn.
                self.ledger.add_steering(arg)
                return "no supervisor is running this run: the message is stored and delivered on --resume"
            # A stale pause or stop would fire the moment the run is resumed; refuse instead.
            raise ControlError(f"no supervisor is running this run, so there is nothing to {command}")
        self.ledger.send_command(command, arg)
        return {
            "pause": "pause sent: the loop pauses at its next safe point (after the current trial)",
            "resume": "resume sent",
            "stop-trial": "stop-trial sent: the current trial is stopped, recorded as aborted and reverted",
            "steer": "steering message sent: the agent gets it at its next turn",
            "stop": "stop sent: the run stops (the current trial is recorded as aborted)",
        }[command]
