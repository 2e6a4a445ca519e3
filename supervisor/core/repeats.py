"""No repeats: has this exact change already been measured? (issue 19, autoresearch #613)

A trial's change is what its diff adds and removes, not where: the `+`/`-` lines, without the file headers,
the hunk headers (line numbers) or the context lines, so the same change made on another parent still
matches. Two tests, in order of trust:

- **exact**: the changed lines are the same, character for character;
- **near**: the changed lines are the same after normalising what a language model rewrites without meaning
  to change the code, when it makes an edit again from scratch. Each choice keeps two different experiments
  apart (0.001 and 0.002 always differ):
  - whitespace between tokens (`x=1` is `x = 1`), blank lines, and a statement reflowed over several lines
    (lines inside open brackets or after a backslash join their statement). Leading indentation is kept:
    in Python it says which block a line belongs to, so it is code;
  - numeric constants by value, exactly (decimal arithmetic, never floats): `1e-3`, `0.001`, `0.0010` and
    `1E-03` are one number, as are `1_000`, `1000`, `1000.0`, `1e3` and `0x3e8`. int and float are merged
    too: a trainer's constants are used as either, and a false match costs the agent one word
    (`retest_of`) where a missed one costs a whole trial;
  - string quotes and prefixes (`'gelu'` is `"gelu"`): the same string object;
  - comments: they never change what runs, so a change that only rewords a comment is the same code;
  - a trailing comma before a closing bracket where it cannot change the value (`f(a, b,)`, `[a,]`,
    `{a: 1,}`); never in `(a,)`, a one-element tuple, nor in `x[a,]`, which indexes with a tuple. A comma
    at the end of a line is kept: a lone line does not show whether it is inside brackets (`x = 1,` is a
    tuple).
  Not normalised, because they can change meaning: parentheses (precedence), names, operators, constant
  expressions (`2**10` is not folded into `1024`: it is what the agent wrote, and evaluating code is not
  this module's business).

A region of the diff (its adjacent `-` and `+` lines) that normalises to no change (a reworded comment,
respaced code) is dropped from the near test, and a change that is all such regions (only comments) is never
a near repeat of anything: it would match every other comment-only change. An empty change (a baseline, an
unchanged re-run of a keep, pooled into the noise floor) is never a repeat.

Only judged trials count as earlier results: an aborted trial (stopped, or killed with the supervisor) was
never measured. Pure: no I/O.
"""

from __future__ import annotations

import ast
import functools
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, InvalidOperation

from supervisor.core.types import Trial

EXACT = "exact"
NEAR = "near"
TAB_SIZE = 8  # Python's own rule for a tab in indentation
# Every run_trial compares with every earlier trial: their keys are kept, so each diff is read once a run.
KEYS_KEPT = 1024  # a night is a few hundred trials

_TOKEN = re.compile(r"""
    (?P<comment>\#.*)
  | (?P<string>(?:[rRbBuUfF]{1,2})?(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))
  | (?P<number>0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
               |(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?)
  | (?P<name>[^\W\d]\w*)
  | (?P<op>\*\*=?|//=?|>>=?|<<=?|->|:=|\.\.\.|[-+*/%@&|^=<>!]=|\S)
""", re.VERBOSE)
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = set(_OPENERS.values())

Statement = tuple[int, tuple[str, ...]]  # (indentation in columns, normalised tokens)
Region = tuple[tuple[Statement, ...], tuple[Statement, ...]]  # (what it removes, what it adds)


@dataclass(frozen=True)
class RepeatMatch:
    """The earlier trial a new change repeats."""

    trial: Trial
    match: str  # EXACT | NEAR
    same_parent: bool  # the earlier trial changed the same code (the same keep); else another base


# ---- a diff's change ---------------------------------------------------------------------------------------
def change_regions(diff: str) -> list[tuple[list[str], list[str]]]:
    """The diff's changed lines, region by region: (removed, added) without their +/- signs, in order.

    File headers and everything before a file's first hunk are skipped (a removed line `-- x` shows as
    `--- x`, so headers are told apart by position, not by their look); so are hunk headers, context lines
    and git's "no newline at end of file" marks. A context line ends a region.
    """
    regions: list[tuple[list[str], list[str]]] = []
    removed: list[str] = []
    added: list[str] = []
    in_hunk = False

    def close() -> None:
        nonlocal removed, added
        if removed or added:
            regions.append((removed, added))
        removed, added = [], []

    for line in diff.splitlines():
        if line.startswith("diff --git") or not in_hunk:
            in_hunk = line.startswith("@@")
            close()
        elif line.startswith("@@"):
            close()
        elif line.startswith("-"):
            if added:  # a removal after additions starts a new region (git writes removals first)
                close()
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
        elif not line.startswith("\\"):
            close()  # a context line
    close()
    return regions


@functools.lru_cache(maxsize=KEYS_KEPT)
def changed_lines(diff: str) -> tuple[str, ...]:
    """The exact test's key: every changed line with its sign, in order."""
    return tuple(f"{sign}{line}" for removed, added in change_regions(diff)
                 for sign, lines in (("-", removed), ("+", added)) for line in lines)


# ---- the near test's normalisation ----------------------------------------------------------------------------
def _number(text: str) -> str:
    """A numeric literal by its exact value: 1e-3, 0.001 and 0.0010 give "0.001"; 1000.0, 1e3 and 1_000 "1E+3"."""
    plain = text.replace("_", "").lower()
    if plain.endswith("j"):
        return plain  # an imaginary literal: left as written
    try:
        if plain[:2] in ("0x", "0o", "0b"):
                plain = str(int(plain, 0))
        # normalize() strips trailing zeros, so equal values print alike; with every digit kept (no rounding to
        # the default 28) and any exponent allowed, and never written out in full (1e999999999 stays short).
        exact = Context(prec=len(plain) + 1, Emax=MAX_EMAX, Emin=MIN_EMIN)
        return str(Decimal(plain).normalize(exact))
    except (InvalidOperation, ValueError):  # ValueError: an integer too long to convert
        return plain


