"""What the app shows, as plain objects, and how it gets them: no Textual in this module.

`RunWatcher.poll()` reads a run's ledger incrementally (new turns, new metric rows, the run row) and
recomputes the run's status (`supervisor.run.status.run_status`) only when something changed, so the app can
poll every second without the cost growing with the length of the night. It returns a `RunView` snapshot
and the names of the sections that changed, so the app redraws only those.

While the noise floor is measured there is no trial to follow: the watcher reads the loop's
noise/progress.json (which seed runs, what the finished ones scored) and tails the running seed's
metrics.jsonl, the files a UI in another process can see (supervisor.tui.progress reads them).

The ledger's rows are read as their types (supervisor.core.types); the status (`run_status`, the `status
--json` document) is kept as the JSON document it is, for the run's summary numbers: counts, policy, agent,
trial budget, noise floor, spend.

The person's commands go the other way: supervisor.tui.control.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from supervisor.core.paths import RunPaths
from supervisor.core.types import (
    JournalEntry,
    Plan,
    Reflection,
    RunState,
    Steering,
    Trial,
    TrialStatus,
    Turn,
)
from supervisor.run.status import run_status
from supervisor.store.journal_files import steering_state_text
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.tui import format as fmt
from supervisor.tui.progress import (
    BudgetProgress,
    MetricsTail,
    NoiseView,
    budget_progress,
    parse_noise_progress,
)

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

# A finished run is over: a resume finds its trial budget spent and ends at once, before any agent turn.
OVER_STATES = (RunState.FINISHED,)
STATE_WORDS = {RunState.RUNNING: "agent's turn", RunState.TRIAL: "training", RunState.NOISE: "measuring the noise floor",
               RunState.READY: "starting"}
# In a trial's or a noise seed's folder (RunPaths names the folders, not yet these files):
METRICS_FILE = "metrics.jsonl"  # the trainer's live metrics
TRIAL_LOG_FILE = "log.txt"      # the trainer's output
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


def transcript_items_from_turn(turn: Turn) -> list[TranscriptItem]:
    role = turn.role
    key = f"turn:{turn.id}"
    text = turn.text or ""
    if role == "tool":
        kind = "refused" if turn.refused else ("error" if _tool_failed(text) else "tool")
        return [TranscriptItem(key, turn.created, kind, turn.tool or "tool", text, turn.tool, turn.input)]
    if role == "agent":
        if not text.strip():
            return []
        return [TranscriptItem(key, turn.created, "agent", "agent", text)]
    if role == "system":
        return [TranscriptItem(key, turn.created, "system", "supervisor", text)]
    # Roles an agent adapter may add (e.g. "thinking"): shown as what they are, never dropped.
    kind = "thinking" if "think" in role else "agent"
    return [TranscriptItem(key, turn.created, kind, role, text)] if text.strip() else []


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
        if cost.get("max_tokens"):  # the limit of a model without a known price
            tokens += f" of {fmt.rate(int(cost['max_tokens']))}"
        usd = cost.get("cost_usd")
        if usd is None and not cost.get("priced_cost_usd"):
            return tokens  # the model's price is unknown
        text = f"${usd:.2f}" if usd is not None else f"≥ ${cost['priced_cost_usd']:.2f} (some turns unpriced)"
        if cost.get("max_cost"):
            text += f" of ${float(cost['max_cost']):.2f}"
        source = f" · priced by {cost['price_source']}" if cost.get("price_source") else ""
        return f"{text} · {tokens}{source}"
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



# The experiments table's filters and sorts: which trials a filter name means is the run's vocabulary.
FILTERS = ("all", "keeps", "flagged", "crashes", "graveyard", "suspicious")
SORTS = ("id", "val_bpb", "delta", "steps", "MFU", "VRAM")
# The Trial attribute each sort reads.
SORT_ATTRIBUTE = {"id": "id", "val_bpb": "val_bpb", "delta": "delta", "steps": "num_steps", "MFU": "mfu_percent",
                  "VRAM": "peak_vram_mb"}
GRAVEYARD_STATUSES = (TrialStatus.DISCARD, TrialStatus.CRASH, TrialStatus.HELD, TrialStatus.ABORTED)


def filter_trials(trials: list[Trial], name: str) -> list[Trial]:
    if name == "keeps":
        return [t for t in trials if t.status == TrialStatus.KEEP]
    if name == "flagged":
        return [t for t in trials if t.flagged]
    if name == "crashes":
        return [t for t in trials if t.status == TrialStatus.CRASH]
    if name == "graveyard":  # everything tried that did not make it: discards, crashes, held, aborted
        return [t for t in trials if t.status in GRAVEYARD_STATUSES]
    if name == "suspicious":  # what the guards found something in: held for review, or with findings
        return [t for t in trials if t.status == TrialStatus.HELD or t.suspicions]
    return list(trials)


def sort_trials(trials: list[Trial], name: str, reverse: bool = False) -> list[Trial]:
    attribute = SORT_ATTRIBUTE[name]
    present = [t for t in trials if getattr(t, attribute) is not None]
    missing = [t for t in trials if getattr(t, attribute) is None]  # no value: always last, whatever the direction
    return sorted(present, key=lambda t: getattr(t, attribute), reverse=reverse) + missing


@dataclass
class RunView:
    """Everything the screens show, as of one poll. Plain data; the app never mutates it."""

    tag: str = ""
    run_dir: Path = Path(".")
    state: RunState = RunState.NEW
    detail: str = ""
    live: bool = False                      # a supervisor process holds the run's lock now
    supervisor: str | None = None           # who holds it
    status: dict[str, Any] = field(default_factory=dict)  # the `status --json` document: the run's summary numbers
    trials: list[Trial] = field(default_factory=list)     # every trial, oldest first
    plans: list[Plan] = field(default_factory=list)
    focus: Trial | None = None              # the running trial, else the latest one
    focus_metrics: list[dict[str, Any]] = field(default_factory=list)
    reference: Trial | None = None          # the focus trial's parent (the best keep it was built on)
    reference_metrics: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[TranscriptItem] = field(default_factory=list)
    new_transcript: list[TranscriptItem] = field(default_factory=list)  # items added by the last poll
    latest_journal: JournalEntry | None = None
    latest_journal_trial: Trial | None = None
    latest_reflection: Reflection | None = None
    telemetry: dict[str, Any] | None = None
    telemetry_history: list[float] = field(default_factory=list)  # GPU (or CPU) utilisation, oldest first
    noise: NoiseView | None = None          # while the noise floor is measured
    cost: str | None = None
    live_reply: str = ""                    # what the agent is writing right now, before its turn is recorded
    polled_at: float = 0.0
    error: str | None = None

    @property
    def best(self) -> Trial | None:
        """The best keep, as the status names it."""
        best = self.status.get("best")
        best_id = best.get("id") if isinstance(best, dict) else None
        return next((t for t in self.trials if t.id == best_id), None)

    @property
    def flagged(self) -> list[Trial]:
        """Finished keeps whose gain is under the noise floor."""
        return [t for t in self.trials if t.status.finished and t.flagged]

    @property
    def noise_floor(self) -> float | None:
        return self.status.get("noise_floor")

    @property
    def running(self) -> bool:
        return self.focus is not None and self.focus.status == TrialStatus.RUNNING

    @property
    def state_label(self) -> str:
        """The run's state in words a person reads at a glance."""
        if self.state.live and not self.live:
            return str(RunState.INTERRUPTED)
        return STATE_WORDS.get(self.state, str(self.state))

    @property
    def over(self) -> bool:
        """The run has finished and nobody runs it: there is nothing left to steer, pause or stop."""
        return self.state in OVER_STATES and not self.live

    def budget_progress(self, now: float | None = None) -> BudgetProgress | None:
        trial = self.focus
        if trial is None or trial.status != TrialStatus.RUNNING or not trial.budget_s:
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
        self.paths = RunPaths(self.run_dir)
        self.lock_path = self.paths.lock
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
        self._steering_acknowledged: set[int] = set()
        self._usage = {"in": 0, "out": 0}
        self._force_status = True
        self._steering_state: list[tuple[int, bool, bool]] = []
        self._reflections: list[Reflection] = []
        self._journaled: set[int] = set()   # ids of the trials with a journal entry

    def invalidate(self) -> None:
        """Re-read the status on the next poll (after this app sent a command or a steering message)."""
        self._force_status = True

    def _read_live_reply(self) -> str:
        """The streaming reply the loop writes while a model answers (removed once the turn is recorded)."""
        path = self.paths.live_reply
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
        if (run.state, run.state_detail, live) != (view.state, view.detail, view.live) or not view.tag:
            changed.add(RUN)
        view.tag, view.state, view.detail, view.live, view.supervisor = (
            run.tag, run.state, run.state_detail, live, holder)

        new_items: list[TranscriptItem] = []
        turns = self.ledger.turns(after_id=self._last_turn)
        for turn in turns:
            new_items.extend(transcript_items_from_turn(turn))
            tokens_in, tokens_out = _usage_tokens(turn.usage)
            self._usage["in"] += tokens_in
            self._usage["out"] += tokens_out
        if turns:
            self._last_turn = turns[-1].id

        # Steering can arrive from another process (`control`, the loop taking this app's command) with no
        # turn and no state change; the table is tiny, so it is compared on every poll.
        steering = self.ledger.steering()
        steering_state = [(s.id, s.delivered is not None, s.acknowledged is not None) for s in steering]
        if (self._force_status or turns or run.updated != self._run_updated or RUN in changed
                or steering_state != self._steering_state or _due(self._status_at, now, self.status_every_s)):
            self._steering_state = steering_state
            self._force_status = False
            self._run_updated = run.updated
            self._status_at = now
            status = run_status(self.ledger, self.lock_path)
            if status != view.status:
                changed.add(STATUS)
                view.status = status
                self._read_rows(view)
                new_items.extend(self._steering_items(steering))
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
    def _read_rows(self, view: RunView) -> None:
        """The ledger's rows the screens show, read with the status they go with."""
        view.trials = self.ledger.trials()
        view.plans = self.ledger.plans()
        self._reflections = self.ledger.reflections()
        self._journaled = {entry.trial_id for entry in self.ledger.journal_entries()}

    def _steering_items(self, steering: list[Steering]) -> list[TranscriptItem]:
        items = []
        for s in steering:
            delivered = s.delivered is not None
            seen = self._steering_seen.get(s.id)
            if seen is None:
                items.append(TranscriptItem(f"steer:{s.id}", s.created, "steering", "you", s.message))
            if s.delivered is not None and not seen:
                items.append(TranscriptItem(
                    f"steer:{s.id}:delivered", s.delivered, "delivered", "delivered",
                    f"steering message {s.id} was given to the agent at turn {s.delivered_turn}"))
            if s.acknowledged is not None and s.id not in self._steering_acknowledged:
                self._steering_acknowledged.add(s.id)
                items.append(TranscriptItem(
                    f"steer:{s.id}:acknowledged", s.acknowledged, "delivered", "acknowledged",
                    f"steering message {s.id}: {steering_state_text(s)}"))
            self._steering_seen[s.id] = delivered
        return items

    def _refresh_journal(self, view: RunView, changed: set[str]) -> None:
        journaled = [t.id for t in view.trials if t.id in self._journaled]
        latest_id = journaled[-1] if journaled else None
        current = view.latest_journal.trial_id if view.latest_journal else None
        reflection = self._reflections[-1] if self._reflections else None
        if latest_id != current:
            view.latest_journal = self.ledger.journal_for(latest_id) if latest_id is not None else None
            view.latest_journal_trial = self.ledger.trial(latest_id) if latest_id is not None else None
            changed.add(JOURNAL)
        if (reflection.id if reflection else None) != (view.latest_reflection.id if view.latest_reflection else None):
            view.latest_reflection = reflection
            changed.add(JOURNAL)

    def _refresh_focus(self, view: RunView, changed: set[str]) -> None:
        trials = view.trials
        running = [t for t in trials if t.status == TrialStatus.RUNNING]
        target = running[-1] if running else (trials[-1] if trials else None)
        target_id = target.id if target else None
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
        elif target is not None and focus.status != target.status:
            view.focus = self.ledger.trial(target_id)  # finished: its numbers and decision are in
            changed.add(TRIAL)
        if view.focus is None:
            return
        if view.focus.status == TrialStatus.RUNNING or TRIAL in changed:
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
        if view.state != RunState.NOISE:
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
                curves = {s.index: _loss_rows(MetricsTail(self.run_dir / s.dir / METRICS_FILE).read())
                          for s in ended}
                noise = replace(noise, curves={**noise.curves, **curves})
                changed.add(NOISE)
            latest = self.run_dir / noise.seeds[-1].dir / METRICS_FILE
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
        path = self.paths.noise_progress
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
