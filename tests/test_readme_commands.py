"""The README's commands work as written: the first hour of a new user is spent copying them.

Every `autoresearch ...` line the README shows (in code blocks and in inline code) is parsed by the CLI's real
parser, its subcommand answers `--help`, and the cheap ones (`control`, `status`) run for real. The two
install-and-run lines at the top are the ones `.ci/run` executes, and every third-party module the project
imports is declared in pyproject.toml, so that those lines work in a fresh virtual environment.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.metadata
import io
import itertools
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor.cli.main import build_parser, main
from supervisor.core.config import RunConfig, existing_file, existing_folder
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"

# Values for the README's placeholders: numbers where the option wants a number.
PLACEHOLDER_VALUES = {"N": "3", "SECONDS": "60", "DOLLARS": "20", "FILE": "out.md", "DIR": "out-dir",
                      "PATH": "some-repo"}
INLINE_COMMAND = re.compile(r"`(autoresearch(?: [^`]*)?)`")
ALTERNATIVES = re.compile(r"^[^\s|]+(?:\|[^\s|]+)+$")
ANGLE_PLACEHOLDER = re.compile(r"<[^<>]+>")
NAMED_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class ReadmeCommand:
    """One `autoresearch ...` command as the README shows it."""

    line_no: int
    text: str  # as written, without the comment
    comment: str  # its trailing comment, with the comment-only lines that continue it
    in_code_block: bool

    @property
    def tokens(self) -> list[str]:
        return shlex.split(self.text)[1:]  # without the leading "autoresearch"


# ---- reading the README -----------------------------------------------------------------------------------
def split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its `# comment` (a # that starts a word outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _code_block_commands(line_no: int, line: str) -> list[ReadmeCommand]:
    code, comment = split_comment(line)
    commands = []
    for segment in re.split(r"\s(?:&&|;)\s", code):  # `pip install ... && autoresearch demo`
        segment = segment.strip()
        if segment == "autoresearch" or segment.startswith("autoresearch "):
            commands.append(ReadmeCommand(line_no, segment, comment, in_code_block=True))
    return commands


def readme_commands(text: str) -> list[ReadmeCommand]:
    """Every `autoresearch` command in a markdown text, in code blocks and in inline code spans."""
    commands: list[ReadmeCommand] = []
    in_block = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block and line[:1].isspace() and line.lstrip().startswith("#") and commands:
            # An indented comment-only line goes on with the comment of the command above it.
            last = commands[-1]
            comment = f"{last.comment} {line.strip()[1:].strip()}"
            commands[-1] = ReadmeCommand(last.line_no, last.text, comment, last.in_code_block)
        elif in_block:
            commands.extend(_code_block_commands(line_no, line))
        else:
            commands.extend(ReadmeCommand(line_no, span, "", in_code_block=False)
                            for span in INLINE_COMMAND.findall(line))
    return commands


# ---- from a README line to argument lists -----------------------------------------------------------------
def _fill_placeholder(token: str) -> str:
    token = ANGLE_PLACEHOLDER.sub("x", token)
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", token):
        return PLACEHOLDER_VALUES.get(token, "x")
    return token


def _choices(token: str) -> list[str]:
    """`pause|resume|stop` stands for three commands; anything else for itself."""
    options = token.split("|") if ALTERNATIVES.match(token) else [token]
    return [_fill_placeholder(option) for option in options]


def _group_optional(tokens: list[str]) -> list[tuple[bool, list[str]]]:
    """Tokens in (optional, words) groups: `[-o FILE|-]` is one optional group of two words."""
    groups: list[tuple[bool, list[str]]] = []
    inside: list[str] | None = None
    for token in tokens:
        if inside is None and token.startswith("["):
            inside = []
            token = token[1:]
        if inside is None:
            groups.append((False, [token]))
            continue
        inside.append(token.removesuffix("]"))
        if token.endswith("]"):
            groups.append((True, inside))
            inside = None
    assert inside is None, f"unclosed [ in {' '.join(tokens)}"
    return groups


def argument_lists(command: ReadmeCommand) -> list[list[str]]:
    """The concrete argument lists a README line stands for: each alternative, with and without the
    optional parts, placeholders filled in."""
    groups = _group_optional(command.tokens)
    results: list[list[str]] = []
    for with_optional in (False, True):
        words = [word for optional, group in groups if with_optional or not optional for word in group]
        for argv in itertools.product(*(_choices(word) for word in words)):
            if list(argv) not in results:
                results.append(list(argv))
    return results


def subcommand_path(parser: argparse.ArgumentParser,
                    argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The leading subcommand words of argv (`export graveyard`) and the parser that reads the rest."""
    path: list[str] = []
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or len(path) >= len(argv) or argv[len(path)] not in subparsers[0].choices:
            return path, parser
        word = argv[len(path)]
        parser = subparsers[0].choices[word]
        path.append(word)


