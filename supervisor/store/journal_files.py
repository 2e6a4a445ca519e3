"""The human-readable side of a run, rendered from the ledger.

- `results.tsv`: the upstream autoresearch format (`commit val_bpb memory_gb status description`), so
  existing scripts keep working.
- `journal.md`: entries, reflections and the person's steering messages in order, for the morning.
- `transcript.jsonl`: every agent message and tool call with its result; refusals carry "refused": true.

Files are written to a temporary name and renamed, so a kill mid-write leaves the previous version.
The ledger is the truth: every file here can be rebuilt from it (`render_all`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from supervisor.core.failpoints import failpoint
from supervisor.core.paths import RunPaths
from supervisor.core.types import (
    JournalEntry,
    Plan,
    PlanStatus,
    Reflection,
    Steering,
    Trial,
    TrialKind,
    TrialStatus,
    Turn,
)
from supervisor.store.ledger import Ledger

RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
HELD_WORDS = "held for review"
UNSANDBOXED_WORD = "unsandboxed"
REASON_CHARS = 1000  # a crash reason longer than this (a flood from the trial) is cut in results.tsv
COMPACT_SEGMENT_CHARS = 80
_FINDING = re.compile(r"^(?P<rule>[^:]+):.*?\(line (?P<line>\d+)\): `(?P<segment>.*)`$", re.S)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean_field(text: str) -> str:
    """Tabs and newlines would break the TSV for every reader of it."""
    return " ".join(str(text).split())


def compact_finding(finding: str) -> str:
    """A guard finding in a few words: its rule, line and the start of the offending source."""
    match = _FINDING.match(finding.strip())
    if not match:
        return " ".join(finding.split())
    segment = match["segment"]
    if len(segment) > COMPACT_SEGMENT_CHARS:
        segment = segment[: COMPACT_SEGMENT_CHARS - 1] + "…"
    return f"{match['rule']} (line {match['line']}): `{segment}`"


def status_words(t: Trial) -> str:
    """A trial's status as a person reads it (held trials are held for review)."""
    return HELD_WORDS if t.status == TrialStatus.HELD else str(t.status)


