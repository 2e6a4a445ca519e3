"""The graveyard: every discarded, crashed and held trial of a run, as markdown to read and share.

Grouped by what was tried (the agent's own category, or one inferred from the description and diff),
each trial with its val_bpb against its parent, the change measured against the noise floor, the
one-line description, the agent's interpretation from its journal, a short diff and, for crashes, the
last lines of the log. A summary table ends it. Written for GitHub: tables, and `<details>` blocks so
diffs and logs stay folded until wanted.

`RunView` is the morning's read of a run's ledger (trials, journal, floors per budget, categories); the
report builds on it too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.core.categories import CATEGORIES, LABELS, Category, trial_category
from supervisor.core.config import RunConfig
from supervisor.core.transfer import TransferResult
from supervisor.core.types import (
    FINISHED_STATUSES,
    JournalEntry,
    NoiseRecord,
    Plan,
    Reflection,
    RunRecord,
    RunState,
    Steering,
    Trial,
    TrialKind,
    TrialStatus,
)
from supervisor.run.transfer import transfer_results
from supervisor.store.ledger import Ledger

IMPORTED_STATE = RunState.IMPORTED  # kept for old imports: the state is RunState.IMPORTED
DIFF_LINES = 40
LOG_LINES = 25


# ---- numbers and markdown ---------------------------------------------------------------------------------
def fmt_val(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6f}"


def fmt_change(x: float | None, signed: bool = True) -> str:
    """Four decimals suit val_bpb changes; tiny ones keep two significant digits instead of reading 0.0000."""
    if x is None:
        return "n/a"
    sign = "+" if signed and x > 0 else ""
    if x == 0 or abs(x) >= 5e-5:
        return f"{sign}{x:.4f}".replace("-", "−")
    return f"{sign}{x:.2g}".replace("-", "−")


def md_cell(text: Any) -> str:
    """Text that cannot break a markdown table row."""
    s = " ".join(str(text).split())
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def md_text(text: Any) -> str:
    """Free text as one paragraph; `<` escaped so it cannot open HTML (a lone `>` is harmless mid-line)."""
    return " ".join(str(text).split()).replace("<", "&lt;")


def fenced(text: str, lang: str = "") -> str:
    """A code block whose fence is longer than any run of backticks inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def details(summary: str, body: str, open_: bool = False) -> str:
    # The blank line after <summary> lets GitHub render the markdown (code fences) inside.
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>\n\n{body}\n\n</details>"


def short_diff(diff: str, max_lines: int = DIFF_LINES) -> tuple[str, int, int, int]:
    """(the diff without git's header lines, cut to max_lines; lines added; removed; lines cut)."""
    kept: list[str] = []
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith(("diff --git", "index ", "new file mode", "deleted file mode", "similarity index")):
            continue
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
        kept.append(line)
    cut = max(0, len(kept) - max_lines)
    if cut:
        kept = kept[:max_lines] + [f"... {cut} more lines"]
    return "\n".join(kept), added, removed, cut


def tail_lines(text: str, n: int = LOG_LINES) -> str:
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    return "\n".join(lines[-n:])


# ---- the run as the morning reads it ---------------------------------------------------------------------
@dataclass
class RunView:
    """One run read from its ledger: everything the graveyard and the report need, nothing live."""

    tag: str
    config: RunConfig
    run: RunRecord
    trials: list[Trial]
    journal: dict[int, JournalEntry]
    reflections: list[Reflection]
    plans: list[Plan]
    steering: list[Steering]
    noise_by_budget: dict[float, NoiseRecord] = field(default_factory=dict)
    noise_rows: list[NoiseRecord] = field(default_factory=list)
    transfer: list[TransferResult] = field(default_factory=list)  # the scale-transfer checks, one per scale

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> RunView:
        run = ledger.run_row()
        config = RunConfig.from_json(run.config)
        trials = ledger.trials()
        budgets = {t.budget_s for t in trials if t.budget_s is not None} | {config.budget_s}
        noise_by_budget = {}
        for budget in budgets:
            noise = ledger.latest_noise(budget)
            if noise is not None:
                noise_by_budget[budget] = noise
        return cls(
            tag=run.tag, config=config, run=run, trials=trials,
            journal={j.trial_id: j for j in ledger.journal_entries()},
            reflections=ledger.reflections(), plans=ledger.plans(), steering=ledger.steering(),
            noise_by_budget=noise_by_budget, noise_rows=ledger.noise_records(),
            transfer=transfer_results(ledger, config.floor_factor, trials),
        )

    # -- what kind of run ----------------------------------------------------------------------------------
    @property
    def imported(self) -> bool:
        return self.run.state == RunState.IMPORTED or any(t.kind == TrialKind.IMPORTED for t in self.trials)

    @property
    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.status in FINISHED_STATUSES]

    def by_status(self, *statuses: TrialStatus) -> list[Trial]:
        return [t for t in self.trials if t.status in statuses]

    def trial(self, trial_id: int | None) -> Trial | None:
        return next((t for t in self.trials if t.id == trial_id), None)

    # -- the noise floor -------------------------------------------------------------------------------------
    def noise_sd(self, budget_s: float | None = None) -> float | None:
        noise = self.noise_by_budget.get(self.config.budget_s if budget_s is None else budget_s)
        return None if noise is None else noise.sd

    def floor(self, budget_s: float | None = None) -> float | None:
        """factor x sd for this budget (results compare only within one budget); None while unmeasured."""
        sd = self.noise_sd(budget_s)
        return None if sd is None else sd * self.config.floor_factor

    def floor_for(self, trial: Trial) -> float | None:
        return self.floor(trial.budget_s if trial.budget_s is not None else self.config.budget_s)

    # -- per trial -------------------------------------------------------------------------------------------
    @staticmethod
    def gain(trial: Trial) -> float | None:
        """Parent minus trial (positive is better), None without both numbers."""
        return None if trial.delta is None else -trial.delta

    def category(self, trial: Trial) -> Category:
        return trial_category(trial.category, trial.description, trial.diff)

    def interpretation(self, trial: Trial) -> str | None:
        entry = self.journal.get(trial.id)
        return entry.interpretation if entry else None

    def platform_line(self) -> str:
        """The platform of the latest finished trial that recorded one, in a few words."""
        for t in reversed(self.finished):
            p = t.platform or {}
            if p.get("gpu") or p.get("torch"):
                return _platform_text(p)
            if p.get("source"):
                return str(p["source"])
        return "unknown"