def _values_by_action(argv: list[str], parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.Action, str]]:
    """(action, value) for each value in argv (the words after the subcommand), as argparse will pair them."""
    positionals = [a for a in parser._actions if not a.option_strings]
    words = iter(argv)
    for word in words:
        option, _, inline_value = word.partition("=")
        action = parser._option_string_actions.get(option) if word.startswith("-") else None
        if action is not None and action.nargs != 0:
            yield action, inline_value or next(words, "")
        elif action is None and positionals:
            yield positionals.pop(0), word


def make_named_paths(argv: list[str], folder: Path) -> None:
    """Create, in folder, the files and folders a command names where the CLI checks that they exist
    (`import results.tsv --repo PATH`): the README's reader has them; the test makes them."""
    path, leaf = subcommand_path(build_parser(), argv)
    for action, value in _values_by_action(argv[len(path):], leaf):
        if action.type is existing_file:
            (folder / value).parent.mkdir(parents=True, exist_ok=True)
            (folder / value).touch()
        elif action.type is existing_folder:
            (folder / value).mkdir(parents=True, exist_ok=True)


def parse_exactly(argv: list[str]) -> argparse.Namespace:
    """The CLI's real parser on argv; argparse's complaint (it exits 2) becomes an assertion with its text."""
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`autoresearch {shlex.join(argv)}` is refused by the CLI (exit {exc.code}):\n"
                             f"{complaint.getvalue()}") from None


# ---- the commands, gathered once for parametrize ----------------------------------------------------------
COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def _case_id(command: ReadmeCommand, argv: list[str]) -> str:
    return f"L{command.line_no} {' '.join(argv)}"[:90]


def _cases() -> Iterator[tuple[ReadmeCommand, list[str]]]:
    for command in COMMANDS:
        for argv in argument_lists(command):
            yield command, argv


CASES = list(_cases())
_PARSER = build_parser()
PATH_OF = {tuple(argv): tuple(subcommand_path(_PARSER, argv)[0]) for _, argv in CASES}
# In prose, `autoresearch noise` names a subcommand (its --help is checked); code blocks hold whole commands.
FULL_COMMAND_CASES = [(c, argv) for c, argv in CASES
                      if c.in_code_block or PATH_OF[tuple(argv)] != tuple(argv)]
SUBCOMMAND_PATHS = sorted(set(PATH_OF.values()))


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 20, [c.text for c in COMMANDS]
    shown = {path[0] for path in SUBCOMMAND_PATHS if path}
    assert {"demo", "run", "prepare", "doctor", "control", "status", "attach", "report"} <= shown


def test_the_readme_parsing_handles_its_notation() -> None:
    text = ("```bash\n"
            "pip install x && autoresearch demo   # the loop\n"
            "autoresearch control --tag t pause|stop\n"
            "autoresearch export graveyard --tag t [-o FILE|-]\n"
            "autoresearch serve --tag t   # from a browser\n"
            "                             # --review for read-only\n"
            "```\n"
            "Run `autoresearch review --tag <tag>` or see `autoresearch/<tag>`.\n")
    commands = readme_commands(text)
    assert [c.text for c in commands] == ["autoresearch demo", "autoresearch control --tag t pause|stop",
                                          "autoresearch export graveyard --tag t [-o FILE|-]",
                                          "autoresearch serve --tag t", "autoresearch review --tag <tag>"]
    assert commands[3].comment == "from a browser --review for read-only"
    assert argument_lists(commands[1]) == [["control", "--tag", "t", "pause"],
                                           ["control", "--tag", "t", "stop"]]
    assert argument_lists(commands[2]) == [["export", "graveyard", "--tag", "t"],
                                           ["export", "graveyard", "--tag", "t", "-o", "out.md"],
                                           ["export", "graveyard", "--tag", "t", "-o", "-"]]
    assert argument_lists(commands[4]) == [["review", "--tag", "x"]]
    with pytest.raises(AssertionError, match="unrecognized arguments: --no-such-option"):
        parse_exactly(["run", "--tag", "t", "--no-such-option"])


@pytest.mark.parametrize(("command", "argv"), FULL_COMMAND_CASES,
                         ids=[_case_id(c, argv) for c, argv in FULL_COMMAND_CASES])
