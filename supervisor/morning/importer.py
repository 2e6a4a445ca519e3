"""Import a run made with upstream autoresearch: its results.tsv, and its git repository for the diffs.

The result is a run folder like our own (`journals/<tag>/`, a ledger whose run is marked imported and
whose trials are kind 'imported'), so `status --json`, the graveyard and the report work on it unchanged.

Parents and gains follow upstream's own semantics: the branch advances at every keep, so each trial's
parent is the last keep before it in the file. Each keep's gain is taken against that keep, and with a
noise sd (`--noise-sd`, or the seeds' values) every keep whose gain is under `factor x sd` is flagged,
by the same KeepPolicy the live loop uses. Upstream's decisions are history and are not changed.

Real files are messy, and this reader is forgiving where the meaning is clear and says so where not:
- a baseline row with no commit hash (an empty first column, or, when tabs became spaces, one token
  fewer before the status);
- `0.000000` (or nothing, or `nan`) as the val_bpb of a crash;
- descriptions with parentheses, commas, tabs, `|` and unicode;
- blank lines anywhere (trailing ones included), CRLF line ends, a UTF-8 byte-order mark;
- tabs turned into runs of spaces, and a leading line-number column, when copied from a web page
  (a pure number of at most 6 digits, or a line holding only a number; short commit hashes are 7+);
- extra columns (mfu, tok_per_sec, num_steps, num_params_M, ...) read by their header names;
- status words in any case (KEEP), and `baseline`/`kept`/`crashed` spellings.
Every line that cannot be read is listed with its number and the reason; the others are imported.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.core.categories import normalize_category
from supervisor.core.config import RunConfig, validate_tag
from supervisor.core.errors import UserError
from supervisor.core.paths import RunPaths
from supervisor.core.policy import DEFAULT_FLOOR_FACTOR, KeepPolicy, NoiseMeasurement
from supervisor.core.types import FINISHED_STATUSES, RunState, TrialStatus
from supervisor.morning.graveyard import fmt_change
from supervisor.store.journal_files import JournalFiles
from supervisor.store.ledger import Ledger

UPSTREAM_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description"]
DEFAULT_BUDGET_S = 300.0  # upstream's fixed training budget
STATUS_WORDS = {
    "keep": TrialStatus.KEEP, "kept": TrialStatus.KEEP, "baseline": TrialStatus.KEEP,
    "discard": TrialStatus.DISCARD, "discarded": TrialStatus.DISCARD, "revert": TrialStatus.DISCARD,
    "reverted": TrialStatus.DISCARD,
    "crash": TrialStatus.CRASH, "crashed": TrialStatus.CRASH, "fail": TrialStatus.CRASH, "failed": TrialStatus.CRASH,
    "error": TrialStatus.CRASH, "oom": TrialStatus.CRASH,
}
NO_COMMIT = {"", "-", "—", "none", "n/a", "na", "null", "?"}
# Extra upstream columns we understand, by header name -> (Trial field, multiplier).
NUMERIC_COLUMNS: dict[str, tuple[str, float]] = {
    "mfu": ("mfu_percent", 1.0), "mfu_percent": ("mfu_percent", 1.0),
    "tok_per_sec": ("tokens_per_s", 1.0), "tokens_per_s": ("tokens_per_s", 1.0),
    "tokens_per_sec": ("tokens_per_s", 1.0), "tok_s": ("tokens_per_s", 1.0),
    "num_steps": ("num_steps", 1.0), "steps": ("num_steps", 1.0),
    "num_params_m": ("num_params_m", 1.0), "params_m": ("num_params_m", 1.0),
    "training_seconds": ("training_seconds", 1.0),
    "peak_vram_mb": ("peak_vram_mb", 1.0),
}
CATEGORY_COLUMNS = ("category", "kind", "type")
# Beyond these a number is a typo or a sentinel, not a measurement: 8 bits per byte is a model no better than
# uniform over bytes, so a val_bpb over 1000 means nothing, and no axis or SQLite integer holds 1e308.
MAX_VAL_BPB = 1000.0
MAX_MEMORY_GB = 1e6
MAX_EXTRA_VALUE = 1e15
_LINE_NUMBER = re.compile(r"^\s*(\d{1,6})(?:\s+(.*))?$")
_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


class ResultsImportError(UserError, ValueError):
    """The file cannot be imported at all; the message says why and nothing was created."""


@dataclass
class UpstreamRow:
    """One readable line of a results.tsv."""

    line: int
    commit: str | None
    val_bpb: float | None
    memory_gb: float | None
    status: TrialStatus
    description: str
    columns: dict[str, str] = field(default_factory=dict)  # every column as written, by header name
    notes: list[str] = field(default_factory=list)  # what was read leniently


@dataclass
class Unreadable:
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"line {self.line}: {self.reason} ({shown!r})"


@dataclass
class ParsedResults:
    header: list[str]
    rows: list[UpstreamRow]
    unreadable: list[Unreadable]
    notes: list[str]  # about the file as a whole


# ---- reading the file -----------------------------------------------------------------------------------
def decode(data: bytes) -> tuple[str, list[str]]:
    """Text of the file: UTF-8 (with or without a byte-order mark), else Latin-1, said so."""
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        return data.decode("latin-1"), [f"the file is not UTF-8 ({exc.reason} at byte {exc.start}); read as Latin-1"]


def _strip_line_number(text: str) -> tuple[str, bool]:
    """A leading line number from a web page (1-6 digits, then space or tab), removed."""
    m = _LINE_NUMBER.match(text)
    if m and m.group(2) is not None and m.group(2).strip():
        return m.group(2), True
    return text, False


def _header_columns(text: str) -> list[str] | None:
    """The column names when this line is a header: no numbers, and it names val_bpb and status, or
    starts with commit (a header of another format still is one; its rows then say what is missing)."""
    fields = [f.strip().lower() for f in (text.split("\t") if "\t" in text else text.split())]
    fields = [f for f in fields if f]
    if not fields or any(_number(f) is not None for f in fields):
        return None
    if ("status" in fields and "val_bpb" in fields) or fields[0] == "commit":
        return fields
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip().replace(",", ""))
    except ValueError:
        return None
    return value


def parse_results(text: str) -> ParsedResults:
    """Read an upstream results.tsv (quirks and all). Never raises for bad lines: they are listed."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    header: list[str] | None = None
    rows: list[UpstreamRow] = []
    unreadable: list[Unreadable] = []
    notes: list[str] = []
    numbered = spaced = False
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if re.fullmatch(r"\s*\d{1,6}\s*", raw):
            numbered = True  # a line number on its own line (some web pages copy them so)
            continue
        body, had_number = _strip_line_number(raw.rstrip())
        numbered = numbered or had_number
        if body.lstrip().startswith("#"):
            continue
        columns = _header_columns(body)
        if columns is not None:
            if header is None:
                header = columns
            elif columns != header:
                unreadable.append(Unreadable(number, raw.strip(), "a second header with different columns; "
                                                                  "the rows below it are read with the first"))
            continue
        if header is None:
            header = list(UPSTREAM_COLUMNS)
            notes.append("no header line: assumed the upstream columns commit, val_bpb, memory_gb, status, "
                         "description")
        row = _parse_row(number, body, header)
        if isinstance(row, Unreadable):
            row.text = raw.strip()
            unreadable.append(row)
        else:
            rows.append(row)
            spaced = spaced or "\t" not in body
    if numbered:
        notes.append("a leading line-number column (copied from a web page) was removed")
    if spaced:
        notes.append("some lines had no tabs (tabs turned into spaces when copied); their columns were "
                     "split on spaces, the description taking the rest of the line")
    return ParsedResults(header or list(UPSTREAM_COLUMNS), rows, unreadable, notes)


