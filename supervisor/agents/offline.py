"""The offline agent: a plain coordinate search over train.py's named constants, no language model.

It exists so the product runs end to end on a fresh machine with no API key, and it is honest about what it
is: every journal entry and reflection says it is a mechanical search. Around the current best it changes
one constant at a time (learning rates first, then the rest in file order): floats are doubled and halved,
powers of two are doubled and halved, other integers move by one. After a keep it first pushes the same
constant further in the same direction. What it has tried is read back from the run's results (its
descriptions have a fixed form), so it resumes exactly where it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from supervisor.agents.base import AgentTurn, ToolCall, TurnContext
from supervisor.categories import category_for_constant

DESCRIPTION = re.compile(r"^offline: (?P<name>[A-Z][A-Z0-9_]*) (?P<old>\S+) -> (?P<new>\S+)$")
ASSIGNMENT = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<value>[^#\n]+?)(?P<rest>\s*(#.*)?)$")
PROFILE_DICT = re.compile(r"^\{(?P<body>[^{}]*)\}\[PROFILE\]$")
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
POWER = re.compile(r"^(\d+)\s*\*\*\s*(\d+)$")
BASELINE = "baseline: the unmodified training script"
SKIP_NAMES = {"SEED", "PROFILE"}


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

    def turn(self, ctx: TurnContext) -> AgentTurn:
        if ctx.obligation == "journal" and ctx.pending_trial:
            return self._journal(ctx)
        if ctx.obligation == "reflection":
            return self._reflection(ctx)
        if not ctx.results:
            return AgentTurn(
                text="Offline agent (a coordinate search, not a language model). First, the baseline.",
                calls=[ToolCall("run_trial", {"description": BASELINE, "category": "other"})],
            )
        move = self.next_move(ctx)
        if move is None:
            return AgentTurn(text="Every one-axis move around the current best has been tried; nothing left to do.",
                             done=True)
        const, new_text = move
        old_text = _fmt_value(const.value, const.is_int)
        description = f"offline: {const.name} {old_text} -> {new_text}"
        return AgentTurn(
            text=f"Coordinate search: {const.name} {old_text} -> {new_text}.",
            calls=[
                ToolCall("edit_file", {"path": ctx.editable, "search": const.line,
                                       "replace": replaced_line(const, new_text)}),
                ToolCall("run_trial", {"description": description, "category": _category(const.name)}),
            ],
        )

    def close(self) -> None:
        pass

    # ---- the search -----------------------------------------------------------------------------------
    def next_move(self, ctx: TurnContext) -> tuple[Constant, str] | None:
        constants = _order(parse_constants(ctx.train_py, ctx.profile))
        best_id = ctx.best["id"] if ctx.best else None
        tried = set()
        for r in ctx.results:
            m = DESCRIPTION.match(r["description"])
            if m and r.get("parent_trial") == best_id:
                tried.add((m["name"], m["old"], m["new"]))
        # After a keep, push the same constant further in the same direction first.
        best_move = DESCRIPTION.match(ctx.best["description"]) if ctx.best else None
        if best_move:
            for c in constants:
                if c.name == best_move["name"]:
                    cands = candidates(c)
                    cur = _fmt_value(c.value, c.is_int)
                    going_up = _as_float(best_move["new"]) > _as_float(best_move["old"])
                    same_way = [t for t in cands if (_as_float(t) > c.value) == going_up]
                    for t in same_way:
                        if (c.name, cur, t) not in tried:
                            return c, t
        for c in constants:
            cur = _fmt_value(c.value, c.is_int)
            for t in candidates(c):
                # Going back to where the best came from is known to be worse: it was its parent.
                came_from = best_move is not None and (best_move["name"], best_move["new"], best_move["old"]) == (
                    c.name, cur, t)
                if (c.name, cur, t) not in tried and not came_from:
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
                          "stands behind this guess beyond trying each axis in turn.")
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
        return AgentTurn(
            text=f"Journal entry for trial {t.get('id')}.",
            calls=[ToolCall("write_journal", {"hypothesis": hypothesis, "change": change,
                                              "interpretation": interpretation, "next_step": next_step})],
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


def _as_float(text: str) -> float:
    parsed = _parse_number(text)
    return float(parsed[0]) if parsed else math.nan


def _category(name: str) -> str:
    return category_for_constant(name) or "other"
