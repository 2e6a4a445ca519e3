"""Bad input on the command line: one line on stderr, a non-zero exit, and nothing created or changed.

Every option of every command is walked in the real parser, so a new numeric or path option cannot arrive
without its check; then a table gives each option bad values and runs the real entry point (`main`, the
function the `autoresearch` script calls) in a folder where a slip would show: the journals folder must stay
empty. The cases that need a process of their own (a closed pipe, a damaged ledger, a relative path that a
trial must still find, a read-only folder) run `python -m supervisor.cli.main` in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from supervisor.cli import main as cli_module
from supervisor.cli.main import build_parser, main
from supervisor.core import config as cfg
from supervisor.morning import commands as morning_cli
from supervisor.morning.importer import import_results
from supervisor.morning.trackers.base import project_name, tracker_spec
from tests.loop_support import FAKE_SOURCE, PROJECT, cli, write_script

# ---- the parser, walked -------------------------------------------------------------------------------------
NUMBER_TYPES = {cfg.positive_int, cfg.non_negative_int, cfg.repeat_count, cfg.noise_repeat_count, cfg.memory_limit_mb,
                cfg.port_number, cfg.finite_positive_float, cfg.non_negative_float, cfg.grace_seconds,
                cfg.finite_float_list, cfg.python_name, cfg.constant_setting, cli_module.shard_count, cli_module._price, morning_cli.noise_values}
PATH_TYPES = {cfg.absolute_path, cfg.existing_folder, cfg.existing_file, morning_cli._output_path,
              cli_module.prepare_source}
PATH_OPTIONS = {"journals", "cache", "trainer_dir", "upstream", "repo", "output", "results", "source"}
# Options whose value is free text, checked where it is used (or not at all): each one a decision.
FREE_TEXT = {("run", "model"), ("control", "command"), ("control", "message"), ("serve", "host"),
             ("serve", "public_url")}


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                yield from _parsers(action.choices[name], (*path, name))


def _parser_at(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _value_options() -> list[tuple[str, str, argparse.Action]]:
    """(command, dest, action) for every option or positional of every command that takes a value."""
    out = []
    for path in _parsers(build_parser()):
        for action in _parser_at(path)._actions:
            if isinstance(action, argparse._SubParsersAction) or action.nargs == 0:
                continue  # flags (store_true, --help, --[no-]warm-start) carry no value to check
            out.append((" ".join(path), action.dest, action))
    return out


VALUE_OPTIONS = _value_options()
OPTION_IDS = [f"{command}:{dest}" for command, dest, _ in VALUE_OPTIONS]


@pytest.mark.parametrize(("command", "dest", "action"), VALUE_OPTIONS, ids=OPTION_IDS)
def test_no_option_takes_a_bare_int_or_float(command, dest, action):
    """int('-5') and float('nan') are accepted by argparse as they are: every number needs a range check."""
    assert action.type not in (int, float), (
        f"`autoresearch {command}` option {dest!r} is a bare {action.type.__name__}: use a checked type from "
        "supervisor/core/config.py (positive_int, finite_positive_float, port_number, ...)")


@pytest.mark.parametrize(("command", "dest", "action"), VALUE_OPTIONS, ids=OPTION_IDS)
def test_every_option_is_checked_as_it_is_read(command, dest, action):
    """A value-taking option has a checked type or choices, or is named here as free text; paths are made
    absolute and tags follow git's rules, in every command alike."""
    if dest in PATH_OPTIONS:
        assert action.type in PATH_TYPES, f"`autoresearch {command}` {dest}: a path option must be made absolute"
    elif dest == "tag":
        assert action.type is cfg.tag_name, f"`autoresearch {command}` --tag must be checked with tag_name"
    elif (command.split(" ")[-1], dest) not in FREE_TEXT:
        assert action.choices or action.type in NUMBER_TYPES | {cli_module.agent_spec, cfg.base_url,
                                                                 cfg.command_line, tracker_spec, project_name}, (
            f"`autoresearch {command}` option {dest!r} has no check: give it a type from supervisor/core/config.py, "
            "choices, or add it to FREE_TEXT in this test with a reason")


def test_prepare_declares_the_trainers_own_options():
    """`autoresearch prepare` declares trainer/prepare.py's options (importing torch to borrow that parser would
    slow every command); the two must stay the same options with the same choices."""
    from trainer import prepare

    def options(parser: argparse.ArgumentParser) -> dict[str, tuple | None]:
        return {a.option_strings[-1]: tuple(a.choices) if a.choices else None
                for a in parser._actions if a.option_strings and a.dest != "help"}

    assert options(_parser_at(("prepare",))) == options(prepare._parser())
    assert set(cli_module.PREPARE_OPTIONS) == {a.dest for a in prepare._parser()._actions if a.dest != "help"}


