"""The offline agent: a plain coordinate search over train.py's named constants, no language model.

It exists so the product runs end to end on a fresh machine with no API key, and it is honest about what it
is: every journal entry and reflection says it is a mechanical search. Around the current best it changes
one constant at a time (learning rates first, then the rest in file order): floats are doubled and halved,
powers of two are doubled and halved, other integers move by one. After a keep it first pushes the same
constant further in the same direction. What it has tried is read back from the run's results (its
descriptions have a fixed form), so it resumes exactly where it was.

It cannot follow free-text steering, and says so once per message in its next journal entry rather than
silently doing something else. A change the person stopped mid-trial counts as rejected: that constant is
never set to that value again in the run, and the next journal entry says the person stopped it.

The supervisor refuses a change an earlier trial already made unless it is sent as a deliberate re-test. Moving
a constant again around a new best is one (the code around it changed): the search sends it with `retest_of`,
naming the trial that made the same move before. A move refused anyway (its change matched another trial's)
is taken back with revert_edits and never proposed again around that best: the search goes on to the next.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.agents.base import AgentTurn, ToolCall, TurnContext
from supervisor.core import prompts
from supervisor.core.categories import category_for_constant

DESCRIPTION = re.compile(r"^offline: (?P<name>[A-Z][A-Z0-9_]*) (?P<old>\S+) -> (?P<new>\S+)$")
ASSIGNMENT = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<value>[^#\n]+?)(?P<rest>\s*(#.*)?)$")
PROFILE_DICT = re.compile(r"^\{(?P<body>[^{}]*)\}\[PROFILE\]$")
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
POWER = re.compile(r"^(\d+)\s*\*\*\s*(\d+)$")
BASELINE = "baseline: the unmodified training script"
SKIP_NAMES = {"SEED", "PROFILE"}
# What the loop answers a run_trial whose trial the person stopped (supervisor/core/prompts.py), and the reason it records.
STOPPED_OUTCOME = re.compile(r"^trial (?P<id>\d+) was stopped by the person")
STOPPED_REASON = "stopped by the person"
STEER_WITH = "--agent anthropic or --agent openai"
# What the supervisor answers a change that repeats an earlier trial's ("refused: this is trial N again ...").
REPEAT_OUTCOME = re.compile("^" + re.escape(prompts.REPEAT_REFUSED.split("{trial_id}")[0]) + r"(?P<id>\d+)")


@dataclass
class Constant:
    name: str
    line: str           # the whole source line, used as the exact search text
    value: float | int
    is_int: bool
    profile_key: str | None = None  # set when the value sits in a {"full": .., "small": ..}[PROFILE] dict
    body: str = ""


def _parse_number(text: str) -> tuple[float | int, bool] | None:
    text = text.strip().replace("_", "")
    m = POWER.match(text)
    if m:
        return int(m.group(1)) ** int(m.group(2)), True
    if NUMBER.match(text):
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text), True
        return float(text), False
    return None


def parse_constants(source: str, profile: str | None) -> list[Constant]:
    """Top-level numeric constants of the training script (strings and booleans are left alone)."""
    found = []
    for line in source.splitlines():
        m = ASSIGNMENT.match(line)
        if not m or m.group("name") in SKIP_NAMES:
            continue
        value = m.group("value").strip()
        pd = PROFILE_DICT.match(value)
        if pd:
            key = profile or "small"
            entry = re.search(rf'"{re.escape(key)}"\s*:\s*([^,}}]+)', pd.group("body"))
            parsed = _parse_number(entry.group(1)) if entry else None
            if parsed:
                found.append(Constant(m.group("name"), line, parsed[0], parsed[1], key, pd.group("body")))
            continue
        parsed = _parse_number(value)
        if parsed:
            found.append(Constant(m.group("name"), line, parsed[0], parsed[1]))
    return found


def _fmt_value(v: float | int, is_int: bool) -> str:
    if is_int:
        return str(int(v))
    return f"{v:.3g}" if (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{float(f'{v:.3g}')}"


def candidates(c: Constant) -> list[str]:
    """New values to try for one constant, as source text."""
    v = c.value
    out: list[float | int] = []
    if c.is_int:
        iv = int(v)
        if iv >= 16 and iv & (iv - 1) == 0:
            out = [iv * 2, iv // 2]
        elif iv >= 1:
            out = [iv + 1, iv - 1] if iv > 1 else [iv + 1]
    else:
        fv = float(v)
        if fv == 0:
            return []
        up = fv * 2
        if 0 < fv <= 1 and "FRAC" in c.name:
            up = min(1.0, up)
        out = [up, fv / 2]
    texts = []
    for x in out:
        t = _fmt_value(x, c.is_int)
        if t != _fmt_value(v, c.is_int) and t not in texts:
            texts.append(t)
    return texts


def replaced_line(c: Constant, new_text: str) -> str:
    if c.profile_key is None:
        m = ASSIGNMENT.match(c.line)
        assert m
        return f"{m.group('name')}{m.group('eq')}{new_text}{m.group('rest')}"
    new_body = re.sub(rf'("{re.escape(c.profile_key)}"\s*:\s*)([^,}}]+)', lambda m: m.group(1) + new_text,
                      c.body, count=1)
    return c.line.replace("{" + c.body + "}", "{" + new_body + "}", 1)


def _order(constants: list[Constant]) -> list[Constant]:
    lr_first = [c for c in constants if "LR" in c.name or "LEARNING_RATE" in c.name]
    return lr_first + [c for c in constants if c not in lr_first]


class OfflineAgent:
    name = "offline"

    def __init__(self) -> None:
        # Steering is delivered to one turn only, but is answered in the next journal entry, which may come a
        # few turns later; it is held until a journal entry quotes it (the ledger says when that happened).
        self._steering: list[str] = []
        # Stops read from the run_trial outcome, for a loop that does not fill TurnContext.stopped.
        self._stops_seen: dict[int, str] = {}
        self._last_description: str | None = None
        self._last_best: int | None = None  # the best the last move was made around
        # Moves the supervisor refused as repeats, as (best id, description): never proposed around that best again.
        self._refused: set[tuple[int | None, str]] = set()
        self._revert_due = False  # a refused move's edit is still in the script: take it back first

    def turn(self, ctx: TurnContext) -> AgentTurn:
        self._take_in(ctx)
        if ctx.obligation == "journal" and ctx.pending_trial:
            return self._journal(ctx)
        if ctx.obligation == "reflection":
            return self._reflection(ctx)
        if not ctx.results:
            return self._baseline(ctx)
        if self._revert_due:
            self._revert_due = False
            if ctx.uncommitted_lines:
                return AgentTurn(text="That move repeated an earlier trial's change, so it did not run; taking the "
                                      "edit back before the next move.", calls=[ToolCall("revert_edits", {})])
        move = self.next_move(ctx)
        if move is None:
            return AgentTurn(text="Every one-axis move around the current best has been tried; nothing left to do.",
                             done=True)
        const, new_text = move
        old_text = _fmt_value(const.value, const.is_int)
        description = f"offline: {const.name} {old_text} -> {new_text}"
        self._last_description = description
        self._last_best = ctx.best["id"] if ctx.best else None
        run: dict[str, Any] = {"description": description, "category": _category(const.name)}
        # The same move measured around an earlier best: the code around it has changed, so this is a re-test.
        earlier = [r["id"] for r in ctx.results if r["description"] == description]
        if earlier:
            run["retest_of"] = earlier[-1]
        return AgentTurn(
            text=self._heard(ctx) + f"Coordinate search: {const.name} {old_text} -> {new_text}.",
            calls=[
                ToolCall("edit_file", {"path": ctx.editable, "search": const.line,
                                       "replace": replaced_line(const, new_text)}),
                ToolCall("run_trial", run),
            ],
        )

    def close(self) -> None:
        pass

    # ---- what the person did: steering and stopped trials -----------------------------------------------
    def _take_in(self, ctx: TurnContext) -> None:
        for message in ctx.steering:
            if message.strip() and message not in self._steering:
                self._steering.append(message)
        written = [" ".join(" ".join(v for v in dataclasses.astuple(e) if isinstance(v, str)).split())
                   for e in ctx.recent_journal]
        self._steering = [m for m in self._steering if not any(_quote(m) in text for text in written)]
        for outcome in ctx.last_outcomes:
            m = STOPPED_OUTCOME.match(outcome.content) if outcome.tool == "run_trial" else None
            if m and self._last_description:
                self._stops_seen[int(m["id"])] = self._last_description
            if outcome.tool == "run_trial" and REPEAT_OUTCOME.match(outcome.content) and self._last_description:
                self._refused.add((self._last_best, self._last_description))
                self._revert_due = True

    def stopped(self, ctx: TurnContext) -> dict[int, str]:
        """Trial id -> description of every trial the person stopped: the ledger's, else what this agent saw."""
        from_ledger = {int(t["id"]): str(t.get("description") or "") for t in ctx.stopped
                       if t.get("crash_reason", STOPPED_REASON) == STOPPED_REASON}
        return dict(sorted({**self._stops_seen, **from_ledger}.items()))

    def rejected(self, ctx: TurnContext) -> set[tuple[str, str]]:
        """(constant, value) pairs the person stopped: never proposed again in this run."""
        moves = (DESCRIPTION.match(d) for d in self.stopped(ctx).values())
        return {(m["name"], m["new"]) for m in moves if m}

    def _heard(self, ctx: TurnContext) -> str:
        """A line for the transcript at once; the journal entry says it in full."""
        text = ""
        if ctx.steering:
            text += "Steering received; the offline search cannot follow free text (the journal will say so). "
        last = ctx.results[-1]["id"] if ctx.results else 0
        for sid, description in self.stopped(ctx).items():
            if sid > last:
                text += f"The person stopped trial {sid} ({description}); that change counts as rejected. "
        return text

    def _notes(self, ctx: TurnContext, trial_id: int) -> list[str]:
        """Sentences for this journal entry: stops since the previous entry, and unanswered steering."""
        previous = max((e.trial_id for e in ctx.recent_journal), default=0)
        notes = []
        for sid, description in self.stopped(ctx).items():
            if not previous < sid < trial_id:
                continue
            m = DESCRIPTION.match(description)
            if m:
                notes.append(f"The person stopped trial {sid} ({m['name']} {m['old']} -> {m['new']}) before it "
                             f"finished; the search counts {m['name']} = {m['new']} as rejected and will not run "
                             "it again.")
            else:
                notes.append(f"The person stopped trial {sid} ({description}) before it finished.")
        for message in self._steering:
            notes.append(f"A steering message arrived: {_quote(message)}. I am the offline coordinate search (no "
                         "language model) and cannot follow free-text steering, so I continue my search. To "
                         f"steer the research, use an LLM agent ({STEER_WITH}; `autoresearch run --resume` "
                         "can switch this run to one).")
        return notes

    # ---- the search -----------------------------------------------------------------------------------
    def _baseline(self, ctx: TurnContext) -> AgentTurn:
        stops = sum(1 for d in self.stopped(ctx).values() if d == BASELINE)
        if stops >= 2:
            return AgentTurn(text="The person stopped the baseline twice. The coordinate search measures every "
                                  "change against it, so it cannot go on without one; it stops here.", done=True)
        text = "Offline agent (a coordinate search, not a language model). First, the baseline."
        if stops:
            text = ("The person stopped the baseline. The coordinate search measures every change against it, "
                    "so it runs it once more; stop it again and the search ends.")
        self._last_description = BASELINE
        return AgentTurn(text=text, calls=[ToolCall("run_trial", {"description": BASELINE, "category": "other"})])

    def next_move(self, ctx: TurnContext) -> tuple[Constant, str] | None:
        constants = _order(parse_constants(ctx.train_py, ctx.profile))
        best_id = ctx.best["id"] if ctx.best else None
        # Moves already tried around the current best (from the ledger, so a resumed run does not repeat
        # them), and values the person stopped (rejected anywhere in the run).
        tried = {(m["name"], m["old"], m["new"]) for r in ctx.results
                 if r.get("parent_trial") == best_id and (m := DESCRIPTION.match(r["description"]))}
        rejected = self.rejected(ctx)

        def fresh(c: Constant, t: str) -> bool:
            old = _fmt_value(c.value, c.is_int)
            return ((c.name, old, t) not in tried and (c.name, t) not in rejected
                    and (best_id, f"offline: {c.name} {old} -> {t}") not in self._refused)

        best_move = DESCRIPTION.match(ctx.best["description"]) if ctx.best else None
        if best_move:  # after a keep, push the same constant further in the same direction first
            push = _push_further(constants, best_move, fresh)
            if push:
                return push
        for c in constants:
            cur = _fmt_value(c.value, c.is_int)
            for t in candidates(c):
                # Going back to where the best came from is known to be worse: it was its parent.
                came_from = best_move is not None and (best_move["name"], best_move["new"], best_move["old"]) == (
                    c.name, cur, t)
                if fresh(c, t) and not came_from:
                    return c, t
        return None

    # ---- honest, templated writing ----------------------------------------------------------------------
    def _journal(self, ctx: TurnContext) -> AgentTurn:
        t = ctx.pending_trial or {}
        m = DESCRIPTION.match(t.get("description", ""))
        floor = ctx.noise_floor
        if m:
            name, old, new = m["name"], m["old"], m["new"]
            hypothesis = (f"Mechanical probe by the offline coordinate search (no language model): moving {name} "
                          f"from {old} to {new} may lower val_bpb at the {ctx.budget_s:g}s budget. No reasoning "
                          "stands behind this guess beyond trying each axis in turn." + _earlier_try(ctx, t))
            change = f"One line of {ctx.editable}: {name} = {new} (was {old})."
        else:
            name = old = new = ""
            hypothesis = ("The unmodified training script sets the reference every later change is measured "
                          "against (offline coordinate search, no language model).")
            change = f"No change: {ctx.editable} as it was at the start of the run."
        status = t.get("status")
        delta = t.get("delta")
        if status == "crash":
            interpretation = (f"The trial crashed ({t.get('crash_reason') or 'see the log tail'}), so "
                              + (f"{name}={new} is outside the workable range on this machine." if name
                                 else "the baseline itself does not run: fix the setup before searching."))
            next_step = "Move on to the next axis; a crash says nothing about the other direction."
        elif status == "keep" and delta is None:
            interpretation = f"Baseline val_bpb is {t.get('val_bpb'):.6f}; every later trial compares with it."
            next_step = "Start the one-axis search with the learning rates."
        elif status == "keep":
            within = floor is not None and -delta < floor
            interpretation = (f"val_bpb improved by {-delta:.6f}"
                              + (f", which is under the noise floor {floor:.6f}: it may be luck, so the keep is "
                                 "flagged" if within else "")
                              + ("" if floor is not None else " (noise floor not measured yet)") + ".")
            next_step = f"Push {name} further in the same direction, then continue with the other axes."
        else:
            worse = delta is not None and delta > 0
            interpretation = (f"val_bpb {'got worse by' if worse else 'did not improve enough:'} "
                              f"{abs(delta) if delta is not None else float('nan'):.6f}"
                              + (f" against a noise floor of {floor:.6f}" if floor is not None else "")
                              + f"; {name} = {new} is not better than {old} around the current best.")
            next_step = "Try the other direction on this axis if untried, else the next constant."
        notes = self._notes(ctx, int(t.get("id") or 0))
        return AgentTurn(
            text=f"Journal entry for trial {t.get('id')}.",
            calls=[ToolCall("write_journal", {"hypothesis": hypothesis, "change": change,
                                              "interpretation": interpretation,
                                              "next_step": " ".join([*notes, next_step])})],
        )

    def _reflection(self, ctx: TurnContext) -> AgentTurn:
        keeps = [r for r in ctx.results if r["status"] == "keep" and r.get("delta") is not None]
        discards = [r for r in ctx.results if r["status"] == "discard"]
        crashes = [r for r in ctx.results if r["status"] == "crash"]
        load = "; ".join(f"{r['description'].removeprefix('offline: ')} (gain {-r['delta']:.5f}"
                         f"{', flagged' if r['flagged'] else ''})" for r in keeps[-6:])
        load_bearing = ("Kept so far by the coordinate search: " + load + "." if load else
                        "Nothing has beaten the baseline yet; the defaults look well tuned for this budget.")
        dead = "; ".join(r["description"].removeprefix("offline: ") for r in (discards + crashes)[-8:])
        dead_ends = ("Moves that did not help around their best at the time: " + dead + "." if dead
                     else "No dead ends yet: every move so far was kept.")
        stops = "; ".join(d.removeprefix("offline: ") for d in list(self.stopped(ctx).values())[-8:])
        if stops:
            dead_ends += f" Stopped by the person, so never run again: {stops}."
        near = sorted((r for r in discards if r.get("delta") is not None), key=lambda r: r["delta"])[:3]
        retest = ("Near-misses worth re-testing now that the script has changed: "
                  + "; ".join(f"{r['description'].removeprefix('offline: ')} (lost {r['delta']:.5f})" for r in near)
                  + "." if near else "No near-misses to re-test yet.")
        move = self.next_move(ctx)
        plan = ("Continue the one-axis search (offline agent: mechanical, no language model)"
                + (f", next {move[0].name} -> {move[1]}." if move else "; every move around the best is tried."))
        return AgentTurn(
            text="Reflection (templated by the offline search).",
            calls=[ToolCall("write_reflection", {"load_bearing": load_bearing, "dead_ends": dead_ends,
                                                 "retest": retest, "plan": plan})],
        )


