"""The scale-transfer check, its pure half: what "a larger scale" does to a script, the chain of keeps, the labels.

A night's keeps were each judged at one scale (the run's model and budget). `autoresearch transfer` runs the
chain of keeps again at a larger one, every keep's code beside its parent's with the same seeds, and labels
each keep from its gain there (parent mean - keep mean, positive is better):

- ``scale-stable``: the gain at scale is positive beyond noise (gain - factor x se > 0);
- ``scale-bound``: the gain at scale is negative beyond noise (gain + factor x se < 0): the win belonged to the
  small scale and reverses at the larger one;
- ``unknown``: within noise either way, or too few runs to say (more seeds would tell).

``se`` is the standard error of the difference of the two means, sqrt(1/n_keep + 1/n_parent) x sd, where sd
pools the spread of every code's seeds at that scale (each code is run with the same seeds, so the pool
measures the seed's noise at that scale, which the run's floor, measured at the small scale, does not).
``factor`` is the run's floor factor: the same bar a keep had to clear at the small scale.

The larger scale is written into the script, not passed to it: the keep's own file gets one line after the
last top-level assignment of each constant it scales (``DEPTH = max(1, round(DEPTH * 2))``), so whatever the
agent did to the model, the scaled run is that model, deeper. A keep whose script has no such assignment cannot
be scaled and is labelled unknown, with the reason.
"""

from __future__ import annotations

import ast
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from supervisor.core.policy import DEFAULT_FLOOR_FACTOR, pooled_sd
from supervisor.core.types import Trial, TrialStatus

DEFAULT_DEPTH_FACTOR = 2.0
DEFAULT_BUDGET_FACTOR = 3.0
DEFAULT_TRANSFER_SEEDS = 3
DEFAULT_DEPTH_NAME = "DEPTH"
TRANSFER_SEED_BASE = 5000  # every code of the chain runs seeds 5000, 5001, ...: paired, as the night's trials are
SCALED_MARK = "# autoresearch transfer"


class ScaleError(ValueError):
    """A scale that cannot be applied to a script, or a scale given wrongly; the message says which."""


class TransferLabel(StrEnum):
    STABLE = "scale-stable"
    BOUND = "scale-bound"
    UNKNOWN = "unknown"


def _check_factor(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ScaleError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def parse_override(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line: VALUE must be a Python literal (a number, a string, True...)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name.isidentifier() or not value:
        raise ScaleError(f"--set takes NAME=VALUE with a Python name and a literal value, got {text!r}")
    try:
        ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ScaleError(f"--set {name}: {value!r} is not a Python literal (a number, a quoted string, True, "
                         "False or None)") from None
    return name, value


@dataclass(frozen=True)
class Scale:
    """A larger scale: the model's depth and the training budget multiplied, and constants set outright."""

    depth_factor: float = DEFAULT_DEPTH_FACTOR
    budget_factor: float = DEFAULT_BUDGET_FACTOR
    depth_name: str = DEFAULT_DEPTH_NAME
    overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_factor("the depth factor", self.depth_factor)
        _check_factor("the budget factor", self.budget_factor)
        if not self.depth_name.isidentifier():
            raise ScaleError(f"the depth constant must be a Python name, got {self.depth_name!r}")
        if self.depth_factor == 1 and self.budget_factor == 1 and not self.overrides:
            raise ScaleError("this scale is the run's own (depth x1, budget x1, nothing set): nothing would "
                             "transfer; give a larger --depth-factor, --budget-factor or a --set")

    @property
    def key(self) -> str:
        """The scale in words; runs compare only with runs of the same key."""
        parts = []
        if self.depth_factor != 1:
            parts.append(f"{self.depth_name} x{self.depth_factor:g}")
        if self.budget_factor != 1:
            parts.append(f"budget x{self.budget_factor:g}")
        parts += [f"{name}={value}" for name, value in self.overrides]
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"depth_factor": self.depth_factor, "budget_factor": self.budget_factor,
                "depth_name": self.depth_name, "overrides": [list(o) for o in self.overrides]}

    def budget_s(self, base: float) -> float:
        return base * self.budget_factor

    def budget_tokens(self, base: int | None) -> int | None:
        return None if base is None else max(1, round(base * self.budget_factor))


def _last_assignments(tree: ast.Module) -> dict[str, ast.stmt]:
    """The last top-level statement that assigns each plain name (`X = ...`, `X: int = ...`)."""
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                found[target.id] = node
    return found


def _bound_after(tree: ast.Module, after: ast.stmt, name: str) -> int | None:
    """The line of a module-level binding of ``name`` after ``after`` (in an `if`, a `for` target, a tuple
    assignment, `X += 1`, an import, a `global` in a function...), which would undo the scale's line; None if none."""
    later = [node for node in tree.body if node.lineno > (after.end_lineno or after.lineno)]
    for statement in later:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store | ast.Del) \
                    and not _inside_function(statement, node):
                return node.lineno
            if isinstance(node, ast.Global) and name in node.names:
                return node.lineno
            if isinstance(node, ast.Import | ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                return node.lineno
    return None


def _inside_function(statement: ast.stmt, target: ast.AST) -> bool:
    """Whether ``target`` sits in a function or class body within ``statement`` (a local binding, not the module's)."""
    for node in ast.walk(statement):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef) and \
                any(child is target for child in ast.walk(node)):
            return True
    return False