def test_prepare_hands_every_option_to_the_trainer(tmp_path, monkeypatch, capsys):
    """The README's `autoresearch prepare --profile full` and `--source DIR`: parsed, checked, made absolute,
    and given to trainer/prepare.py's own main(), whose defaults stay for what is not given."""
    from trainer import prepare

    calls = []
    monkeypatch.setattr(prepare, "prepare", lambda **kwargs: calls.append(kwargs) or {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    assert main(["prepare", "--profile", "full", "--source", "texts", "--max-mb", "2", "--cache", "c"]) == 0
    assert main(["prepare"]) == 0
    assert main(["prepare", "--source", "download", "--num-shards", "3"]) == 0
    assert calls == [
        {"source": str(tmp_path / "texts"), "profile": "full", "cache": str(tmp_path / "c"), "max_mb": 2.0,
         "num_shards": None},
        {"source": None, "profile": "auto", "cache": None, "max_mb": None, "num_shards": None},
        {"source": "download", "profile": "auto", "cache": None, "max_mb": None, "num_shards": 3},
    ]
    with pytest.raises(SystemExit) as helped:
        main(["prepare", "--help"])
    assert helped.value.code == 0 and "--profile {auto,full,small}" in capsys.readouterr().out


# ---- the table: bad values, run through main() ----------------------------------------------------------------
RUN = ["run", "--headless", "--tag", "t", "--trainer-dir", "source", "--cache", "cache", "--journals", "journals",
       "--budget", "1", "--grace", "1", "--max-trials", "1", "--noise-repeats", "0"]  # a slip would end at once
# Refused as tags: what git refuses in the branch autoresearch/<tag> (`git check-ref-format`), and what would
# not make one plain folder name (a slash, non-ASCII, over 64 characters).
BAD_TAGS = ["a..b", "x.lock", "x.", "-x", ".x", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b", "a@{b",
            "a/", "a//b", "a/b", "", "x" * 65, "é"]


def _numbers(option: str, *values: str) -> list[tuple[list[str], str]]:
    # `--opt=value`: a value like -inf or -1,2 would otherwise be read as an option of its own
    return [([f"{option}={value}"], f"argument {option}") for value in values]


RUN_CASES: list[tuple[list[str], str]] = [
    *[([f"--tag={tag}"], "invalid tag") for tag in BAD_TAGS],
    *_numbers("--budget", "0", "-1", "nan", "inf", "1e999", "x"),
    *_numbers("--grace", "-5", "0", "0.5", "nan", "inf", "x"),
    *_numbers("--max-trials", "0", "-3", "1.5", "nan", "x"),
    *_numbers("--plateau", "0", "-1", "x"),
    *_numbers("--reflect-every", "0", "-1"),
    *_numbers("--confirm-seeds", "0", "-2"),
    *_numbers("--noise-repeats", "1", "-1", "x"),
    *_numbers("--floor-factor", "nan", "inf", "-inf", "0", "-2", "x"),
    *_numbers("--memory-limit-mb", "-1", "10", "1e3", "x"),
    *_numbers("--max-cost", "0", "-1", "nan", "inf"),
    *_numbers("--outage-pause", "-1", "nan", "inf"),
    *_numbers("--price", "nan,1", "1,inf", "1", "-1,2", "a,b", "1,2,3,4,5"),
    (["--agent", "gpt9"], "unknown agent"),
    (["--agent", "script:missing.jsonl"], "no script file"),
    (["--agent", "script:empty-dir"], "is not a file"),
    (["--base-url", "ftp://host"], "argument --base-url"),
    (["--base-url", "http://user:secret@host/v1"], "credentials"),
    (["--policy", "yolo"], "invalid choice"),
    (["--device", "tpu"], "invalid choice"),
    (["--train-command", 'uv "run'], "No closing quotation"),
    (["--train-command", ""], "the command is empty"),
    (["--journals", ""], "a path is needed"),
    (["--cache", " "], "a path is needed"),
    (["--no-such-option"], "unrecognized arguments"),
]
LATE_RUN_CASES: list[tuple[list[str], str]] = [  # well-formed, refused by the checks before the run is made
    (["--journals", "a-file/journals"], "is a file, not a folder"),
    (["--upstream", "missing"], "no folder"),
    (["--trainer-dir", "missing"], "no folder"),
    (["--trainer-dir", "a-file"], "no folder"),
    (["--trainer-dir", "empty-dir"], "has no trainer/train.py"),
    (["--upstream", "empty-dir"], "is not a git repository"),
    (["--cache", "empty-dir"], "no prepared data"),
    (["--agent", "script:latin1.jsonl"], "not UTF-8"),
    (["--agent", "script:bad.jsonl"], "not valid JSON"),
    (["--tag", "never", "--resume"], "no run 'never'"),
]
OTHER_CASES: list[tuple[list[str], str]] = [
    ([], "the following arguments are required"),
    (["nonsense"], "invalid choice"),
    (["demo", "--budget", "0"], "argument --budget"),
    (["demo", "--max-trials", "0"], "argument --max-trials"),
    (["demo", "--noise-repeats", "1"], "argument --noise-repeats"),
    (["demo", "--tag", "a..b"], "invalid tag"),
    (["demo", "--device", "tpu"], "invalid choice"),
    (["noise", "--tag", "t", "--repeats", "1"], "argument --repeats"),
    (["noise", "--tag", "t", "--repeats", "x"], "argument --repeats"),
    (["noise", "--tag", "t", "--floor-factor", "nan"], "argument --floor-factor"),
    (["noise", "--tag", "x.lock"], "invalid tag"),
    (["status", "--tag", "a..b"], "invalid tag"),
    (["status", "--tag", "t", "--journals", ""], "a path is needed"),
    (["control", "--tag", "x.", "pause"], "invalid tag"),
    (["export", "graveyard", "--tag", "t", "--diff-lines", "-1"], "argument --diff-lines"),
    (["export", "graveyard", "--tag", "t", "--diff-lines", "x"], "argument --diff-lines"),
    (["export", "graveyard", "--tag", "a..b"], "invalid tag"),
    (["report", "--tag", "t", "-o", ""], "a path is needed"),
    (["report", "--tag", "x.lock"], "invalid tag"),
    (["import", "missing.tsv", "--tag", "t"], "no file"),
    (["import", "empty-dir", "--tag", "t"], "is not a file"),
    (["import", "results.tsv", "--tag", "a..b"], "invalid tag"),
    (["import", "results.tsv", "--tag", "t", "--noise-sd", "-1"], "argument --noise-sd"),
    (["import", "results.tsv", "--tag", "t", "--noise-sd", "nan"], "argument --noise-sd"),
    (["import", "results.tsv", "--tag", "t", "--noise-values", "0.99"], "at least two values"),
    (["import", "results.tsv", "--tag", "t", "--noise-values", "0.99,nan"], "argument --noise-values"),
    (["import", "results.tsv", "--tag", "t", "--noise-values", "a,b"], "argument --noise-values"),
    (["import", "results.tsv", "--tag", "t", "--floor-factor", "0"], "argument --floor-factor"),
    (["import", "results.tsv", "--tag", "t", "--floor-factor", "inf"], "argument --floor-factor"),
    (["import", "results.tsv", "--tag", "t", "--budget", "-300"], "argument --budget"),
    (["import", "results.tsv", "--tag", "t", "--repo", "missing"], "no folder"),
    (["import", "results.tsv", "--tag", "t", "--repo", "empty-dir"], "not a git repository"),
    (["import", "results.tsv", "--tag", "t", "--journals", "a-file/j"], "is a file, not a folder"),
    (["prepare", "--num-shards", "1"], "argument --num-shards"),
    (["prepare", "--num-shards", "x"], "argument --num-shards"),
    (["prepare", "--max-mb", "0"], "argument --max-mb"),
    (["prepare", "--max-mb", "nan"], "argument --max-mb"),
    (["prepare", "--profile", "huge"], "invalid choice"),
    (["prepare", "--source", "missing"], "is not 'embedded'"),
    (["prepare", "--source", "https://host/shard.parquet"], "{index}"),
    (["prepare", "--source", "download", "--max-mb", "3"], "does not apply to downloads"),
    (["prepare", "--cache", "a-file/c"], "is a file, not a folder"),
    (["prepare", "--bogus"], "unrecognized arguments"),
]
CASES = ([(RUN + argv, fragment) for argv, fragment in RUN_CASES + LATE_RUN_CASES] + OTHER_CASES)


def _case_id(argv: list[str]) -> str:
    shown = argv[len(RUN):] if argv[:len(RUN)] == RUN else argv
    prefix = "run " if shown is not argv else ""
    return (prefix + " ".join(repr(a) if not a or " " in a else a for a in shown))[:80]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to run commands in: a trainer, a prepared cache, an empty journals folder, and files to misuse.
    The defaults point here too, so that no case can touch the project's own journals or ~/.cache."""
    shutil.copytree(FAKE_SOURCE, tmp_path / "source")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/manifest.json").write_text(json.dumps({"profile": "small"}))
    (tmp_path / "journals").mkdir()
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                          "a1b2c3d\t1.0\t10.0\tkeep\tbaseline\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"tool": "get_results", "text": "café"}\n'.encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text("not json\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTORESEARCH_JOURNALS", str(tmp_path / "journals"))
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The entry point as the `autoresearch` script calls it: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a command line by exiting
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[_case_id(argv) for argv, _ in CASES])
def test_bad_input_is_one_line_and_creates_nothing(workdir, capsys, argv, fragment):
    before = _snapshot(workdir)
    code, out, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code != 0, f"accepted: {argv}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith("autoresearch"), lines[0]
    assert not (workdir / "journals").exists() or not any((workdir / "journals").iterdir())
    assert _snapshot(workdir) == before  # nothing made, nothing changed, anywhere in the folder


@pytest.mark.parametrize("tag", ["nov21", "a.b", "a-b_c", "v1.2.3", "x.locked", "a.lock.b", "A" * 64,
                                 *BAD_TAGS])
def test_tags_follow_gits_branch_name_rules(tag):
    """A tag we accept is one git accepts as autoresearch/<tag>; the ones git refuses, we refuse first."""
    git_says = subprocess.run(["git", "check-ref-format", "--branch", f"autoresearch/{tag}"],
                              capture_output=True).returncode == 0
    try:
        cfg.validate_tag(tag)
        accepted = True
    except cfg.ConfigError:
        accepted = False
    if accepted:
        assert git_says, f"{tag!r} is accepted but git refuses autoresearch/{tag}"
    if tag in BAD_TAGS:
        assert not accepted


# ---- the cases that need a process of their own ---------------------------------------------------------------
def _imported_run(journals: Path, tag: str = "t") -> Path:
    results = journals.parent / f"{tag}-results.tsv"
    results.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                       "a1b2c3d\t1.0\t10.0\tkeep\tbaseline\nb2c3d4e\t0.99\t10.0\tkeep\tbetter\n")
    return import_results(results, tag, journals_root=journals).run_dir


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["report"], ["export", "graveyard"],
                                     ["noise"], ["run", "--headless", "--resume"]])