def trial_marks(t: Trial) -> list[str]:
    """What a trial's description carries beyond the agent's words: why it was held, the guards' findings,
    why it crashed, whether it ran without the sandbox, and the trial it deliberately re-tested (results.tsv, the
    report, the UI)."""
    marks = []
    findings = "; ".join(compact_finding(f) for f in t.suspicions)
    if t.status == TrialStatus.HELD:
        marks.append(f"{HELD_WORDS}: {findings or t.decision}")
    elif findings:
        marks.append(f"guard findings: {findings}")
    if t.status == TrialStatus.CRASH and t.crash_reason and t.kind == TrialKind.TRIAL:
        reason = " ".join(t.crash_reason.split())
        marks.append("crash: " + (reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"))
    if t.unsandboxed:
        marks.append(UNSANDBOXED_WORD)
    if t.retest_of is not None:
        marks.append(f"re-test of trial {t.retest_of}")
    return marks


def marked_description(t: Trial) -> str:
    """The description with its marks, as results.tsv writes it: `desc [held for review: ...] [unsandboxed]`."""
    return " ".join([t.description, *(f"[{m}]" for m in trial_marks(t))])


def results_tsv(trials: list[Trial]) -> str:
    """Upstream's five columns; a held trial is a discard there (its marks say why)."""
    lines = [RESULTS_HEADER]
    for t in trials:
        if not t.status.finished:
            continue
        val = 0.0 if t.status == TrialStatus.CRASH or t.val_bpb is None else t.val_bpb
        mem = (t.peak_vram_mb or 0.0) / 1024.0
        lines.append(f"{t.short_commit}\t{val:.6f}\t{mem:.1f}\t{t.status.upstream}\t"
                     f"{_clean_field(marked_description(t))}\n")
    return "".join(lines)


def _stamp(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


def _fmt(v: float | None, digits: int = 6) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def trial_heading(t: Trial) -> str:
    flag = " ⚑ flagged" if t.flagged else ""
    unsandboxed = f" · ⚠ {UNSANDBOXED_WORD}" if t.unsandboxed else ""
    return f"Trial {t.id} · {status_words(t)}{flag}{unsandboxed} · `{t.short_commit}` · {t.description}"


def guard_lines(t: Trial) -> list[str]:
    """The guards' word on a trial, as markdown quote lines (empty when they had none)."""
    lines = []
    if t.status == TrialStatus.HELD:
        lines.append(f"> **Held for review, not kept.** {t.decision}")
    lines += [f"> **Guard finding.** {f}" for f in t.suspicions]
    if t.unsandboxed:
        lines.append(f"> **Unsandboxed.** This trial ran without the sandbox ({t.sandbox}).")
    return [line + "  " for line in lines[:-1]] + lines[-1:] + [""] if lines else []


def journal_entry_markdown(t: Trial, j: JournalEntry) -> str:
    """One journal entry as markdown (journal.md and the terminal UI show the same text)."""
    return "\n".join([
        f"## {trial_heading(t)}",
        f"*{_stamp(j.created)}*",
        "",
        *guard_lines(t),
        f"**Hypothesis.** {j.hypothesis}",
        "",
        f"**Change.** {j.change}",
        "",
        f"**Result.** {j.result}",
        "",
        f"**Interpretation.** {j.interpretation}",
        "",
        f"**Next.** {j.next_step}",
        "",
    ])


def reflection_markdown(r: Reflection) -> str:
    """One reflection as markdown (journal.md and the terminal UI show the same text)."""
    triggers = "; ".join(r.triggers) or "requested"
    return "\n".join([
        f"## Reflection {r.id} (after trial {r.after_trial})",
        f"*{_stamp(r.created)} · triggered by: {triggers}*",
        "",
        f"**What is load-bearing.** {r.load_bearing}",
        "",
        f"**Dead ends.** {r.dead_ends}",
        "",
        f"**Re-test under current conditions.** {r.retest}",
        "",
        f"**Updated plan.** {r.plan}",
        "",
    ])


def journal_markdown(ledger: Ledger) -> str:
    """journal.md: the plan queue, then entries, reflections, steering and noise floors in time order."""
    run = ledger.run_row()
    timeline = _timeline(ledger)
    finished = ledger.finished_trials()
    header = [
        f"# Lab journal: {run.tag}",
        "",
        f"Started {_stamp(run.created)}. {len(finished)} finished trials.{_trust_summary(finished)}"
        f"{_repeats_summary(ledger)}",
        "",
    ]
    header += _plan_queue(ledger.plans())
    return "\n".join(header) + "\n" + "\n".join(md for _, _, md in timeline)


def _trust_summary(trials: list[Trial]) -> str:
    """" N held for review (...). M ran unsandboxed." for the journal's header; "" when neither."""
    held = [str(t.id) for t in trials if t.status == TrialStatus.HELD]
    unsandboxed = [str(t.id) for t in trials if t.unsandboxed]
    out = ""
    if held:
        out += f" {len(held)} held for review, not kept (guard findings): trial {', '.join(held)}."
    if unsandboxed:
        out += f" {len(unsandboxed)} ran {UNSANDBOXED_WORD}: trial {', '.join(unsandboxed)}."
    return out


def _repeats_summary(ledger: Ledger) -> str:
    """" N repeats refused (...)." for the journal's header: changes an earlier trial had made; "" when none."""
    repeats = ledger.repeats()
    if not repeats:
        return ""
    earlier = ", ".join(dict.fromkeys(str(r.earlier_trial) for r in repeats))
    many = len(repeats) != 1
    return (f" {len(repeats)} repeat{'s' if many else ''} refused, not run ({'they' if many else 'it'} repeated "
            f"trial {earlier}).")


def _timeline(ledger: Ledger) -> list[tuple[float, int, str]]:
    """Journal entries, reflections, steering and noise floors as (time, order, markdown), in order."""
    trials = {t.id: t for t in ledger.trials()}
    items: list[tuple[float, int, str]] = []
    for j in ledger.journal_entries():
        t = trials.get(j.trial_id)
        if t is None:
            continue
        items.append((j.created, 1, journal_entry_markdown(t, j)))
    for r in ledger.reflections():
        items.append((r.created, 2, reflection_markdown(r)))
    for s in ledger.steering():
        items.append((s.created, 0, f"> **Steering from the person** ({_stamp(s.created)}): {s.message}\n"
                                    f"> _{steering_state_text(s)}_\n"))
    items += _noise_rows(ledger)
    items.sort(key=lambda x: (x[0], x[1]))
    return items


def _plan_queue(plans: list[Plan]) -> list[str]:
    if not plans:
        return []
    lines = ["### Plan queue", ""]
    for p in plans:
        extra = f" (dropped: {p.reason})" if p.status == PlanStatus.DROPPED else ""
        if p.status == PlanStatus.TRIED and p.trial_id:
            extra = f" (tried in trial {p.trial_id})"
        lines.append(f"- [{p.status}] #{p.id} {p.idea}{extra}")
    lines.append("")
    return lines


def _noise_rows(ledger: Ledger) -> list[tuple[float, int, str]]:
    out = []
    for r in ledger.noise_records():
        vals = ", ".join(f"{v:.6f}" for v in r.values)
        if r.values:
            what = (f"### Noise floor measured ({_stamp(r.created)})\n\n"
                    f"Commit `{r.commit_sha[:7]}`, budget {r.budget_s:.0f} s, {len(r.values)} seeds: {vals}. ")
        else:  # an sd given by the person (`import --noise-sd`), with no seeds behind it here
            what = (f"### Noise floor given ({_stamp(r.created)})\n\n"
                    f"Budget {r.budget_s:.0f} s, {r.platform}: not measured in this run. ")
        out.append((r.created, 3, what + f"sd {_fmt(r.sd)}, floor ({r.factor:g} x sd) {_fmt(r.floor)}.\n"))
    return out


def transcript_line(turn: Turn) -> str:
    record: dict[str, Any] = {
        "id": turn.id,
        "time": turn.created,
        "role": turn.role,
        "text": turn.text,
    }
    if turn.tool:
        record["tool"] = turn.tool
    if turn.input is not None:
        record["input"] = turn.input
    if turn.role == "tool":
        record["refused"] = turn.refused
    if turn.usage:
        record["usage"] = turn.usage
    return json.dumps(record, ensure_ascii=False) + "\n"


class JournalFiles:
    """Keeps the run folder's files in step with the ledger."""

    def __init__(self, ledger: Ledger, run_dir: Path) -> None:
        self.ledger = ledger
        self.run_dir = Path(run_dir)
        self.paths = RunPaths(self.run_dir)
        self._last_turn = 0

    @property
    def results_path(self) -> Path:
        return self.paths.results_tsv

    @property
    def journal_path(self) -> Path:
        return self.paths.journal_md

    @property
    def transcript_path(self) -> Path:
        return self.paths.transcript

    def render(self) -> None:
        atomic_write(self.results_path, results_tsv(self.ledger.trials()))
        failpoint("files_half_written")
        atomic_write(self.journal_path, journal_markdown(self.ledger))

    def rebuild_transcript(self) -> None:
        turns = self.ledger.turns()
        atomic_write(self.transcript_path, "".join(transcript_line(t) for t in turns))
        self._last_turn = turns[-1].id if turns else 0

    def append_transcript(self) -> None:
        """Append the turns recorded since the last call (one line each)."""
        turns = self.ledger.turns(after_id=self._last_turn)
        if not turns:
            return
        with open(self.transcript_path, "a", encoding="utf-8") as fh:
            fh.write("".join(transcript_line(t) for t in turns))
            fh.flush()
            os.fsync(fh.fileno())
        self._last_turn = turns[-1].id

    def render_all(self) -> None:
        self.render()
        self.rebuild_transcript()


def steering_state_text(message: Steering) -> str:
    """Where a steering message stands, in words: for journal.md and the UI."""
    if message.acknowledged is not None:
        how = "in a journal entry" if message.ack_how == "journal" else "by the agent"
        answer = f": {message.ack_note}" if message.ack_note and message.ack_how != "journal" else ""
        return f"acknowledged {how} at {_stamp(message.acknowledged)}{answer}"
    if message.delivered is not None:
        return f"shown to the agent since {_stamp(message.delivered)}; not yet acknowledged"
    return "waiting for the agent's next turn"