def _push_further(constants: list[Constant], best_move: re.Match[str],
                  fresh: Callable[[Constant, str], bool]) -> tuple[Constant, str] | None:
    """After a keep: the same constant, one more step in the direction that helped."""
    going_up = _as_float(best_move["new"]) > _as_float(best_move["old"])
    for c in constants:
        if c.name != best_move["name"]:
            continue
        for t in candidates(c):
            if (_as_float(t) > c.value) == going_up and fresh(c, t):
                return c, t
    return None


def _earlier_try(ctx: TurnContext, trial: dict[str, Any]) -> str:
    """Say so when the same one-line move was measured before, around an earlier best: a re-test, not a repeat."""
    same = [r["id"] for r in ctx.results
            if r["description"] == trial.get("description") and r["id"] != trial.get("id")]
    if not same:
        return ""
    return (f" The same move was measured around an earlier best (trial {same[-1]}); the script has changed "
            "since, so this is a re-test in the new context.")


def _quote(message: str) -> str:
    text = " ".join(message.split())
    return '"' + text[:300] + ('...' if len(text) > 300 else '') + '"'


def _as_float(text: str) -> float:
    parsed = _parse_number(text)
    return float(parsed[0]) if parsed else math.nan


def _category(name: str) -> str:
    return category_for_constant(name) or "other"