def test_an_empty_ledger_is_one_line_and_stays_as_it_is(tmp_path, command):
    """A 0-byte ledger (a full disk, a bad copy): nothing writes a fresh schema over it; the person is told."""
    ledger = tmp_path / "journals/t/ledger.sqlite"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"")
    result = cli(*command, "--tag", "t", "--journals", str(tmp_path / "journals"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "is empty (0 bytes)" in lines[0], result.stderr
    assert ledger.read_bytes() == b""
    assert sorted(p.name for p in ledger.parent.iterdir()) == ["ledger.sqlite"]  # no -wal, -shm, report


def test_a_corrupt_ledger_is_one_line_and_stays_as_it_is(tmp_path):
    run_dir = _imported_run(tmp_path / "journals")
    ledger = run_dir / "ledger.sqlite"
    ledger.write_bytes(b"this is not a database" * 100)
    result = cli("status", "--tag", "t", "--journals", str(tmp_path / "journals"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot be read" in result.stderr and ledger.read_bytes() == b"this is not a database" * 100


def test_status_reads_without_writing(tmp_path):
    """A finished run's ledger is byte-identical after status, report and export read it."""
    run_dir = _imported_run(tmp_path / "journals")
    before = (run_dir / "ledger.sqlite").read_bytes()
    for command in (["status", "--json"], ["export", "graveyard", "-o", "-"]):
        assert cli(*command, "--tag", "t", "--journals", str(tmp_path / "journals")).returncode == 0
    assert (run_dir / "ledger.sqlite").read_bytes() == before


@pytest.mark.parametrize("command", [["status", "--json", "--tag", "t"], ["--help"],
                                     ["export", "graveyard", "--tag", "t", "-o", "-"]])
def test_a_reader_that_goes_away_is_no_error(tmp_path, command):
    """`autoresearch status --json | head -1`: the reader closes the pipe; we stop quietly, as `cat` does."""
    _imported_run(tmp_path / "journals")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written: every write meets a closed pipe
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    try:
        proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", *command, "--journals",
                               str(tmp_path / "journals")] if command != ["--help"] else
                              [sys.executable, "-m", "supervisor.cli.main", "--help"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT, timeout=120)
    finally:
        os.close(write_end)
    # Quiet either way: 141 (128 + SIGPIPE, as a shell reports `cat` in the same place), or 0 where argparse
    # itself swallowed the failed write of --help.
    assert proc.stderr == "" and proc.returncode in (cli_module.EXIT_BROKEN_PIPE, 0)
    if command != ["--help"]:
        assert proc.returncode == cli_module.EXIT_BROKEN_PIPE


def test_a_relative_journals_folder_is_where_the_trials_find_it(tmp_path):
    """`--journals journals` from the folder the person is in: trials run in the workspace, elsewhere, and
    must still find their metrics file (they all crashed with FileNotFoundError)."""
    shutil.copytree(FAKE_SOURCE, tmp_path / "source")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/manifest.json").write_text(json.dumps({"profile": "small"}))
    script = write_script(tmp_path / "s.jsonl", [{"tool": "run_trial", "input": {"description": "baseline"}}])
    result = cli("run", "--headless", "--tag", "rel", "--journals", "journals", "--cache", "cache", "--trainer-dir",
                 "source", "--agent", f"script:{script.name}", "--budget", "5", "--grace", "10", "--max-trials", "1",
                 "--noise-repeats", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(cli("status", "--json", "--tag", "rel", "--journals", str(tmp_path / "journals")).stdout)
    assert [t["status"] for t in status["trials"]] == ["keep"], status["trials"]
    assert status["agent"] == f"script:{script}"  # stored absolute: a resume from elsewhere finds it


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may create files in: mode 555, or for root (who ignores modes) the immutable flag."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: no folder here is read-only to us")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_journals_folder_is_one_line(tmp_path, read_only_folder):
    shutil.copytree(FAKE_SOURCE, tmp_path / "source")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/manifest.json").write_text(json.dumps({"profile": "small"}))
    results = tmp_path / "results.tsv"
    results.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\na1b2c3d\t1.0\t10.0\tkeep\tbaseline\n")
    for command in (["run", "--headless", "--tag", "t", "--trainer-dir", str(tmp_path / "source"), "--cache",
                     str(tmp_path / "cache")],
                    ["import", str(results), "--tag", "t"],
                    ["demo", "--headless", "--cache", str(tmp_path / "cache")]):
        result = cli(*command, "--journals", str(read_only_folder / "journals"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "cannot write in" in lines[0], (command, result.stderr)
    assert list(read_only_folder.iterdir()) == []


def test_an_upstream_checkout_that_cannot_be_adopted_leaves_no_branch(tmp_path):
    """Checked before the run is made: no half-made run folder, no branch in the person's repository."""
    repo_dir = tmp_path / "upstream"
    repo = git.Repo.init(repo_dir, initial_branch="master")
    with repo.config_writer() as writer:
        writer.set_value("user", "name", "t")
        writer.set_value("user", "email", "t@example.com")
    (repo_dir / "train.py").write_text("x = 1\n")
    repo.index.add(["train.py"])
    repo.index.commit("no prepare.py here")
    result = cli("run", "--headless", "--tag", "up", "--upstream", str(repo_dir), "--journals",
                 str(tmp_path / "journals"), "--cache", str(tmp_path))
    assert result.returncode == 1 and "has no prepare.py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [h.name for h in repo.heads] == ["master"] and not (tmp_path / "journals").exists()


def test_a_stored_setting_no_longer_accepted_is_one_line_and_can_be_replaced(tmp_path, capsys):
    """A run started before the checks (`--plateau 0` was stored, then crashed the loop): resuming says which
    setting is refused, changes nothing, and a new value given on the command line replaces it."""
    from supervisor.store.ledger import Ledger

    journals = tmp_path / "journals"
    stored = json.loads(cfg.RunConfig(tag="old", journals_root=journals, cache_dir=tmp_path).to_json())
    stored["plateau_trials"] = 0
    ledger = Ledger(journals / "old/ledger.sqlite", create=True)
    ledger.init_run("old", json.dumps(stored))
    ledger.close()
    before = (journals / "old/ledger.sqlite").read_bytes()
    args = build_parser().parse_args(["run", "--tag", "old", "--resume", "--journals", str(journals)])
    with pytest.raises(cli_module.CliError, match=r"--plateau must be at least 1"):
        cli_module._config_from_args(args)
    code, _, err = run_main(["run", "--headless", "--tag", "old", "--resume", "--journals", str(journals)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "a setting is refused" in err
    assert (journals / "old/ledger.sqlite").read_bytes() == before
    args = build_parser().parse_args(["run", "--tag", "old", "--resume", "--journals", str(journals), "--plateau", "8"])
    assert cli_module._config_from_args(args).plateau_trials == 8