def scale_script(source: str, scale: Scale) -> str:
    """The script at the larger scale: one line after each scaled constant's last top-level assignment.

    Raises ScaleError when the script does not parse or lacks a constant the scale changes."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ScaleError(f"the script does not parse ({exc.msg}, line {exc.lineno})") from None
    assigned = _last_assignments(tree)
    lines: dict[str, str] = {}
    if scale.depth_factor != 1:
        name = scale.depth_name
        lines[name] = f"{name} = max(1, round({name} * {scale.depth_factor!r}))"
    for name, value in scale.overrides:
        lines[name] = f"{name} = {value}"
    missing = [name for name in lines if name not in assigned]
    if missing:
        raise ScaleError(f"the script has no top-level assignment of {', '.join(missing)} to scale (name the "
                         "constant with --depth-name, or set it with --set NAME=VALUE)")
    for name in lines:
        rebound = _bound_after(tree, assigned[name], name)
        if rebound is not None:
            raise ScaleError(f"the script binds {name} again on line {rebound}, after its last plain assignment: "
                             "a scale line there would be undone")
    out = source.splitlines(keepends=True)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    # From the bottom up, so earlier insertions do not move the later statements' line numbers.
    for name in sorted(lines, key=lambda n: assigned[n].end_lineno or 0, reverse=True):
        end = assigned[name].end_lineno or len(out)
        out.insert(end, f"{lines[name]}  {SCALED_MARK}: {scale.key}\n")
    return "".join(out)


@dataclass(frozen=True)
class ChainLink:
    """A keep and the keep it was built on (None for the chain's root, the night's first keep)."""

    keep: Trial
    parent: Trial | None


def keep_chain(trials: Sequence[Trial], last: int | None = None) -> list[ChainLink]:
    """The branch's chain of keeps, oldest first, each with its parent keep. ``last``: only the last K keeps
    (with their parents) are judged; the root of the kept part is still run, as their parent."""
    keeps = [t for t in trials if t.status == TrialStatus.KEEP and t.commit_sha]
    by_id = {t.id: t for t in keeps}
    links = [ChainLink(k, by_id.get(k.parent_trial) if k.parent_trial is not None else None) for k in keeps]
    if last is not None:
        if last < 1:
            raise ScaleError(f"--last must be at least 1, got {last}")
        links = [link for link in links if link.parent is not None][-last:]
    return links


def codes_to_run(chain: Sequence[ChainLink]) -> list[Trial]:
    """Every trial whose code the check runs: each judged keep and its parent, once each, oldest first."""
    codes: dict[int, Trial] = {}
    for link in chain:
        for trial in (link.parent, link.keep):
            if trial is not None:
                codes[trial.id] = trial
    return [codes[i] for i in sorted(codes)]


@dataclass(frozen=True)
class TransferVerdict:
    keep: Trial
    parent: Trial | None
    label: TransferLabel
    gain: float | None  # parent mean - keep mean at scale
    se: float | None  # standard error of that difference
    keep_runs: int
    parent_runs: int
    reason: str
    base_gain: float | None = None  # the same gain at the night's scale, for comparison

    def as_dict(self) -> dict:
        return {"keep": self.keep.id, "parent": None if self.parent is None else self.parent.id,
                "description": self.keep.description, "label": str(self.label), "gain": self.gain, "se": self.se,
                "keep_runs": self.keep_runs, "parent_runs": self.parent_runs, "base_gain": self.base_gain,
                "reason": self.reason}


@dataclass(frozen=True)
class TransferResult:
    """Every judged keep's verdict at one scale, and the noise the verdicts used."""

    scale_key: str
    verdicts: list[TransferVerdict] = field(default_factory=list)
    sd: float | None = None
    factor: float = DEFAULT_FLOOR_FACTOR

    def counts(self) -> dict[str, int]:
        out = {str(label): 0 for label in TransferLabel}
        for verdict in self.verdicts:
            out[str(verdict.label)] += 1
        return out