# The parts of a platform line after the device, each shown only when it is known.
_PLATFORM_PARTS = (("driver", "driver {}"), ("cuda", "CUDA {}"), ("torch", "torch {}"))


def _platform_text(platform: dict[str, Any]) -> str:
    known = {k: v for k, v in platform.items() if v and v not in ("n/a", "unknown", "?")}
    gpu = known.get("gpu")
    if gpu == "cpu" and known.get("cpu"):
        gpu = f"CPU ({known['cpu']}, {known.get('cpu_count', '?')} cores)"
    parts = [gpu] + [template.format(known[key]) for key, template in _PLATFORM_PARTS if key in known]
    return ", ".join(x for x in parts if x)


def floor_text(view: RunView, budget_s: float | None = None) -> str:
    budget = view.config.budget_s if budget_s is None else budget_s
    sd = view.noise_sd(budget)
    if sd is None:
        return f"noise floor not measured at {budget:g} s (every change is compared with nothing)"
    factor = view.config.floor_factor
    return f"noise floor {fmt_change(sd * factor, signed=False)} ({factor:g} x sd {fmt_change(sd, signed=False)}) " \
           f"at {budget:g} s"


def versus_floor(change: float | None, floor: float | None) -> str:
    """A change of val_bpb measured against the noise floor, in words for a table cell."""
    if change is None:
        return "n/a"
    if floor is None:
        return "floor unmeasured"
    if floor <= 0:
        return "floor is 0"
    ratio = abs(change) / floor
    if ratio < 1:
        return f"{ratio:.1f}x floor (within noise)"
    return f"{ratio:.1f}x floor"


# ---- the graveyard ---------------------------------------------------------------------------------------
@dataclass
class Group:
    category: str
    trials: list[Trial]
    agent_given: int

    @property
    def label(self) -> str:
        return LABELS[self.category]


def graveyard_groups(view: RunView) -> list[Group]:
    """Discarded, crashed and held trials by category: the most-tried first, then the categories' order."""
    buckets: dict[str, list[Trial]] = {}
    given: dict[str, int] = {}
    for t in view.by_status(TrialStatus.DISCARD, TrialStatus.CRASH, TrialStatus.HELD):
        cat = view.category(t)
        buckets.setdefault(cat.name, []).append(t)
        given[cat.name] = given.get(cat.name, 0) + (cat.source == "agent")
    order = {c: i for i, c in enumerate(CATEGORIES)}
    names = sorted(buckets, key=lambda c: (-len(buckets[c]), order.get(c, 99)))
    return [Group(c, buckets[c], given[c]) for c in names]


def _loss_stats(trials: Iterable[Trial]) -> tuple[float | None, float | None]:
    """(mean, best) of val_bpb minus parent over trials that have both; best is the smallest."""
    deltas = [t.delta for t in trials if t.delta is not None]
    if not deltas:
        return None, None
    return statistics.fmean(deltas), min(deltas)