def _plausibility(tokens: list[str], header: list[str]) -> int:
    """How well a reading of a line fits the columns: numbers where numbers go, a commit that is not one."""
    score = 0
    for name in ("val_bpb", "memory_gb"):
        if name in header and header.index(name) < len(tokens):
            value = tokens[header.index(name)]
            score += (value == "" or _number(value) is not None)
    if header[0] == "commit" and tokens:
        score += not (tokens[0] and "." in tokens[0] and _number(tokens[0]) is not None)
    return score


def _split(body: str, header: list[str]) -> list[str] | str:
    """The line's fields in header order (None-free), or why they cannot be found."""
    status_at = header.index("status") if "status" in header else -1
    if status_at < 0:
        return "the header has no status column"
    desc_at = header.index("description") if "description" in header else len(header) - 1
    tabbed = "\t" in body
    tokens = [t.strip() for t in body.split("\t")] if tabbed else body.split()
    # Where is the status? Where the header says, or one place earlier when the commit is missing
    # (then the line starts with the val_bpb). A description may itself start with a status word
    # ("baseline"), so each reading is checked and the one whose numbers are numbers wins.
    readings = []
    for shift in ([0, 1] if header[0] == "commit" and status_at > 0 else [0]):
        at = status_at - shift
        if at < len(tokens) and tokens[at].lower() in STATUS_WORDS:
            aligned = [""] * shift + tokens
            readings.append((_plausibility(aligned, header), -shift, aligned))
    if readings:
        tokens = max(readings, key=lambda r: (r[0], r[1]))[2]
    else:
        found = next((t for t in tokens if t.lower() in STATUS_WORDS), None)
        if found is None:
            return (f"no status (keep, discard or crash) in column {status_at + 1}"
                    + (f"; found {tokens[status_at]!r}" if status_at < len(tokens) else
                       f"; the line has only {len(tokens)} column(s)"))
        return (f"the status {found!r} is in column {tokens.index(found) + 1}, not column {status_at + 1}: "
                "a column is missing or split")
    if desc_at != len(header) - 1:
        # Only the last column may hold spaces when tabs were lost; otherwise fields would shift.
        if not tabbed:
            return "columns separated by spaces, and the description is not the last column: keep the tabs"
    if len(tokens) > len(header):
        if desc_at != len(header) - 1:
            return f"{len(tokens)} columns where the header has {len(header)}"
        tokens = tokens[:desc_at] + [" ".join(tokens[desc_at:])]  # tabs or spaces inside the description
    elif len(tokens) < len(header):
        tokens = tokens + [""] * (len(header) - len(tokens))
    if not tabbed and status_at < desc_at - 1:
        return "columns separated by spaces, with text columns between status and description: keep the tabs"
    return tokens