def _base_gain(link: ChainLink) -> float | None:
    keep, parent = link.keep.mean_val_bpb, None if link.parent is None else link.parent.mean_val_bpb
    return None if keep is None or parent is None else parent - keep


def label_chain(chain: Sequence[ChainLink], values: Mapping[int, Sequence[float]],
                factor: float = DEFAULT_FLOOR_FACTOR, unscalable: Mapping[int, str] | None = None,
                scale_key: str = "") -> TransferResult:
    """Each keep's label from the values its code and its parent's code ran at scale (by trial id)."""
    unscalable = unscalable or {}
    groups = [(statistics.stdev(v), len(v)) for v in values.values() if len(v) >= 2]
    sd = pooled_sd(groups)
    verdicts = [_verdict(link, values, sd, factor, unscalable) for link in chain if link.parent is not None]
    return TransferResult(scale_key, verdicts, sd, factor)


def _verdict(link: ChainLink, values: Mapping[int, Sequence[float]], sd: float | None, factor: float,
             unscalable: Mapping[int, str]) -> TransferVerdict:
    keep, parent = link.keep, link.parent
    assert parent is not None
    kv, pv = list(values.get(keep.id, ())), list(values.get(parent.id, ()))
    base = _base_gain(link)

    def unknown(reason: str, gain: float | None = None, se: float | None = None) -> TransferVerdict:
        return TransferVerdict(keep, parent, TransferLabel.UNKNOWN, gain, se, len(kv), len(pv), reason, base)

    for trial in (parent, keep):
        if trial.id in unscalable:
            return unknown(f"trial {trial.id}'s script could not be scaled: {unscalable[trial.id]}")
    if not kv or not pv:
        who = "the keep" if not kv else "its parent"
        return unknown(f"no finished run of {who} at this scale")
    gain = statistics.fmean(pv) - statistics.fmean(kv)
    if sd is None:
        return unknown("the noise at this scale is unmeasured (every code needs two runs or more): "
                       "run again with --seeds 2 or more", gain)
    if sd == 0:
        return unknown("every code's seeds gave exactly the same val_bpb: the script ignores its seed, so the "
                       "noise at this scale cannot be measured", gain)
    se = sd * math.sqrt(1 / len(kv) + 1 / len(pv))
    band = factor * se
    runs = f"{len(kv)} vs {len(pv)} runs, se {se:.2g}"
    if gain - band > 0:
        return TransferVerdict(keep, parent, TransferLabel.STABLE, gain, se, len(kv), len(pv),
                               f"gain {gain:+.4f} at scale, beyond {factor:g} x se ({runs})", base)
    if gain + band < 0:
        return TransferVerdict(keep, parent, TransferLabel.BOUND, gain, se, len(kv), len(pv),
                               f"gain {gain:+.4f} at scale: worse than its parent beyond {factor:g} x se ({runs})",
                               base)
    needed = _runs_to_separate(gain, sd, factor)
    more = f"; about {needed} runs of each would separate a gain this size" if needed else ""
    return unknown(f"gain {gain:+.4f} at scale is within {factor:g} x se ({runs}){more}", gain, se)


def _runs_to_separate(gain: float, sd: float, factor: float) -> int | None:
    """Runs of each code at which factor x se falls under |gain| (None for a zero gain or a cap over 100)."""
    if gain == 0 or sd <= 0:
        return None
    needed = math.ceil(2 * (factor * sd / abs(gain)) ** 2)
    return needed if needed <= 100 else None