def _trial_section(view: RunView, t: Trial, diff_lines: int, log_lines: int) -> str:
    status = "held for review" if t.status == TrialStatus.HELD else str(t.status)
    head = f"#### Trial {t.id} · {status}" + (" · unsandboxed" if t.unsandboxed else "") + \
           (f" · `{t.short_commit}`" if t.commit_sha else "") + f" · {md_text(t.description)}"
    lines = [f'<a id="trial-{t.id}"></a>', "", head, ""]
    lines += _result_lines(view, t)
    if t.decision and t.status != TrialStatus.CRASH:
        lines.append(f"- **Decision:** {md_text(t.decision)}")
    lines.append(_interpretation_line(view, t))
    for suspicion in t.suspicions:
        lines.append(f"- **Suspicious:** {md_text(suspicion)}")
    if t.unsandboxed:
        lines.append(f"- **Unsandboxed:** the trial ran without the sandbox ({md_text(t.sandbox)})")
    lines.append(_category_line(view, t))
    lines.append("")
    lines += [_diff_block(t, diff_lines), ""]
    if t.status == TrialStatus.CRASH and t.log_tail.strip():
        lines += [details(f"last {min(log_lines, len(t.log_tail.strip().splitlines()))} lines of the log",
                          fenced(tail_lines(t.log_tail, log_lines), "text")), ""]
    return "\n".join(lines)


def _result_lines(view: RunView, t: Trial) -> list[str]:
    """What the trial measured: its val_bpb against its parent's, or why there is none to trust."""
    if t.status == TrialStatus.CRASH:
        reason = t.crash_reason or t.decision or "no reason recorded"
        lines = [f"- **Crashed:** {md_text(reason)}"]
        if t.val_bpb is not None:
            lines.append(f"- **val_bpb** {fmt_val(t.val_bpb)} (not trusted: the trial was recorded as a crash)")
        return lines
    if t.val_bpb is None:
        return ["- **val_bpb** not recorded" + (f": {md_text(t.decision)}" if t.decision else "")]
    lines = [f"- **val_bpb** {fmt_val(t.val_bpb)} {_against_parent(view, t)}"]
    if t.extra_values:
        lines.append(f"- **Confirmation runs:** {', '.join(fmt_val(v) for v in t.extra_values)}")
    return lines


def _against_parent(view: RunView, t: Trial) -> str:
    if t.parent_val_bpb is None:
        return "no parent to compare against"
    parent = view.trial(t.parent_trial)
    who = f"trial {parent.id}" if parent else "its parent"
    return (f"vs parent {fmt_val(t.parent_val_bpb)} ({who}): **Δ {fmt_change(t.delta)}** "
            f"({_direction(t.delta)}; {versus_floor(t.delta, view.floor_for(t))})")


def _direction(delta: float | None) -> str:
    change = delta or 0
    return "worse" if change > 0 else "better" if change < 0 else "no change"


def _interpretation_line(view: RunView, t: Trial) -> str:
    interpretation = view.interpretation(t)
    if interpretation:
        return f"- **Interpretation** (the agent's journal): {md_text(interpretation)}"
    if t.kind == TrialKind.IMPORTED and t.summary.get("interpretation"):
        return f"- **Interpretation** (the results.tsv's column): {md_text(t.summary['interpretation'])}"
    if t.kind == TrialKind.IMPORTED:
        return "- **Interpretation:** none (imported from an upstream results.tsv, which has no journal)"
    return "- **Interpretation:** no journal entry was written for this trial"


def _category_line(view: RunView, t: Trial) -> str:
    cat = view.category(t)
    if cat.source == "agent":
        origin = "as the results.tsv gave it" if t.kind == TrialKind.IMPORTED else "the agent's category"
    else:
        origin = f"inferred from {cat.evidence}"
    return f"- **Category:** {cat.label} ({md_text(origin)})"


def _diff_block(t: Trial, diff_lines: int) -> str:
    if t.diff.strip():
        body, added, removed, cut = short_diff(t.diff, diff_lines)
        shown = f"diff: +{added} −{removed} lines" + (f", first {diff_lines} shown" if cut else "")
        return details(shown, fenced(body, "diff"))
    if t.kind == TrialKind.IMPORTED:
        return "*No diff: the commit was not found, or no repository was given (`import --repo PATH`).*"
    return "*No diff: the training script was unchanged (a re-run of its parent).*"


def graveyard_markdown(view: RunView, *, diff_lines: int = DIFF_LINES, log_lines: int = LOG_LINES,
                       generated: float | None = None) -> str:
    """The whole graveyard of a run as GitHub-flavoured markdown."""
    groups = graveyard_groups(view)
    out = _introduction(view, generated)
    if not groups:
        out += ["Nothing was discarded and nothing crashed.", ""]
        return "\n".join(out)
    out += _contents(groups)
    for g in groups:
        out += _group_section(view, g, diff_lines, log_lines)
    out += _summary_section(view, groups)
    return "\n".join(out)