@dataclass
class Problem:
    """Why a line cannot be imported."""

    reason: str


def _read_val_bpb(raw_val: str, status: TrialStatus, notes: list[str]) -> float | None | Problem:
    """The line's val_bpb; None where there is no result; a Problem where a keep has nothing to keep."""
    value = _number(raw_val) if raw_val else None
    if raw_val and value is None and status != TrialStatus.CRASH:
        return Problem(f"val_bpb {raw_val!r} is not a number")
    if value is not None and math.isfinite(value) and value > MAX_VAL_BPB:
        if status == TrialStatus.KEEP:
            return Problem(f"a keep with val_bpb {raw_val}: not a bits-per-byte value (at most {MAX_VAL_BPB:g})")
        notes.append(f"val_bpb {raw_val} is not a bits-per-byte value (at most {MAX_VAL_BPB:g}); left out")
        return None
    if value is not None and (not math.isfinite(value) or value <= 0):
        if status == TrialStatus.KEEP:
            return Problem(f"a keep with val_bpb {raw_val}: there is no result to keep")
        if status == TrialStatus.DISCARD:
            notes.append(f"val_bpb {raw_val}: no result recorded")
        return None
    if value is None and status != TrialStatus.CRASH:
        if status == TrialStatus.KEEP:
            return Problem("a keep with no val_bpb: there is no result to keep")
        notes.append("no val_bpb recorded")
    elif status == TrialStatus.CRASH and value is not None:
        notes.append(f"a crash with val_bpb {raw_val}: the value is kept but not trusted")
    return value


