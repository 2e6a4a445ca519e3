"""The agent's file access: a workspace path guard, exact search-and-replace, atomic writes, numbered reads.

Every refusal is an ``EditError`` whose message is read by the model, so each one says what to do
instead. Reading is allowed for any file inside the workspace except git internals; editing only for
the one editable file (``trainer/train.py``, or ``train.py`` when driving an upstream-style checkout).

The workspace is written by trials, which are untrusted: a file is opened one path component at a time
from the workspace's own directory, never following a symlink at open time (so nothing swapped in after
the check is followed), without blocking (a FIFO cannot hang the supervisor), and it must then be a
regular file with a single link (a hard link made by a trial could be a file from outside). Reads are
capped in bytes, whatever the file's size.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import BinaryIO

EDITABLE_PATH = "trainer/train.py"
DEFAULT_MAX_CHARS = 20_000
_MAX_LINE_CHARS = 2_000  # one minified or data line must not eat the whole read budget
_MAX_DIFF_CHARS = 8_000
_NEAR_CONTEXT = 2  # lines shown around the closest match of a failed search
_MAX_SHOWN_LINES = 40
_COUNT_ALL_LINES_BELOW = 10 * 2**20  # past this size, stop reading at the requested range
_SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
_LINE_NUMBER_PREFIX = re.compile(r"^\s*\d+\t")
MAX_PATH_CHARS = 1024  # a path longer than this is not a workspace file
# Control characters (C0 but for none: a path is one line; C1 too) and lone surrogates (not encodable).
_BAD_PATH_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_SCAN_BYTES = 32 * 2**20  # read_file never reads more of a file than this, whatever it is asked
_MAX_LINE_BYTES = 64 * 1024  # of one line, only this much is kept (it is shown cut at _MAX_LINE_CHARS)
MAX_EDIT_BYTES = 2 * 2**20  # the editable file is edited only below this size, and never grows past it
_MAX_MATCHES = 1000  # an ambiguous search is counted up to here
_MAX_DIR_ENTRIES = 1000  # a directory's listing in an error looks at this many entries


class EditError(ValueError):
    """A refused or failed file operation. The message is written for the model: it says what to do."""


@dataclass(frozen=True)
class EditResult:
    path: str  # relative to the workspace, posix style
    diff: str  # unified diff of the change (possibly cut, with a note)
    start_line: int  # first line of the replacement in the new file
    end_line: int  # last line of the replacement in the new file (== start_line for a deletion)


# --- paths ------------------------------------------------------------------------------------------


def _root(workspace: Path) -> Path:
    return Path(workspace).resolve()


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe to show the model and to store: control characters and lone surrogates (an undecodable
    file name) escaped, cut at ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return _BAD_PATH_CHAR.sub(lambda m: ascii(m.group())[1:-1], text)


def _list_files(root: Path, limit: int = 500, max_dirs: int = 2000) -> list[str]:
    """Workspace files for 'did you mean' hints; bounded so a huge data folder cannot stall an error."""
    out: list[str] = []
    for visited, (dirpath, dirnames, filenames) in enumerate(os.walk(root)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        base = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            out.append(printable((base / name).as_posix()))
            if len(out) >= limit:
                return out
        if visited >= max_dirs:
            break
    return out


def _lexical(workspace: Path, path: str, editable: str) -> tuple[Path, Path, str]:
    """Refuse what can be refused without touching the disk; return (root, candidate, shown name)."""
    root = _root(workspace)
    if not isinstance(path, str):
        raise EditError(f"the path must be a string, got {type(path).__name__}; e.g. {editable}")
    raw = path.strip()
    if not raw:
        raise EditError(f"the path is empty; give a path relative to the workspace root, e.g. {editable}")
    check_path_text(raw, editable)
    p = Path(raw)
    if ".." in p.parts:
        raise EditError(
            f"'{raw}' contains '..'; paths must stay inside the workspace. "
            f"Give the path from the workspace root without '..', e.g. {editable}"
        )
    if p.is_absolute():
        p = _inside_workspace(p, workspace, root, raw, editable)
    p = _upstream_alias(p, root, editable)
    if _in_git(p.parts):
        raise EditError(_git_message(raw))
    return root, root / p, raw


def _in_git(parts: tuple[str, ...]) -> bool:
    # .GIT is the same folder on a case-insensitive file system (macOS).
    return any(part.lower() == ".git" for part in parts)


def check_path_text(raw: str, editable: str = EDITABLE_PATH) -> None:
    """Refuse a path no workspace file can have: over-long, or with a control character or a lone surrogate."""
    if len(raw) > MAX_PATH_CHARS:
        raise EditError(
            f"the path is {len(raw):,} characters long; at most {MAX_PATH_CHARS} are accepted. "
            f"Give the path of a workspace file relative to its root, e.g. {editable}"
        )
    bad = _BAD_PATH_CHAR.search(raw)
    if bad:
        raise EditError(
            f"the path contains the character {ascii(bad.group())} at position {bad.start()}, which no "
            f"workspace file name has (control characters, NUL bytes and invalid unicode are refused). "
            f"Give a plain path relative to the workspace root, e.g. {editable}"
        )


def _inside_workspace(p: Path, workspace: Path, root: Path, raw: str, editable: str) -> Path:
    """An absolute path made relative to the workspace, or EditError when it points outside."""
    # The workspace may have been given through a symlinked path (e.g. /tmp on macOS): accept both.
    for base in (Path(os.path.abspath(workspace)), root):
        if p.is_relative_to(base):
            return p.relative_to(base)
    raise EditError(
        f"'{raw}' is an absolute path outside the workspace; give a path relative to the "
        f"workspace root instead, e.g. {editable}"
    )


def _upstream_alias(p: Path, root: Path, editable: str) -> Path:
    # A bare file name the model remembers from upstream autoresearch ("train.py", "prepare.py"):
    # look for it beside the editable file when it is not at the root.
    if len(p.parts) == 1 and not (root / p).exists():
        alias = Path(editable).parent / p
        if (root / alias).exists():
            return alias
    return p


def _git_message(raw: str) -> str:
    return (
        f"'{raw}' is inside .git, the supervisor's own repository data, which is off limits. "
        "Use the tools for past results and diffs to look at earlier trials."
    )


def _missing_message(root: Path, candidate: Path, raw: str) -> str:
    files = _list_files(root)
    rel = printable(candidate.relative_to(root).as_posix(), MAX_PATH_CHARS)
    guesses = difflib.get_close_matches(rel, files, n=3, cutoff=0.8)
    by_name = [f for f in files if PurePosixPath(f).name == PurePosixPath(rel).name and f not in guesses]
    guesses = (by_name + guesses)[:3]
    if guesses:
        hint = "Did you mean " + " or ".join(guesses) + "?"
    else:
        shown = ", ".join(files[:20]) + (", ..." if len(files) > 20 else "")
        hint = f"Files in the workspace: {shown or '(none)'}."
    return f"'{raw}' does not exist in the workspace (paths are relative to the workspace root). {hint}"


def _resolve(workspace: Path, path: str, editable: str) -> tuple[Path, Path, str]:
    try:
        return _resolve_unguarded(workspace, path, editable)
    except EditError:
        raise
    except (OSError, ValueError) as exc:  # a name too long for the file system, a loop of links, ...
        raise EditError(_os_message(str(path)[:200], exc, editable)) from None


def _os_message(raw: str, exc: BaseException, editable: str) -> str:
    reason = getattr(exc, "strerror", None) or next(iter(str(exc).splitlines()), "")[:200] or type(exc).__name__
    return (
        f"'{raw}' cannot be opened ({ascii(reason)[1:-1]}). Give the path of an existing workspace file "
        f"relative to the workspace root, e.g. {editable}"
    )


def _resolve_unguarded(workspace: Path, path: str, editable: str) -> tuple[Path, Path, str]:
    root, candidate, raw = _lexical(workspace, path, editable)
    real = candidate.resolve()
    if not real.is_relative_to(root):
        raise EditError(
            f"'{raw}' is a symlink that points outside the workspace; only files inside the workspace "
            f"can be used. Work with the files in the workspace itself, e.g. {editable}"
        )
    if _in_git(real.relative_to(root).parts):
        raise EditError(_git_message(raw))
    if not os.path.lexists(real):
        raise EditError(_missing_message(root, candidate, raw))
    if real.is_dir():
        found = islice((e for e in real.iterdir() if e.name != ".git"), _MAX_DIR_ENTRIES)
        entries = sorted(printable(e.name) + ("/" if e.is_dir() else "") for e in found)
        more = len(entries) > 30 or len(entries) == _MAX_DIR_ENTRIES
        shown = ", ".join(entries[:30]) + (", ..." if more else "")
        raise EditError(f"'{raw}' is a directory, not a file. It contains: {shown or '(nothing)'}")
    return root, real, raw


def _open_in_workspace(root: Path, real: Path, raw: str, editable: str) -> int:
    """A read-only descriptor of ``real`` (a path inside ``root``) that is known to be a regular file of
    the workspace with a single link; EditError otherwise.

    Opened component by component from the workspace's own directory with O_NOFOLLOW, so a symlink swapped
    in after ``_resolve`` checked the path is refused, not followed; O_NONBLOCK, so a FIFO cannot block.
    """
    parts = real.relative_to(root).parts
    if not parts:
        raise EditError(f"'{raw}' is the workspace itself, not a file; e.g. {editable}")
    try:
        fd = open_below(root, parts)
    except OSError as exc:
        raise EditError(_open_failed_message(raw, exc, editable)) from None
    try:
        _check_opened(fd, raw, editable)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_below(root: Path, parts: Sequence[str]) -> int:
    """A read-only descriptor of ``root/parts...``, opened component by component from ``root`` with
    O_NOFOLLOW (a symlink anywhere on the way is refused: OSError ELOOP or ENOTDIR) and O_NONBLOCK (a FIFO
    cannot block). What the descriptor is (a regular file, how many links) is the caller's to check."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if os.open not in os.supports_dir_fd:  # no openat: one open of the whole path, the last part unfollowed
        return os.open(Path(root, *parts), flags | nofollow | getattr(os, "O_NONBLOCK", 0))
    directory = getattr(os, "O_DIRECTORY", 0)
    dir_fd = os.open(root, flags | directory)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags | directory | nofollow, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], flags | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _open_failed_message(raw: str, exc: OSError, editable: str) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return (
            f"'{raw}' changed while it was being opened (a part of it is now a symlink); it is refused. "
            f"Work with the files the supervisor put in the workspace, e.g. {editable}"
        )
    if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):
        return f"'{raw}' is not a regular file (a socket or a device); only regular text files can be read."
    return _os_message(raw, exc, editable)