def _introduction(view: RunView, generated: float | None) -> list[str]:
    discards = view.by_status(TrialStatus.DISCARD)
    crashes = view.by_status(TrialStatus.CRASH)
    held = view.by_status(TrialStatus.HELD)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(generated if generated is not None else time.time()))
    source = " (imported from an upstream results.tsv)" if view.imported else ""
    out = [
        f"# Graveyard: {md_text(view.tag)}",
        "",
        f"Every discarded and crashed trial of run `{view.tag}`{source}: {len(discards)} discarded and "
        f"{len(crashes)} crashed of {len(view.finished)} finished trials"
        + (f", and {len(held)} held for review (not kept: the guards found something in the script)" if held
           else "") + f". Policy `{view.config.policy}`, {floor_text(view)}. Generated {stamp}.",
        "",
        "Δ is the trial's val_bpb minus its parent's (the keep it was built on): negative is better. "
        "\"x floor\" is the size of Δ in noise floors; under 1 it is within the noise, so the idea is not "
        "disproved and may be worth re-testing.",
        "",
    ]
    aborted = view.by_status(TrialStatus.ABORTED)
    if aborted:
        out += [f"{len(aborted)} trial(s) stopped before they finished are not counted and not listed "
                f"({', '.join(str(t.id) for t in aborted)}).", ""]
    return out


def _contents(groups: list[Group]) -> list[str]:
    out = ["## Contents", ""]
    for g in groups:
        anchor = "-".join(g.label.split())
        out.append(f"- [{g.label.capitalize()}](#{anchor}) ({len(g.trials)})")
    return out + ["- [Summary](#summary)", ""]


def _group_section(view: RunView, g: Group, diff_lines: int, log_lines: int) -> list[str]:
    crashed = sum(t.status == TrialStatus.CRASH for t in g.trials)
    held = sum(t.status == TrialStatus.HELD for t in g.trials)
    out = [f"## {g.label.capitalize()}", "",
           f"{len(g.trials)} tried: {len(g.trials) - crashed - held} discarded, {crashed} crashed"
           + (f", {held} held for review" if held else "") + f" ({_how_categorised(g)}).",
           "",
           "| trial | status | val_bpb | parent | Δ | vs floor | description |",
           "|---:|---|---:|---:|---:|---|---|"]
    out += [_group_row(view, t) for t in g.trials]
    out.append("")
    out += [_trial_section(view, t, diff_lines, log_lines) for t in g.trials]
    return out


def _how_categorised(g: Group) -> str:
    inferred = len(g.trials) - g.agent_given
    if inferred == 0:
        return "all by the agent's own category"
    if g.agent_given == 0:
        return "all inferred from description and diff"
    return f"{g.agent_given} by the agent's category, {inferred} inferred"


def _group_row(view: RunView, t: Trial) -> str:
    return (
        f"| [{t.id}](#trial-{t.id}) | {t.status} | {fmt_val(t.val_bpb) if t.status != TrialStatus.CRASH else '—'} | "
        f"{fmt_val(t.parent_val_bpb)} | {fmt_change(t.delta) if t.delta is not None else '—'} | "
        f"{versus_floor(t.delta, view.floor_for(t)) if t.delta is not None else '—'} | "
        f"{md_cell(t.description)} |"
    )


def _summary_section(view: RunView, groups: list[Group]) -> list[str]:
    out = ["## Summary", "",
           "Loss is Δ (trial minus parent, positive is worse) over the trials that produced a val_bpb; "
           "best is the smallest loss, the nearest miss.", "",
           "| what was tried | tries | discarded | crashed | within noise | mean loss | best loss |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    everything = Group("other", [t for g in groups for t in g.trials], 0)
    for g, label in [(g, g.label) for g in groups] + [(everything, "**all**")]:
        mean, best = _loss_stats(g.trials)
        crashed = sum(t.status == TrialStatus.CRASH for t in g.trials)
        out.append(f"| {label} | {len(g.trials)} | {len(g.trials) - crashed} | {crashed} | "
                   f"{_within_noise(view, g.trials)} | {fmt_change(mean)} | {fmt_change(best)} |")
    out.append("")
    return out


def _within_noise(view: RunView, trials: list[Trial]) -> str:
    """How many of the trials changed val_bpb by less than their floor; n/a while unmeasured."""
    if view.floor() is None:
        return "n/a"
    return str(sum(1 for t in trials
                   if t.delta is not None and (f := view.floor_for(t)) is not None and abs(t.delta) < f))


def write_graveyard(ledger: Ledger, path: Path, **options: Any) -> Path:
    """Render the graveyard of the run in `ledger` to `path` (written whole, then renamed)."""
    from supervisor.store.journal_files import atomic_write

    atomic_write(Path(path), graveyard_markdown(RunView.from_ledger(ledger), **options))
    return Path(path)