def _string(text: str) -> str:
    """A string literal by its value (quotes and a `u` prefix do not matter); as written when it is an f-string
    or holds a backslash (an invalid escape would make the parser warn, and the text is then kept as it is)."""
    if "f" in text[:2].lower() or "\\" in text:
        return text
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _tokens(line: str) -> list[tuple[str, str]]:
    """(kind, normalised text) of one line's tokens; comments dropped."""
    out = []
    for m in _TOKEN.finditer(line):
        kind = m.lastgroup or "op"
        if kind == "comment":
            continue
        text = m.group()
        if kind == "number":
            text = _number(text)
        elif kind == "string":
            text = _string(text)
        out.append((kind, text))
    return out


def _indent(line: str) -> int:
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width = (width // TAB_SIZE + 1) * TAB_SIZE
        else:
            break
    return width


def _statements(lines: Sequence[str]) -> tuple[Statement, ...]:
    """Lines joined into statements: a line inside open brackets, or after a backslash, continues the one
    before it (its indentation is layout, not code). Blank and comment-only lines give nothing."""
    statements: list[tuple[int, list[tuple[str, str]]]] = []
    depth = 0
    continued = False
    for line in lines:
        tokens = _tokens(line)
        joins = (depth > 0 or continued) and bool(statements)
        continued = bool(tokens) and tokens[-1] == ("op", "\\")
        if continued:
            tokens.pop()
        if joins:
            statements[-1][1].extend(tokens)
        elif tokens:
            statements.append((_indent(line), tokens))
        depth = max(0, depth + sum((t in _OPENERS) - (t in _CLOSERS) for kind, t in tokens if kind == "op"))
    return tuple((indent, _without_spare_commas(tokens)) for indent, tokens in statements)


def _without_spare_commas(tokens: list[tuple[str, str]]) -> tuple[str, ...]:
    """The tokens without a trailing comma that cannot change the value (see the module's notes)."""
    out: list[str] = []
    commas: list[int] = []  # per open bracket: the commas directly inside it
    cosmetic: list[bool] = []  # per open bracket: whether a lone trailing comma there is only layout
    previous: tuple[str, str] | None = None
    for kind, text in tokens:
        if kind == "op" and text in _OPENERS:
            commas.append(0)
            cosmetic.append(_comma_is_cosmetic(text, previous))
        elif kind == "op" and text == "," and commas:
            commas[-1] += 1
        elif kind == "op" and text in _CLOSERS and commas:
            inside, spare = commas.pop(), cosmetic.pop()
            if out and out[-1] == "," and (spare or inside >= 2):
                out.pop()  # with another comma in the bracket, the value is a tuple either way
        out.append(text)
        previous = (kind, text)
    return tuple(out)


def _comma_is_cosmetic(opener: str, previous: tuple[str, str] | None) -> bool:
    """Whether a lone trailing comma in this bracket leaves the value alone: a call's arguments, a list, a set
    or dict display; not a parenthesised tuple `(a,)` nor a subscript `x[a,]`. After a soft keyword
    (`match`, `type`), which may or may not be a name, the comma is kept."""
    if previous is not None and previous[0] == "name" and keyword.issoftkeyword(previous[1]):
        return False
    follows_value = previous is not None and (
        (previous[0] == "name" and not keyword.iskeyword(previous[1]))
        or previous[0] == "string" or previous[1] in _CLOSERS)
    if opener == "(":
        return follows_value  # a call
    if opener == "[":
        return not follows_value  # a list display (after a value, a subscript)
    return True


@functools.lru_cache(maxsize=KEYS_KEPT)
def near_signature(diff: str) -> tuple[Region, ...]:
    """The near test's key: each region's removed and added statements, normalised; regions that normalise to
    no change (a reworded comment, respaced code) are left out."""
    out = []
    for removed, added in change_regions(diff):
        region = (_statements(removed), _statements(added))
        if region[0] != region[1]:
            out.append(region)
    return tuple(out)


# ---- finding the earlier trial ---------------------------------------------------------------------------------
def same_change(diff: str, other: str) -> bool:
    """Whether two diffs make the same change: the same changed lines, or the same after normalising."""
    exact = changed_lines(diff)
    if not exact:
        return False
    if changed_lines(other) == exact:
        return True
    near = near_signature(diff)
    return bool(near) and near_signature(other) == near


def find_repeat(diff: str, parent_trial: int | None, earlier: Sequence[Trial]) -> RepeatMatch | None:
    """The earlier trial whose change `diff` repeats, or None.

    `parent_trial` is the keep the new change is made on (None: the run's starting script, before any keep).
    Exact matches come before near ones, the same parent before another base, then the most recent.
    Only judged trials count (keep, discard, crash, held): an aborted or running one was never measured.
    """
    exact = changed_lines(diff)
    if not exact:
        return None  # a baseline or an unchanged re-run of a keep: a sample, never a repeat
    near = near_signature(diff)
    best: tuple[tuple[int, int, int], RepeatMatch] | None = None
    for trial in earlier:
        if not trial.status.finished or not trial.diff.strip():
            continue
        if changed_lines(trial.diff) == exact:
            match = EXACT
        elif near and near_signature(trial.diff) == near:
            match = NEAR
        else:
            continue
        same_parent = trial.parent_trial == parent_trial
        rank = (match == EXACT, same_parent, trial.id)
        if best is None or rank > best[0]:
            best = (rank, RepeatMatch(trial, match, same_parent))
    return None if best is None else best[1]