def _check_opened(fd: int, raw: str, editable: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise EditError(f"'{raw}' is {kind}; only regular text files of the workspace can be read or edited.")
    if info.st_nlink > 1:
        raise EditError(
            f"'{raw}' has {info.st_nlink} hard links, so it may be the same file as one outside the workspace "
            "(a trial can make such links); the supervisor only opens files with a single link. Work with "
            f"the files the supervisor put in the workspace, e.g. {editable}"
        )


def _read_bytes(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes of an open file, then one more byte to tell whether there was more."""
    with os.fdopen(fd, "rb", closefd=False) as f:
        return f.read(limit + 1)


def read_text_in_workspace(
    workspace: Path, path: str, *, editable: str = EDITABLE_PATH, max_bytes: int = MAX_EDIT_BYTES
) -> str:
    """The UTF-8 text of a workspace file, opened as safely as read_file does; EditError when it is
    outside the workspace, not a regular file, hard-linked, larger than ``max_bytes`` or not UTF-8.

    For any reader of a file a trial could have replaced (the editable file shown in the agent's turn).
    """
    root, real, raw = _resolve(workspace, path, editable)
    return _read_text_fd(_open_in_workspace(root, real, raw, editable), raw, max_bytes)


def _read_text_fd(fd: int, shown: str, max_bytes: int) -> str:
    try:
        data = _read_bytes(fd, max_bytes)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise EditError(
            f"'{shown}' is larger than {max_bytes:,} bytes, more than the supervisor reads of it whole "
            "(an edit needs the whole file); read parts of it with read_file and a line range."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EditError(f"'{shown}' is not UTF-8 text, so it cannot be edited by search and replace.") from None


def resolve_in_workspace(workspace: Path, path: str, *, editable: str = EDITABLE_PATH) -> Path:
    """The real path of an existing file inside the workspace, or EditError.

    ``path`` is relative to the workspace root (an absolute path inside it is accepted); a bare
    ``train.py`` means the editable file. ``..``, escaping symlinks, ``.git`` and missing files are refused.
    """
    return _resolve(workspace, path, editable)[1]


def _not_editable_message(raw: str, editable: str) -> str:
    name = PurePosixPath(raw).name
    if name == "prepare.py":
        why = (
            "prepare.py is the read-only harness (constants, data, tokenizer, dataloader, evaluate_bpb); "
            "the supervisor checks that it is unchanged before every trial. "
        )
    else:
        why = f"'{raw}' cannot be changed and no new files can be created. "
    return f"only {editable} may be edited; {why}Make your change inside {editable} instead."


def check_editable(workspace: Path, path: str, *, editable: str = EDITABLE_PATH) -> Path:
    """The real path of the editable file if ``path`` names it, else EditError."""
    try:
        return _check_editable(workspace, path, editable)
    except EditError:
        raise
    except (OSError, ValueError) as exc:
        raise EditError(_os_message(str(path)[:200], exc, editable)) from None


def _check_editable(workspace: Path, path: str, editable: str) -> Path:
    root, candidate, raw = _lexical(workspace, path, editable)
    # Decide editability before existence: "only train.py" is the useful answer to a new file too.
    if candidate.resolve() != (root / editable).resolve():
        raise EditError(_not_editable_message(raw, editable))
    return resolve_in_workspace(workspace, editable, editable=editable)


# --- search and replace -----------------------------------------------------------------------------


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _find_all(text: str, search: str, limit: int = _MAX_MATCHES) -> list[int]:
    # Overlapping matches count too: "aa" in "aaa" is ambiguous even though str.count says 1.
    found, pos = [], text.find(search)
    while pos != -1 and len(found) < limit:
        found.append(pos)
        pos = text.find(search, pos + 1)
    return found


def _lines_of(text: str, positions: list[int]) -> list[int]:
    """The 1-based line of each of the sorted ``positions``, in one pass over the text."""
    lines, line, last = [], 1, 0
    for pos in positions:
        line += text.count("\n", last, pos)
        last = pos
        lines.append(line)
    return lines


def _cut(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[:limit] + f" ... [{len(line) - limit} more chars]"


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{first + i:6d}\t{_cut(line)}" for i, line in enumerate(lines))


def _ws_norm(line: str) -> str:
    return " ".join(line.split())


def _trim_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _show(file_lines: list[str], start: int, count: int) -> str:
    """Lines start..start+count-1 (0-based) with a little context, numbered like cat -n."""
    lo = max(0, start - _NEAR_CONTEXT)
    hi = min(len(file_lines), start + count + _NEAR_CONTEXT, lo + _MAX_SHOWN_LINES)
    return _numbered(file_lines[lo:hi], lo + 1)


def _whitespace_hint(file_lines: list[str], search_lines: list[str]) -> str | None:
    wanted = [_ws_norm(line) for line in _trim_blank(search_lines)]
    if not wanted:
        return None
    hits = _whitespace_blind_hits(file_lines, wanted)
    if not hits:
        return None
    i = hits[0]
    k = len(wanted)
    where = f"line {i + 1}" if k == 1 else f"lines {i + 1}-{i + k}"
    more = f" (and {len(hits) - 1} other place{'s' if len(hits) > 2 else ''})" if len(hits) > 1 else ""
    tabs = _has_tab(file_lines[i : i + k]) != _has_tab(search_lines)
    kind = "tabs versus spaces" if tabs else "indentation or spacing"
    return (
        f"the search text was not found exactly, but it matches {where}{more} if whitespace is ignored: "
        f"the {kind} differs. Copy the text exactly as it is in the file, with its indentation:\n"
        f"{_show(file_lines, i, k)}"
    )


def _whitespace_blind_hits(file_lines: list[str], wanted: list[str]) -> list[int]:
    """Where the whitespace-normalised ``wanted`` lines start in the file (0-based)."""
    normed = [_ws_norm(line) for line in file_lines]
    k = len(wanted)
    hits = [i for i in range(len(normed) - k + 1) if normed[i : i + k] == wanted]
    if not hits and k == 1:
        # A fragment of one line, e.g. "lr=0.04" for "lr = 0.04  # peak": match inside lines.
        hits = [i for i, line in enumerate(normed) if wanted[0] in line]
    return hits


def _has_tab(lines: list[str]) -> bool:
    return any("\t" in line for line in lines)


def _trigrams(line: str) -> Counter[str]:
    # Indentation is left out: whitespace mistakes are caught separately, and runs of spaces would
    # otherwise dominate the counts.
    padded = f" {line.strip()} "
    return Counter(padded[i : i + 3] for i in range(len(padded) - 2))


def _nearest_window(file_lines: list[str], search_lines: list[str]) -> tuple[int, float]:
    """(start, similarity 0..1) of the window of len(search_lines) file lines closest to the search.

    Scored on character trigrams, slid incrementally over the file: SequenceMatcher on every window
    takes minutes on a long search, this takes milliseconds. The score averages recall (how much of the
    search is in the window, so a one-line fragment finds its line) and Dice (penalising windows full of
    unrelated text).
    """
    k = max(1, len(search_lines))
    target: Counter[str] = Counter()
    for line in search_lines:
        target.update(_trigrams(line))
    t_size = sum(target.values())
    if t_size == 0:
        return 0, 0.0
    grams = [_trigrams(line) for line in file_lines]
    window: Counter[str] = Counter()
    inter = w_size = 0

    def shift(counts: Counter[str], sign: int) -> None:
        nonlocal inter, w_size
        for gram, c in counts.items():
            before = min(window[gram], target[gram])
            window[gram] += sign * c
            inter += min(window[gram], target[gram]) - before
            w_size += sign * c

    best, best_i = -1.0, 0
    for j, counts in enumerate(grams):
        shift(counts, 1)
        if j >= k:
            shift(grams[j - k], -1)
        if j >= k - 1 or j == len(grams) - 1:
            score = (inter / t_size + 2 * inter / (t_size + w_size)) / 2
            if score > best:
                best, best_i = score, max(0, j - k + 1)
    return best_i, best


def _not_found_message(text: str, search: str) -> str:
    if not text:
        return "the file is empty, so the search text cannot match. Read the file again before editing."
    file_lines = text.split("\n")
    search_lines = search.split("\n")
    if _has_line_numbers(search_lines):
        return (
            "the search text was not found: it seems to include the line numbers shown by read_file "
            "(the number and tab at the start of each line). Leave them out and copy only the code."
        )
    hint = _whitespace_hint(file_lines, search_lines)
    if hint:
        return hint
    core = _trim_blank(search_lines) or search_lines
    i, ratio = _nearest_window(file_lines, core)
    k = len(core)
    window = file_lines[i : i + k]
    where = f"line {i + 1}" if k == 1 else f"lines {i + 1}-{i + len(window)}"
    closeness = f"{ratio:.0%} similar" if ratio >= 0.5 else f"only {ratio:.0%} similar"
    return (
        f"the search text was not found in the file. The closest text is at {where} ({closeness}):\n"
        f"{_show(file_lines, i, k)}\n"
        f"{_first_difference(core, window, i)}"
        "Copy the search text exactly from the file; read the file again if it may have changed."
    )


def _has_line_numbers(search_lines: list[str]) -> bool:
    """Whether every non-blank line starts with a number and a tab, as read_file shows them."""
    nonblank = [line for line in search_lines if line.strip()]
    return bool(nonblank) and all(_LINE_NUMBER_PREFIX.match(line) for line in nonblank)


def _first_difference(search_lines: list[str], window: list[str], start: int) -> str:
    """The first line where the search differs from the file's window at ``start`` (0-based), or ""."""
    for j, (mine, theirs) in enumerate(zip(search_lines, window, strict=False)):
        if mine != theirs:
            return (
                f"First difference: line {start + j + 1} of the file is\n    {_cut(theirs)!r}\n"
                f"but your search text has\n    {_cut(mine)!r}\n"
            )
    return ""


def _check_edit_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise EditError(f"{name} must be a string, got {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EditError(
            f"{name} contains an invalid character (a lone surrogate, {ascii(value[exc.start])}) at position "
            f"{exc.start}; send the text as valid unicode."
        ) from None
    if "\0" in value:
        raise EditError(f"{name} contains a NUL byte at position {value.index(chr(0))}; source code has none.")
    return value


def _apply(text: str, search: str, replace: str) -> tuple[str, int, str]:
    """(new text, offset of the replacement, replacement as written)."""
    search, replace = _check_edit_text("search", search), _check_edit_text("replace", replace)
    if not search:
        raise EditError(
            "the search text is empty. Put the exact lines you want to change in search; to insert new "
            "code, include a neighbouring existing line in both search and replace."
        )
    if search == replace:
        raise EditError("search and replace are identical, so there is no change. Put the new code in replace.")
    # The model sees lines without \r; match a file with Windows line endings anyway.
    if "\r\n" in text and "\r" not in search:
        search, replace = search.replace("\n", "\r\n"), replace.replace("\n", "\r\n")
    found = _find_all(text, search)
    if not found:
        raise EditError(_not_found_message(text.replace("\r\n", "\n"), search.replace("\r\n", "\n")))
    if len(found) > 1:
        lines = sorted(set(_lines_of(text, found)))
        shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
        times = f"{len(found)} times" if len(found) < _MAX_MATCHES else f"at least {_MAX_MATCHES} times"
        raise EditError(
            f"the search text occurs {times} (at line{'s' if len(lines) > 1 else ''} {shown}); "
            "it must occur exactly once. Add more surrounding lines to search so that it matches only "
            "the place you mean."
        )
    pos = found[0]
    return text[:pos] + replace + text[pos + len(search) :], pos, replace


def apply_edit(text: str, search: str, replace: str) -> str:
    """Replace the single exact occurrence of ``search`` in ``text``; EditError if absent or ambiguous."""
    return _apply(text, search, replace)[0]


# --- files ------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target and rename over it: a crash mid-write never leaves train.py half written.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def edit_file(
    workspace: Path, path: str, search: str, replace: str, *, editable: str = EDITABLE_PATH
) -> EditResult:
    """Apply one exact search-and-replace to the editable file, atomically; return the diff."""
    real = check_editable(workspace, path, editable=editable)
    root = _root(workspace)
    rel = real.relative_to(root).as_posix()
    # Bytes decoded as they are: the file's own line endings stay, so a write does not convert them.
    old = _read_text_fd(_open_in_workspace(root, real, rel, editable), rel, MAX_EDIT_BYTES)
    new, pos, written = _apply(old, search, replace)
    size = len(new.encode("utf-8"))
    if size > MAX_EDIT_BYTES:
        raise EditError(
            f"after this edit {rel} would be {size:,} bytes, over the limit of {MAX_EDIT_BYTES:,} bytes; "
            "make the change smaller (the training script should stay a readable single file)."
        )
    _atomic_write(real, new)  # an OSError (a full disk) is the machine's, not the model's: it propagates
    start = _line_of(new, pos)
    end = _line_of(new, max(pos, pos + len(written) - 1))
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{rel}", f"b/{rel}", n=2
        )
    )
    if len(diff) > _MAX_DIFF_CHARS:
        diff = diff[:_MAX_DIFF_CHARS] + f"\n[diff cut at {_MAX_DIFF_CHARS} characters]\n"
    return EditResult(rel, diff, start, end)