def _read_memory_gb(raw_mem: str, notes: list[str]) -> float | None:
    memory = _number(raw_mem) if raw_mem else None
    if raw_mem and memory is None:
        notes.append(f"memory_gb {raw_mem!r} is not a number; left out")
    if memory is not None and math.isfinite(memory) and memory > MAX_MEMORY_GB:
        notes.append(f"memory_gb {raw_mem} is not a memory size; left out")
        return None
    if memory is not None and (not math.isfinite(memory) or memory <= 0):
        return None  # upstream writes 0.0 for crashes and where memory is not measured (CPU, MPS)
    return memory


def _parse_row(number: int, body: str, header: list[str]) -> UpstreamRow | Unreadable:
    if "val_bpb" not in header:
        return Unreadable(number, body, f"the header has no val_bpb column (it has {', '.join(header)}): "
                                        "not an autoresearch results.tsv")
    fields = _split(body, header)
    if isinstance(fields, str):
        return Unreadable(number, body, fields)
    cols = dict(zip(header, fields, strict=True))
    notes: list[str] = []
    status_word = cols["status"].lower()
    status = STATUS_WORDS[status_word]
    if status_word != status:
        notes.append(f"status {cols['status']!r} read as {status}")

    commit = cols.get("commit", "").strip()
    if commit.lower() in NO_COMMIT:
        commit = ""
        notes.append("no commit hash" + (" (a baseline row)" if status == TrialStatus.KEEP else ""))
    elif " " in commit:
        return Unreadable(number, body, f"the commit {commit!r} has spaces in it")

    value = _read_val_bpb(cols.get("val_bpb", "").strip(), status, notes)
    if isinstance(value, Problem):
        return Unreadable(number, body, value.reason)
    memory = _read_memory_gb(cols.get("memory_gb", "").strip(), notes)
    description = " ".join(cols.get("description", "").split()) or "(no description)"
    return UpstreamRow(number, commit or None, value, memory, status, description, cols, notes)