def test_the_cli_parses_each_readme_command(command: ReadmeCommand, argv: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the command are read from an empty folder
    make_named_paths(argv, tmp_path)
    args = parse_exactly(argv)
    # An argument list handed on unparsed (argparse.REMAINDER) hides its options from --help and its typos
    # from the parser: a README option must be one the CLI itself declares.
    _, leaf = subcommand_path(build_parser(), argv)
    passed_on = [getattr(args, a.dest) for a in leaf._actions if a.nargs == argparse.REMAINDER]
    assert not any(passed_on), (f"README line {command.line_no}: `autoresearch {shlex.join(argv)}` hands "
                                f"{passed_on} on unparsed instead of declaring those options")


@pytest.mark.parametrize("path", SUBCOMMAND_PATHS, ids=[" ".join(p) or "(none)" for p in SUBCOMMAND_PATHS])
def test_each_readme_subcommand_answers_help(path: tuple[str, ...],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    help_text = capsys.readouterr().out
    assert exited.value.code == 0, f"`autoresearch {' '.join(path)} --help` exited {exited.value.code}"
    # Every option the README uses with this subcommand is in its help.
    used = {token.split("=")[0] for _, argv in CASES if PATH_OF[tuple(argv)] == path
            for token in argv[len(path):] if token.startswith("-") and token != "-"}
    missing = sorted(option for option in used if option not in help_text)
    assert not missing, f"`autoresearch {' '.join(path)} --help` does not list {missing}"


def test_options_named_in_readme_comments_exist() -> None:
    """`autoresearch prepare   # ...; or --source DIR` promises a --source: the parser must declare it."""
    parser = build_parser()
    unknown = []
    for command in COMMANDS:
        _, leaf = subcommand_path(parser, argument_lists(command)[0])
        for option in sorted(set(NAMED_OPTION.findall(command.comment))):
            if option not in leaf._option_string_actions:
                unknown.append(f"README line {command.line_no}: {option} "
                               f"(in the comment of `{command.text}`)")
    assert not unknown, "\n".join(unknown)


def test_the_installed_entry_point_lists_every_readme_subcommand() -> None:
    entry_point = Path(sys.executable).parent / "autoresearch"
    assert entry_point.exists(), f"no `autoresearch` beside {sys.executable}: is the project installed?"
    result = subprocess.run([str(entry_point), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    missing = sorted({path[0] for path in SUBCOMMAND_PATHS if path and path[0] not in result.stdout})
    assert not missing, f"`autoresearch --help` does not name {missing}"


# ---- the cheap ones, for real -----------------------------------------------------------------------------
def _live_run(journals: Path, tag: str) -> RunLock:
    """A run with a ledger and a held lock, as a live supervisor leaves it (without its loop)."""
    ledger = Ledger(journals / tag / "ledger.sqlite", create=True)
    try:
        config = RunConfig(tag=tag, journals_root=journals, cache_dir=journals / "cache")
        ledger.init_run(tag, config.to_json())
    finally:
        ledger.close()
    lock = RunLock(journals / tag / "run.lock")
    lock.acquire(tag)
    return lock


REAL_RUN_CASES = [(c, argv) for c, argv in FULL_COMMAND_CASES if argv[0] in ("control", "status")]


@pytest.mark.parametrize(("command", "argv"), REAL_RUN_CASES,
                         ids=[_case_id(c, argv) for c, argv in REAL_RUN_CASES])
def test_readme_control_and_status_commands_run(command: ReadmeCommand, argv: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tag = parse_exactly(argv).tag
    lock = _live_run(tmp_path, tag)
    try:
        code = main([*argv, "--journals", str(tmp_path)])
    finally:
        lock.release()
    out, err = capsys.readouterr()
    assert code == 0, f"README line {command.line_no}: `autoresearch {shlex.join(argv)}` exited {code}: {err}"
    assert out.strip()


# ---- the two lines at the top, and what they install ------------------------------------------------------
def _top_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_opens_with_two_commands_from_a_fresh_virtual_environment() -> None:
    lines = _top_lines()
    assert len(lines) == 2, lines
    demo, tests = lines
    assert demo.startswith("python3 -m venv ") and demo.endswith("autoresearch demo"), demo
    assert tests.startswith("python3 -m venv ") and "pip check" in tests, tests
    assert tests.endswith("python -m pytest -q"), tests
    # The two use different folders: running the tests never replaces the environment a user works in.
    assert demo.split()[3] != tests.split()[3]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()]
    assert _top_lines()[1] in ci_lines, "`.ci/run` must run the README's test line, character for character"


def _third_party_imports(path: Path, local: set[str]) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in requirements}


def test_every_third_party_import_is_declared() -> None:
    """A module imported but not declared works here by luck (another package pulled it in) and breaks in
    a fresh virtual environment: tests/test_policy.py once imported hypothesis, which `.[dev]` lacked."""
    folders = ("supervisor", "trainer", "tests", "benchmarks")
    sources = [path for folder in folders for path in (ROOT / folder).rglob("*.py")]
    local = {p.stem for p in sources} | {"supervisor", "trainer", "tests", "benchmarks"}
    declared = _declared_distributions()
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for path in sources:
        for module in sorted(_third_party_imports(path, local)):
            # A module that is not installed at all is an optional one imported under a guard (pynvml):
            # were it needed, collection in a fresh environment would fail, which .ci/run shows.
            owners = {_normalized(d) for d in distributions.get(module, [])}
            if owners and not owners & declared:
                undeclared.append(f"{path.relative_to(ROOT)}: {module} (from {sorted(owners)})")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)