def read_file(
    workspace: Path,
    path: str,
    start_line: int | None = None,
    end_line: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    *,
    editable: str = EDITABLE_PATH,
) -> str:
    """A file's lines numbered like ``cat -n``, optionally a 1-based inclusive range, cut at max_chars.

    Any file inside the workspace may be read (not .git). A note at the end says what was left out and
    how to read on. At most MAX_SCAN_BYTES of the file are read, and of one line at most _MAX_LINE_BYTES are
    kept, so neither a huge file nor a huge line costs more than that.
    """
    _check_read_arguments(start_line, end_line, max_chars)
    root, real, raw = _resolve(workspace, path, editable)
    rel = printable(real.relative_to(root).as_posix(), MAX_PATH_CHARS)
    fd = _open_in_workspace(root, real, raw, editable)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if b"\0" in f.read(8192):
            raise EditError(f"'{rel}' is a binary file ({size} bytes); only text files can be read.")
        f.seek(0)
        lines = _NumberedLines(start_line or 1, end_line, max_chars, count_all=size <= _COUNT_ALL_LINES_BELOW)
        _FileScan(f, MAX_SCAN_BYTES).into(lines)
    return lines.render(rel)


_BLOCK = 64 * 1024  # lines that are only counted are counted a block at a time


class _FileScan:
    """Reads a file's lines (split on b"\\n" only, the numbering apply_edit reports) into _NumberedLines:
    the lines before the range and after it are only counted, in blocks; the lines shown are read one by
    one, each cut at _MAX_LINE_BYTES. Never reads past ``budget`` bytes of the file."""

    def __init__(self, f: BinaryIO, budget: int) -> None:
        self.f = f
        self.budget = budget

    def _left(self) -> int:
        return self.budget - self.f.tell()

    def _more(self) -> bool:
        """Whether the file goes on past the current position (reads one byte, then steps back)."""
        byte = self.f.read(1)
        if byte:
            self.f.seek(-1, os.SEEK_CUR)
        return bool(byte)

    def into(self, lines: _NumberedLines) -> None:
        number = self._skip(lines.first - 1)
        lines.total = number
        if number < lines.first - 1:  # the file ended, or the budget ran out, before the range
            lines.scan_capped = self._left() <= 0 and self._more()
            return
        while not lines.full():
            line = self._line()
            if not line:
                lines.scan_capped = self._left() <= 0 and self._more()
                return
            number += 1
            lines.take(number, line)
        if not self._more():
            return
        if not lines.count_all:
            lines.stopped_early = True
            return
        counted, capped = self._count_rest()
        lines.total = number + counted
        lines.scan_capped = capped

    def _skip(self, count: int) -> int:
        """Move past ``count`` lines, fewer if the file or the budget ends first; how many were passed."""
        passed = 0
        while passed < count and self._left() > 0:
            start = self.f.tell()
            block = self.f.read(min(_BLOCK, self._left()))
            if not block:
                break
            found = block.count(b"\n")
            if passed + found < count:
                passed += found
                continue
            at = -1
            for _ in range(count - passed):
                at = block.index(b"\n", at + 1)
            self.f.seek(start + at + 1)
            return count
        if passed < count and self._left() > 0 and self.f.tell() > 0:
            # The file ended: a last line without a newline is a line too.
            self.f.seek(-1, os.SEEK_CUR)
            passed += self.f.read(1) != b"\n"
        return passed

    def _line(self) -> bytes:
        """The next line, at most _MAX_LINE_BYTES of it (the rest is passed over); b"" at the end."""
        if self._left() <= 0:
            return b""
        line = self.f.readline(min(_MAX_LINE_BYTES, self._left()))
        if line and not line.endswith(b"\n"):
            while self._left() > 0:
                rest = self.f.readline(min(_MAX_LINE_BYTES, self._left()))
                if not rest or rest.endswith(b"\n"):
                    break
        return line

    def _count_rest(self) -> tuple[int, bool]:
        """(lines from here to the end, whether the budget ran out first)."""
        counted, last = 0, b"\n"
        while self._left() > 0:
            block = self.f.read(min(_BLOCK, self._left()))
            if not block:
                break
            counted += block.count(b"\n")
            last = block[-1:]
        capped = self._left() <= 0 and self._more()
        return counted + (last != b"\n" and not capped), capped


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_read_arguments(start_line: int | None, end_line: int | None, max_chars: int) -> None:
    for name, value in (("start_line", start_line), ("end_line", end_line)):
        if value is not None and not _is_positive_int(value):
            raise EditError(f"{name} must be a line number >= 1 (lines are numbered from 1), got {value!r}")
    if start_line is not None and end_line is not None and end_line < start_line:
        raise EditError(f"end_line {end_line} is before start_line {start_line}; give start_line <= end_line")
    if not _is_positive_int(max_chars):
        raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")