# ---- git: recovering diffs --------------------------------------------------------------------------------
class CommitDiffs:
    """Diffs of upstream commits from the person's repository (gitpython); what is missing is said."""

    def __init__(self, repo_path: Path) -> None:
        import git

        self._git = git
        try:
            self.repo = git.Repo(repo_path, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise ResultsImportError(f"--repo {repo_path} is not a git repository") from exc
        self.path = Path(repo_path)

    def resolve(self, ref: str) -> Any | None:
        """The commit object for a (short) hash, or None when the repository does not have it."""
        git = self._git
        try:
            commit = self.repo.commit(ref)
        except (git.BadName, git.BadObject, ValueError, git.GitCommandError):
            return None
        return commit if commit.type == "commit" else None

    def diff(self, parent: Any, commit: Any) -> str:
        # The run's bookkeeping files are not part of the change being tried.
        return self.repo.git.diff(parent.hexsha, commit.hexsha, "--", ".", ":(exclude)results.tsv",
                                  ":(exclude)run.log")


# ---- building the run -------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    tag: str
    run_dir: Path
    parsed: ParsedResults
    trial_ids: list[int]
    counts: dict[str, int]
    flagged: int
    floor: float | None
    missing_commits: list[str]
    diffs: int

    def summary_lines(self) -> list[str]:
        c = self.counts
        floor = "no noise floor given (--noise-sd): keeps are not flagged" if self.floor is None else \
            f"noise floor {fmt_change(self.floor, signed=False)}: {self.flagged} keep(s) flagged under it"
        lines = [f"imported {len(self.trial_ids)} trials into {self.run_dir} "
                 f"({c['keep']} keep, {c['discard']} discard, {c['crash']} crash); {floor}"]
        if self.diffs or self.missing_commits:
            lines.append(f"diffs recovered for {self.diffs} trial(s)")
        return lines


def _noise_for(noise_sd: float | None, noise_values: list[float] | None,
               budget_s: float) -> tuple[float | None, NoiseMeasurement | None]:
    if noise_values:
        try:
            measurement = NoiseMeasurement(noise_values, budget_s, "seeds given on import")
        except ValueError as exc:
            raise ResultsImportError(f"--noise-values: {exc}") from exc
        if measurement.sd is None:
            raise ResultsImportError("--noise-values needs at least two values (val_bpb of the same code, new seeds)")
        return measurement.sd, measurement
    if noise_sd is None:
        return None, None
    if not math.isfinite(noise_sd) or noise_sd < 0:
        raise ResultsImportError(f"--noise-sd must be a finite number >= 0, got {noise_sd}")
    return noise_sd, None


def _decision(status: TrialStatus, gain: float | None, floor: float | None, factor: float, sd: float | None,
              parent_id: int | None, flagged: bool) -> str:
    """Upstream's decision, and what the noise floor says about it, in one sentence."""
    if status == TrialStatus.CRASH:
        return "upstream recorded a crash"
    verb = "kept" if status == TrialStatus.KEEP else "discarded"
    if parent_id is None:
        return f"upstream {verb} it; no keep before it to compare against" + \
            (" (the baseline)" if status == TrialStatus.KEEP else "")
    if gain is None:
        return f"upstream {verb} it; no val_bpb to compare with trial {parent_id}"
    floor_words = "" if floor is None else f"the noise floor {fmt_change(floor, signed=False)} " \
                                           f"({factor:g} x sd {fmt_change(sd or 0.0, signed=False)})"
    if status == TrialStatus.KEEP:
        if gain <= 0:
            return (f"upstream kept it, but it is {'no better than' if gain == 0 else 'worse than'} its parent "
                    f"(trial {parent_id}) by {fmt_change(-gain, signed=False)}: flagged")
        if floor is None:
            return f"upstream kept it: gain {fmt_change(gain)} over trial {parent_id}; noise floor not given"
        if flagged:
            return f"upstream kept it: gain {fmt_change(gain)} over trial {parent_id} is under {floor_words}: flagged"
        return f"upstream kept it: gain {fmt_change(gain)} over trial {parent_id} is above {floor_words}"
    change = f"Δ {fmt_change(-gain)} vs trial {parent_id}"
    if floor is None or floor <= 0:
        return f"upstream discarded it: {change}"
    within = " (within the noise)" if abs(gain) < floor else ""
    return f"upstream discarded it: {change}, {abs(gain) / floor:.1f}x {floor_words}{within}"


@dataclass(frozen=True)
class _ParentKeep:
    """The last keep before a line: what the next trials are measured against."""

    id: int
    val: float | None
    commit: Any | None  # the git commit object, when --repo has it
    ref: str | None  # the commit as the file wrote it


@dataclass
class _Rows:
    """What is needed to turn parsed lines into trial rows, and what that finds on the way."""

    diffs: CommitDiffs | None
    policy: KeepPolicy
    sd: float | None
    floor: float | None
    floor_factor: float
    budget_s: float
    source_name: str
    missing: list[str] = field(default_factory=list)
    recovered: int = 0

    def diff_for(self, row: UpstreamRow, parent: _ParentKeep | None) -> tuple[Any | None, str]:
        """The row's commit object (None when not found or no --repo) and its diff against the parent keep."""
        if self.diffs is None or not row.commit:
            return None, ""
        commit_obj = self.diffs.resolve(row.commit)
        if commit_obj is None:
            self.missing.append(f"line {row.line}: commit {row.commit} is not in {self.diffs.path} "
                                "(garbage-collected, or from another clone); imported without a diff")
            return None, ""
        if parent is None:
            return commit_obj, ""
        base = parent.commit
        if base is None and commit_obj.parents:
            base = commit_obj.parents[0]
            row.notes.append("the parent keep has no commit here: diffed against the commit's git parent")
        if base is None:
            return commit_obj, ""
        self.recovered += 1
        return commit_obj, self.diffs.diff(base, commit_obj)

    def fields(self, row: UpstreamRow, parent: _ParentKeep | None) -> tuple[dict[str, Any], Any | None]:
        """The ledger fields of one imported trial, and its commit object."""
        commit_obj, diff = self.diff_for(row, parent)
        gain = flagged = None
        if parent is not None and row.val_bpb is not None and row.status != TrialStatus.CRASH:
            decided = self.policy.decide([parent.val], [row.val_bpb], self.sd)
            gain = decided.gain
            flagged = row.status == TrialStatus.KEEP and (decided.flagged or (gain is not None and gain <= 0))
        category_column = next((row.columns[c] for c in CATEGORY_COLUMNS if row.columns.get(c)), None)
        summary = {"source_line": str(row.line),
                   **{k: v for k, v in row.columns.items() if v and k != "description"}}
        if row.notes:
            summary["import_notes"] = "; ".join(row.notes)
        fields: dict[str, Any] = {
            "commit_sha": commit_obj.hexsha if commit_obj is not None else row.commit,
            "parent_commit": None if parent is None else (
                parent.commit.hexsha if parent.commit is not None else parent.ref),
            "parent_trial": None if parent is None else parent.id,
            "description": row.description,
            # Only a category the file states is stored; the graveyard and report infer the rest and say so.
            "category": normalize_category(category_column),
            "status": row.status,
            "val_bpb": row.val_bpb,
            "parent_val_bpb": None if parent is None else parent.val,
            "delta": None if gain is None else -gain,
            "flagged": bool(flagged),
            "decision": _decision(row.status, gain, self.floor, self.floor_factor, self.sd,
                                  None if parent is None else parent.id, bool(flagged)),
            "crash_reason": "upstream recorded a crash (no val_bpb)" if row.status == TrialStatus.CRASH else None,
            "diff": diff,
            "summary": summary,
            "budget_s": self.budget_s,
            "platform": {"source": f"imported from {self.source_name}"},
            "peak_vram_mb": None if row.memory_gb is None else row.memory_gb * 1024.0,
        }
        fields.update(_extra_columns(row))
        if commit_obj is not None:
            fields["started"] = fields["finished"] = float(commit_obj.committed_date)
        return fields, commit_obj


def _extra_columns(row: UpstreamRow) -> dict[str, Any]:
    """Throughput and size columns the file has beyond upstream's five, as trial fields."""
    out: dict[str, Any] = {}
    for name, value in row.columns.items():
        target = NUMERIC_COLUMNS.get(name)
        number = _number(value) if target and value else None
        if target and number is not None and 0 < number * target[1] <= MAX_EXTRA_VALUE:
            out[target[0]] = int(number) if target[0] == "num_steps" else number * target[1]
    return out


def _write_run(run_dir: Path, tag: str, config: RunConfig, rows: list[dict[str, Any]], *, path: Path,
               repo: Path | None, sd: float | None, measurement: NoiseMeasurement | None) -> list[int]:
    """Create the run folder and its ledger from the computed rows; on any failure remove what was made."""
    created_dir = not run_dir.exists()
    try:
        ledger = Ledger(RunPaths(run_dir).ledger, create=True)
        try:
            ledger.init_run(tag, config.to_json())
            ids = ledger.insert_imported_trials(rows)
            if ids != list(range(1, len(rows) + 1)):  # parents were numbered so, in a fresh ledger
                raise RuntimeError(f"imported trials got ids {ids[:3]}..., expected 1..{len(rows)}")
            if sd is not None:
                ledger.add_noise(commit_sha="import", budget_s=config.budget_s,
                                 platform="given on import" if measurement is None else measurement.platform,
                                 values=[] if measurement is None else measurement.values, sd=sd,
                                 factor=config.floor_factor)
            detail = f"imported from {path.resolve()}" + (f", diffs from {Path(repo).resolve()}" if repo else "")
            ledger.set_state(RunState.IMPORTED, detail)
            JournalFiles(ledger, run_dir).render_all()
        finally:
            ledger.close()
        shutil.copyfile(path, run_dir / "upstream-results.tsv")
    except BaseException:
        if created_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            ledger_path = RunPaths(run_dir).ledger
            for path_to_remove in (ledger_path, ledger_path.with_name(f"{ledger_path.name}-wal"),
                                   ledger_path.with_name(f"{ledger_path.name}-shm")):
                path_to_remove.unlink(missing_ok=True)
        raise
    return ids


def import_results(path: Path, tag: str, *, journals_root: Path, noise_sd: float | None = None,
                   noise_values: list[float] | None = None, floor_factor: float = DEFAULT_FLOOR_FACTOR,
                   budget_s: float = DEFAULT_BUDGET_S, repo: Path | None = None) -> ImportResult:
    """Create the run `tag` from an upstream results.tsv. Nothing is created when nothing can be read."""
    validate_tag(tag)
    path = Path(path)
    if not path.is_file():
        raise ResultsImportError(f"no file {path}")
    try:
        policy = KeepPolicy("flag", floor_factor)  # validates the factor
    except ValueError as exc:
        raise ResultsImportError(f"--floor-factor: {exc}") from exc
    if not (budget_s > 0 and math.isfinite(budget_s)):
        raise ResultsImportError(f"--budget must be a positive number of seconds, got {budget_s}")
    sd, measurement = _noise_for(noise_sd, noise_values, budget_s)
    config = RunConfig(tag=tag, journals_root=Path(journals_root), budget_s=budget_s, policy="flag",
                       floor_factor=floor_factor, agent="imported")
    run_dir = config.run_dir
    if RunPaths(run_dir).ledger.exists():
        raise ResultsImportError(f"run {tag!r} already exists in {journals_root}; choose another --tag "
                                 f"(or move {run_dir} aside to import again)")
    text, decode_notes = decode(path.read_bytes())
    parsed = parse_results(text)
    parsed.notes[:0] = decode_notes
    if not parsed.rows:
        why = "; ".join(str(u) for u in parsed.unreadable[:5]) or "the file has no rows"
        raise ResultsImportError(f"nothing in {path} could be read as upstream results: {why}")
    builder = _Rows(CommitDiffs(repo) if repo is not None else None, policy, sd, policy.floor_for(sd),
                    floor_factor, budget_s, path.name)
    rows: list[dict[str, Any]] = []
    parent: _ParentKeep | None = None
    for index, row in enumerate(parsed.rows, start=1):
        fields, commit_obj = builder.fields(row, parent)
        rows.append(fields)
        if row.status == TrialStatus.KEEP:
            parent = _ParentKeep(index, row.val_bpb, commit_obj, row.commit)

    # Everything is computed: only now is the run folder made, and removed again if writing fails.
    ids = _write_run(run_dir, tag, config, rows, path=path, repo=repo, sd=sd, measurement=measurement)
    counts = {str(s): sum(r["status"] == s for r in rows) for s in FINISHED_STATUSES}
    return ImportResult(tag, run_dir, parsed, ids, counts, sum(bool(r["flagged"]) for r in rows), builder.floor,
                        builder.missing, builder.recovered)