@dataclass
class _NumberedLines:
    """What read_file gathers line by line: the numbered lines that fit, and what it learns of the rest."""

    first: int  # the first line wanted (1-based)
    last_wanted: int | None
    max_chars: int
    count_all: bool  # keep counting past the range so the note can say "of N" (small files only)
    entries: list[str] = field(default_factory=list)
    used: int = 0  # characters in entries, newlines included
    shown_last: int = 0
    total: int = 0  # lines seen so far
    cut: bool = False  # max_chars was reached
    stopped_early: bool = False  # the total is unknown
    scan_capped: bool = False  # MAX_SCAN_BYTES of the file were read and it went on

    def full(self) -> bool:
        """Whether nothing more is to be shown: max_chars reached, or the range's last line taken."""
        return self.cut or (self.last_wanted is not None and self.total >= self.last_wanted)

    def take(self, number: int, raw: bytes) -> None:
        """Take line ``number`` (lines come in order, from ``first`` on)."""
        self.total = number
        line = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
        if len(line) > _MAX_LINE_CHARS:
            # A line read only in part (_MAX_LINE_BYTES of it) goes on for longer than can be said.
            more = "+" if len(raw) >= _MAX_LINE_BYTES and not raw.endswith(b"\n") else ""
            line = line[:_MAX_LINE_CHARS] + f" ... [line cut: {len(line) - _MAX_LINE_CHARS}{more} more chars]"
        entry = f"{number:6d}\t{line}"
        if self.entries and self.used + len(entry) + 1 > self.max_chars:
            self.cut = True
            return
        self.entries.append(entry[: self.max_chars])  # only a first line alone can be longer than max_chars
        self.used += len(entry) + 1
        self.shown_last = number

    def render(self, rel: str) -> str:
        """The numbered lines and a note saying what was left out and how to read on."""
        known = not self.stopped_early and not self.scan_capped
        first, shown_last, total = self.first, self.shown_last, self.total
        if total == 0 and known:
            return f"[{rel} is empty]"
        if first > total and self.scan_capped:
            raise EditError(
                f"'{rel}' is too large to read that far: read_file reads only the first {MAX_SCAN_BYTES / 2**20:g} "
                f"MB of a file, which hold {total} whole lines, and start_line {first} is beyond them."
            )
        if first > total:
            raise EditError(f"'{rel}' has {total} lines; start_line {first} is past the end.")
        of = f" of {total}" if known else ""
        text = "\n".join(self.entries)
        if self.cut:
            return text + (
                f"\n[truncated at {self.max_chars} characters: showing lines {first}-{shown_last}{of}. "
                f"Call again with start_line={shown_last + 1} to read on.]"
            )
        if self.scan_capped:
            return text + (f"\n[lines {first}-{shown_last}; read_file stops after the first "
                           f"{MAX_SCAN_BYTES / 2**20:g} MB of a file, so the rest cannot be shown]")
        if first > 1 or not known or shown_last < total:
            return text + f"\n[lines {first}-{shown_last}{of}]"
        return text
