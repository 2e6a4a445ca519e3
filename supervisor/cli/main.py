"""The `autoresearch` command. Thin: it parses arguments, builds the domain objects, and reports errors.

Every error a person can cause ends in one clear line on stderr and a non-zero exit, never a traceback:
exit 2 for a wrong command line (every option is checked as it is read, before anything is created),
1 for everything found later (a missing run, a damaged ledger, an API key refused).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from supervisor.core import prompts
from supervisor.core.config import (
    DEFAULT_MAX_COST,
    DEFAULT_MAX_TOKENS,
    POLICY_NAMES,
    SANDBOX_SETTINGS,
    ConfigError,
    Layout,
    RunConfig,
    absolute_path,
    base_url,
    check_writable_folder,
    command_line,
    default_cache_dir,
    default_journals_root,
    finite_positive_float,
    grace_seconds,
    memory_limit_mb,
    noise_repeat_count,
    non_negative_float,
    non_negative_int,
    positive_int,
    repeat_count,
    tag_name,
)
from supervisor.core.errors import UserError
from supervisor.core.events import EventBus
from supervisor.core.paths import RunPaths
from supervisor.core.types import RunState
from supervisor.morning.trackers import TrackerSpec, check_installed, tracker_spec
from supervisor.trial.sandbox import choose as choose_sandbox

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own code for a wrong command line
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a reader that went away (`| head`)
# Errors of the machine, not of the program: said in one line like a person's mistake.
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}
DEFAULT_NOISE_REPEATS = 3  # seeds of the starting code measured before a run's first trial
DEMO_NOISE_REPEATS = 2
AGENT_CHOICES = "offline | anthropic | openai | script:FILE"


class CliError(UserError):
    """A wrong command line; the message says what to type instead."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its complaint in one line (no usage block): the option, what is wrong, where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# Commands that live in their own modules: each module has `register(subparsers)`, which adds its
# parsers and sets `func`. Keeps this file thin as features arrive.
COMMAND_MODULES: list[str] = ["supervisor.cli.doctor", "supervisor.morning.commands", "supervisor.cli.tui_commands",
                               "supervisor.cli.transfer_command"]


# ---- helpers --------------------------------------------------------------------------------------------
def _make_agent(spec: str, resume_turns: int = 0, config: RunConfig | None = None):
    from supervisor.agents.offline import OfflineAgent
    from supervisor.agents.scripted import ScriptedAgent, ScriptError

    if spec == "offline":
        return OfflineAgent()
    if spec.startswith("script:"):
        try:
            return ScriptedAgent(Path(spec.removeprefix("script:")), start=resume_turns)
        except ScriptError as exc:
            raise CliError(str(exc)) from exc
    if spec in ("anthropic", "openai"):
        # Keys come from the environment only (ANTHROPIC_API_KEY, OPENAI_API_KEY); never from config.
        module = importlib.import_module(f"supervisor.agents.{spec}_agent")
        return module.create_agent(config.model if config else None, config.base_url if config else None,
                                   config.price if config else None)
    raise CliError(f"unknown agent {spec!r}: use {AGENT_CHOICES}")


def _price(text: str) -> list[float]:
    from supervisor.core.pricing import PriceError, parse_price

    try:
        values = parse_price(text)
    except PriceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"prices must be finite numbers of dollars, got {text!r}")
    return values


def agent_spec(text: str) -> str:
    """`--agent`: a known agent, or `script:FILE` with FILE made absolute (the loop may run elsewhere)."""
    if text in ("offline", "anthropic", "openai"):
        return text
    if text.startswith("script:"):
        path = absolute_path(text.removeprefix("script:"))
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"no script file {path}" if not path.exists() else
                                             f"the script {path} is not a file")
        return f"script:{path}"
    raise argparse.ArgumentTypeError(f"unknown agent {text!r}: use {AGENT_CHOICES}")


def shard_count(text: str) -> int:
    """`prepare --num-shards`: the last shard is the validation shard, so a download needs two."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (the last shard is the validation shard), got {value}")
    return value


def prepare_source(text: str) -> str:
    """`prepare --source`: embedded, download, a URL template with {index}, or a local folder (made absolute)."""
    if text in ("embedded", "download"):
        return text
    if text.startswith(("http://", "https://")):
        if "{index" not in text:
            raise argparse.ArgumentTypeError("a download source must be a URL template containing {index}, "
                                             "e.g. https://host/shard_{index:05d}.parquet")
        return text
    path = absolute_path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'embedded', 'download', a URL template, "
                                         "or an existing folder")
    return str(path)


def _check_cache(cache_dir: Path, upstream: bool) -> None:
    if upstream:
        return
    if not (Path(cache_dir) / "manifest.json").is_file():
        raise CliError(f"no prepared data in {cache_dir}: run `autoresearch prepare` first "
                       "(the embedded corpus needs no network)")


# Run options and the RunConfig field each sets. On --resume only the options given on the command line
# change the stored settings; everything else stays as the run was started.
RUN_OPTIONS = {
    "sandbox": "sandbox", "budget": "budget_s", "grace": "grace_s", "max_trials": "max_trials", "policy": "policy",
    "floor_factor": "floor_factor", "confirm_seeds": "confirm_seeds", "reflect_every": "reflect_every",
    "plateau": "plateau_trials", "noise_repeats": "noise_repeats", "device": "device",
    "memory_limit_mb": "memory_limit_mb", "agent": "agent", "model": "model", "base_url": "base_url",
    "max_cost": "max_cost", "price": "price", "outage_pause": "outage_s", "warm_start": "warm_start",
    "stall_replies": "stall_replies", "repeat_limit": "repeat_limit", "budget_tokens": "budget_tokens",
    "max_tokens": "max_tokens", "spend_limit": "spend_limit", "transfer_at_end": "transfer_at_end",
}


def _given(args: argparse.Namespace, fields: dict[str, str]) -> dict[str, Any]:
    """{RunConfig field: value} for the options (option: field) given on the command line."""
    return {field: getattr(args, option) for option, field in fields.items() if getattr(args, option) is not None}


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    settings = _given(args, {**RUN_OPTIONS, "cache": "cache_dir"})
    if args.resume:
        return _load_config(args, settings)
    if args.noise_repeats is None:
        # A night starts by measuring its noise floor: without one every policy is greedy.
        settings["noise_repeats"] = DEFAULT_NOISE_REPEATS
    if args.trainer_dir:
        settings["source_dir"] = args.trainer_dir
    layout = Layout.upstream(args.train_command) if args.upstream else Layout()
    return RunConfig(tag=args.tag, journals_root=args.journals or default_journals_root(),
                     upstream_repo=args.upstream, layout=layout, **settings)


def _check_upstream_checkout(config: RunConfig) -> None:
    import git

    repo_path = Path(config.upstream_repo or "")
    if not repo_path.is_dir():
        raise CliError(f"--upstream: no folder {repo_path}")
    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise CliError(f"--upstream {repo_path} is not a git repository (give the checkout's top folder)") from None
    missing = [rel for rel in [config.layout.editable, *config.layout.harness] if not (repo_path / rel).is_file()]
    if missing:
        raise CliError(f"--upstream {repo_path} has no {', '.join(missing)}: is it an autoresearch checkout?")
    if repo.is_dirty(untracked_files=False):
        raise CliError(f"--upstream {repo_path} has uncommitted changes; commit or stash them first")


def preflight_new_run(config: RunConfig) -> None:
    """Everything a new run needs that can be checked without writing, so that a refusal leaves nothing behind.

    The loop creates the ledger before the workspace; a workspace it cannot make would leave a run that
    can neither resume nor restart, so those checks are made here first.
    """
    check_writable_folder(Path(config.journals_root), "--journals")
    if config.sandbox == "bwrap":
        choose_sandbox("bwrap")  # a machine that cannot sandbox is refused before anything is made

    if RunPaths(config.run_dir).ledger.exists():
        raise CliError(f"run {config.tag!r} already exists in {config.journals_root}; continue it with --resume, "
                       "or pick another --tag")
    if config.upstream_repo is not None:
        _check_upstream_checkout(config)
        return
    layout = config.layout
    if not Path(config.source_dir).is_dir():
        raise CliError(f"--trainer-dir: no folder {config.source_dir}")
    missing = [rel for rel in [layout.editable, *layout.harness, layout.program]
               if not (Path(config.source_dir) / rel).is_file()]
    if missing:
        raise CliError(f"--trainer-dir {config.source_dir} has no {', '.join(missing)}")
    workspace = Path(config.workspace)
    if workspace.is_dir() and any(workspace.iterdir()):
        raise CliError(f"{workspace} already exists and is not empty: move it aside, or pick another --tag")


def _install_signal_handlers(supervisor) -> None:
    def handler(signum, frame):  # noqa: ARG001
        print(f"\n{signal.Signals(signum).name}: stopping the run (the current trial is recorded as aborted); "
              "continue later with --resume", file=sys.stderr)
        supervisor.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# `run --tracker` with the UI: the loop runs in a process of its own (launcher.py), which takes the choice from
# this variable. Its name is outside the trials' allowlist (trial/environment.py), so no trial ever sees it.
LIVE_TRACKER_VARIABLE = "SUPERVISOR_LIVE_TRACKER"


def _live_tracker_choice(args: argparse.Namespace) -> TrackerSpec | None:
    """`--tracker`, or the one the UI's `run` handed to this loop process (taken out of the environment)."""
    handed = os.environ.pop(LIVE_TRACKER_VARIABLE, None)
    if args.tracker is not None or not handed:
        return args.tracker
    try:
        return tracker_spec(handed)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"--tracker: {exc}") from None


def _start_live_tracker(spec: TrackerSpec, config: RunConfig, bus: EventBus) -> Any:
    """The tracker opened now (its SDK imported: a missing one is said before the run starts), listening."""
    from supervisor.morning.trackers import DEFAULT_PROJECT, open_tracker
    from supervisor.morning.trackers.live import LiveTracker

    tracker = open_tracker(spec, project=DEFAULT_PROJECT, journals_root=Path(config.journals_root),
                           run_dir=Path(config.run_dir))
    print(f"streaming every trial to {tracker.where()} (project {DEFAULT_PROJECT}, group {config.tag}); "
          f"{tracker.how_to_look(config.tag)}", file=sys.stderr)
    return LiveTracker(tracker, ledger_path=RunPaths(config.run_dir).ledger, tag=config.tag, bus=bus)


def _stop_live_tracker(live: Any, tag: str) -> None:
    if not live.close():
        print(f"the tracker is still sending; stopped waiting for it. `autoresearch export tracker --tag {tag} "
              f"--to {live.tracker.name} --replace` sends the whole run", file=sys.stderr)


def _drive(config: RunConfig, resume: bool, headless: bool, quiet: bool = False,
           tracker: TrackerSpec | None = None) -> int:
    from supervisor.cli.console import ConsolePrinter
    from supervisor.run.loop import Supervisor
    from supervisor.run.trial_setup import budget_text
    from supervisor.store.ledger import Ledger

    resume_turns = 0
    if resume and RunPaths(config.run_dir).ledger.exists():
        ledger = Ledger(RunPaths(config.run_dir).ledger, readonly=True)
        resume_turns = sum(1 for t in ledger.turns() if t.role == "agent")
        ledger.close()
    agent = _make_agent(config.agent, resume_turns, config)
    _check_cache(config.cache_dir, config.upstream_repo is not None)
    if tracker is not None:
        check_installed(tracker)  # here, in one line, rather than later in the loop's log
    if not headless:
        # The UI is a client: the loop runs in its own process so closing the terminal does not stop it.
        launcher = importlib.import_module("supervisor.cli.launcher")
        if launcher.can_open():
            agent.close()
            if tracker is not None:
                os.environ[LIVE_TRACKER_VARIABLE] = tracker.text
            return launcher.launch(config, resume=resume)
        print("(no terminal to draw the UI in: running headless)", file=sys.stderr)
    bus = EventBus()
    live = _start_live_tracker(tracker, config, bus) if tracker is not None else None
    try:
        if not quiet:  # before the Supervisor opens the run: a resume says where it resumed
            bus.subscribe(ConsolePrinter())
        supervisor = Supervisor(config, agent, resume=resume, bus=bus)
        _install_signal_handlers(supervisor)
        print(f"run {config.tag}: journal in {config.run_dir}, workspace {config.workspace} "
              f"(branch {config.branch})", file=sys.stderr)
        print(f"budget: {budget_text(config)}", file=sys.stderr)
        choice = supervisor.executor.setup.choice
        print("trials run in a bubblewrap sandbox; val_bpb is measured by the supervisor's own evaluator"
              if choice.active else f"WARNING: {prompts.UNSANDBOXED_RUN.format(why=choice.why_not)}", file=sys.stderr)
        if hasattr(agent, "prices_known"):  # a language model: what its tokens cost, and who says so
            from supervisor.core.pricing import describe_price
            print(describe_price(agent.model, agent.price), file=sys.stderr)
        end = supervisor.run()
    finally:
        if live is not None:
            _stop_live_tracker(live, config.tag)
    print(f"run {config.tag} {end}. Journal: {RunPaths(config.run_dir).journal_md}", file=sys.stderr)
    return 0


# ---- commands ---------------------------------------------------------------------------------------------
# `autoresearch prepare` declares trainer/prepare.py's options itself: importing the trainer (and torch) to
# borrow its parser would slow every command. tests/test_cli_bad_input.py keeps the two in step.
PREPARE_OPTIONS = ("source", "num_shards", "profile", "cache", "max_mb")


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.cache:
        check_writable_folder(args.cache, "--cache")
    if args.max_mb is not None and args.source is not None and (
            args.source == "download" or args.source.startswith(("http://", "https://"))):
        raise CliError("--max-mb does not apply to downloads; choose the amount with --num-shards")
    from trainer import prepare

    argv: list[str] = []
    for name in PREPARE_OPTIONS:
        value = getattr(args, name)
        if value is not None:  # unset options keep prepare.py's defaults
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return int(prepare.main(argv) or 0)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    if args.resume:
        check_writable_folder(config.run_dir, "--journals")
    else:
        preflight_new_run(config)
    return _drive(config, resume=args.resume, headless=args.headless, tracker=_live_tracker_choice(args))


def cmd_demo(args: argparse.Namespace) -> int:
    cache = args.cache or default_cache_dir()
    tag = args.tag or time.strftime("demo-%Y%m%d-%H%M%S")
    config = RunConfig(
        tag=tag,
        journals_root=args.journals or default_journals_root(),
        cache_dir=cache,
        budget_s=args.budget,
        max_trials=args.max_trials,
        reflect_every=max(2, min(10, args.max_trials // 2)),
        noise_repeats=args.noise_repeats,
        agent="offline",
        device=args.device,
        grace_s=args.grace,
        sandbox=args.sandbox,
    )
    preflight_new_run(config)
    if not (cache / "manifest.json").is_file():
        check_writable_folder(cache, "--cache")
        from trainer import prepare

        print(f"preparing the embedded corpus (no network needed) into {cache} ...", file=sys.stderr)
        code = prepare.main(["--source", "embedded", "--cache", str(cache)])
        if code:
            return int(code)
    print(f"demo: the offline agent (a coordinate search, no API key) runs {args.max_trials} trials of "
          f"{args.budget:g}s on the embedded corpus", file=sys.stderr)
    return _drive(config, resume=False, headless=args.headless)


def cmd_noise(args: argparse.Namespace) -> int:
    from supervisor.cli.console import ConsolePrinter
    from supervisor.run.loop import Supervisor

    config = _load_config(args, _given(args, {"cache": "cache_dir", "floor_factor": "floor_factor"}))
    _check_cache(config.cache_dir, config.upstream_repo is not None)
    supervisor = Supervisor(config, _make_agent("offline"), resume=True)
    supervisor.bus.subscribe(ConsolePrinter())
    _install_signal_handlers(supervisor)
    try:
        noise = supervisor.measure_noise(args.repeats)
    finally:
        supervisor._set_state(RunState.STOPPED, "after a noise measurement")  # noqa: SLF001
        supervisor.close()
    print(noise.describe(config.floor_factor))
    return 0 if noise.n >= 2 else EXIT_ERROR


def _load_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The settings the run was started with, read-only, with `overrides` (field: value) from this command line."""
    journals = args.journals or default_journals_root()
    ledger_path = RunPaths(journals / args.tag).ledger
    if not ledger_path.exists():
        raise CliError(f"no run {args.tag!r} in {journals} (list them with `ls {journals}`)")
    from supervisor.store.ledger import Ledger, LedgerError
    from supervisor.store.lock import RunLock

    ledger = Ledger(ledger_path, readonly=True)  # reading the settings must not write to a damaged ledger
    try:
        row = ledger.run_row()
    except LedgerError:
        holder = RunLock.holder(RunPaths(journals / args.tag).lock)
        if holder is None:
            raise
        # A supervisor is creating this run right now: its ledger exists, its run record not yet.
        raise CliError(f"run {args.tag!r} is already being supervised ({holder}); watch or steer it with "
                       f"`autoresearch attach --tag {args.tag}`") from None
    finally:
        ledger.close()
    if row.state == RunState.IMPORTED:
        # The same message as the loop's own check, before an agent is even made.
        raise CliError(f"run {args.tag!r} was imported from an upstream results.tsv: it has no workspace to "
                       "continue. Its graveyard, report and status work as for any run; start a new run with "
                       "another --tag (or --upstream REPO to drive that checkout).")
    try:
        return RunConfig.from_json(row.config, {**(overrides or {}), "journals_root": journals})
    except ConfigError as exc:
        raise CliError(f"run {args.tag!r}: a setting is refused ({exc}); give it a new value with this "
                       "command") from None


def _value_text(value: float) -> str:
    """val_bpb with six decimals; a value no measurement gives (1e308 in an imported file) stays one word."""
    return f"{value:.6f}" if abs(value) < 1e6 else f"{value:.4g}"


def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.run.status import run_status
    from supervisor.store.ledger import Ledger

    journals = args.journals or default_journals_root()
    paths = RunPaths(journals / args.tag)
    if not paths.ledger.exists():
        raise CliError(f"no run {args.tag!r} in {journals}")
    ledger = Ledger(paths.ledger, readonly=True)  # a status never creates or rewrites anything
    try:
        status = run_status(ledger, paths.lock)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    c = status["counts"]
    best = status["best"]
    print(f"{status['tag']}: {status['state']} · {c['trials']} trials ({c['keep']} keep, {c['discard']} discard, "
          f"{c['crash']} crash, {c['flagged']} flagged) · policy {status['policy']} · noise floor "
          f"{'not measured' if status['noise_floor'] is None else format(status['noise_floor'], '.6f')}")
    if best:
        print(f"best: trial {best['id']} val_bpb {_value_text(best['val_bpb'])} · {best['description']}")
    cost = status.get("cost") or {}
    if cost.get("turns"):
        limit = f" of {cost['max_cost']:.2f} allowed" if cost.get("max_cost") else ""
        source = f" (priced by {cost['price_source']})" if cost.get("price_source") else ""
        spent = ("tokens only (no price known)" if cost.get("cost_usd") is None
                 else f"${cost['cost_usd']:.2f}{limit}{source}")
        print(f"agent: {cost.get('turns', 0)} turns · {cost.get('tokens_in', 0):,} tokens in, "
              f"{cost.get('tokens_out', 0):,} out · {spent}")
    for t in status["trials"][-15:]:
        val = "" if t["val_bpb"] is None else _value_text(t["val_bpb"])
        print(f"  {t['id']:>4} {t['status']:<8} {val:<9} {'⚑' if t['flagged'] else ' '} {t['description']}")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from supervisor.core.commands import COMMANDS
    from supervisor.store.ledger import Ledger
    from supervisor.store.lock import RunLock

    journals = args.journals or default_journals_root()
    paths = RunPaths(journals / args.tag)
    if not paths.ledger.exists():
        raise CliError(f"no run {args.tag!r} in {journals}")
    if args.command not in COMMANDS:
        raise CliError(f"unknown command {args.command!r}: use one of {', '.join(COMMANDS)}")
    message = " ".join(args.message).strip()
    if args.command == "steer" and not message:
        raise CliError("steer needs a message, e.g. autoresearch control --tag T steer \"try shorter windows\"")
    live = RunLock.holder(paths.lock)
    if not live and args.command != "steer":
        # A pause or stop kept for later would fire on the next --resume and end it at once.
        raise CliError(f"no supervisor is running {args.tag!r}: there is nothing to {args.command}. "
                       f"Continue the run with `autoresearch run --resume --tag {args.tag}`.")
    ledger = Ledger(paths.ledger)
    try:
        if not live:
            # Nobody is running the loop: store the message; the next --resume delivers it.
            ledger.add_steering(message)
            print("no supervisor is running this run; the message is stored and delivered on --resume")
            return 0
        ledger.send_command(args.command, message)
    finally:
        ledger.close()
    print(f"sent {args.command} to {args.tag}")
    return 0


# ---- the parser -------------------------------------------------------------------------------------------
JOURNALS_HELP = "folder holding the runs' journals (default: ./journals of the project)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--journals", type=absolute_path, help=JOURNALS_HELP)
    p.add_argument("--cache", type=absolute_path,
                   help="prepared data cache (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="download or build the data and tokenizer (embedded corpus by default)",
                       description="Prepare the data cache for autoresearch trials (corpus, tokenizer, token "
                                   "files); runs trainer/prepare.py.")
    p.add_argument("--source", type=prepare_source,
                   help="'embedded' (Python stdlib sources, no network; the default for a new cache), a local "
                        "folder of .txt/.jsonl/.parquet files, an https URL template with {index}, or 'download' "
                        "for the default web-text corpus; default: the existing cache's source")
    p.add_argument("--num-shards", type=shard_count,
                   help="shards to download, the last one for validation (default: prepare.py's)")
    p.add_argument("--profile", choices=["auto", "full", "small"],
                   help="size profile (default auto: full on a CUDA/ROCm GPU with enough memory, else small)")
    p.add_argument("--cache", type=absolute_path,
                   help="cache folder (default $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")
    p.add_argument("--max-mb", type=finite_positive_float,
                   help="cap on the text taken from the embedded corpus or a local folder, in MB")
    p.set_defaults(func=cmd_prepare)


def _add_run_settings(p: argparse.ArgumentParser) -> None:
    """The options of `run` that become the run's settings (RUN_OPTIONS)."""
    p.add_argument("--agent", type=agent_spec, help=f"who proposes changes: {AGENT_CHOICES}")
    p.add_argument("--model", help="model name for LLM agents")
    p.add_argument("--base-url", type=base_url,
                   help="API base URL for LLM agents (an OpenAI-compatible local server: vLLM, "
                        "Ollama, llama.cpp); default $ANTHROPIC_BASE_URL / $OPENAI_BASE_URL")
    p.add_argument("--max-cost", type=finite_positive_float, metavar="DOLLARS",
                   help=f"stop the run cleanly once the agent's API spend reaches this many dollars (default "
                        f"{DEFAULT_MAX_COST:g} for a model with a known price)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help=f"stop the run cleanly once the agent has spent this many tokens, prompt and output "
                        f"(default {DEFAULT_MAX_TOKENS:,} for a model without a known price)")
    p.add_argument("--spend-limit", action=argparse.BooleanOptionalAction, default=None,
                   help="the default spend limit ($50, or 50M tokens without a known price); --no-spend-limit "
                        "lifts it (a --max-cost or --max-tokens given still applies)")
    p.add_argument("--price", type=_price, metavar="IN,OUT",
                   help="dollars per million tokens for a model missing from the price table: "
                        "IN,OUT[,CACHE_READ,CACHE_WRITE]")
    p.add_argument("--outage-pause", type=non_negative_float, metavar="SECONDS",
                   help="pause the run when the agent's API has failed this long (default 600); it resumes "
                        "by itself when the API answers again")
    p.add_argument("--stall-replies", type=non_negative_int, metavar="N",
                   help="pause the run when the agent makes N replies in a row without progress: no trial, "
                        "journal entry, reflection or successful edit (default 25; 0 turns it off)")
    p.add_argument("--repeat-limit", type=non_negative_int, metavar="K",
                   help="pause the run when the agent sends the same failing call K times since its last "
                        "progress (default 5; 0 turns it off)")
    p.add_argument("--budget", type=finite_positive_float, help="training seconds per trial (default 300)")
    p.add_argument("--budget-tokens", type=positive_int, metavar="N",
                   help="train on N tokens per trial instead of --budget seconds: results compare across machines "
                        "and loads, but speed no longer counts; --budget then caps each trial's wall-clock time")
    p.add_argument("--grace", type=grace_seconds,
                   help="warm-up allowance: seconds past the budget a trial may take to start, compile and hand "
                        "over its model, at least 1; a later hand-over has no result (default: max(30, budget/4))")
    p.add_argument("--sandbox", choices=SANDBOX_SETTINGS,
                   help="the OS sandbox of every trial: auto (bubblewrap where it works, else unsandboxed and said "
                        "at the start), bwrap (required), off (unsandboxed on purpose); default auto")
    p.add_argument("--max-trials", type=positive_int, help="stop after this many finished trials")
    p.add_argument("--policy", choices=POLICY_NAMES,
                   help="keep policy (default flag); sequential re-runs a sub-floor gain one seed at a time and keeps "
                        "it once its mean gain clears half a standard error (docs/keep_policies.md)")
    p.add_argument("--floor-factor", type=finite_positive_float, help="noise floor = factor x sd (default 2)")
    p.add_argument("--confirm-seeds", type=positive_int,
                   help="re-runs for the confirm policy, and the most the sequential policy may ask for (default 2)")
    p.add_argument("--reflect-every", type=positive_int, help="a reflection every N trials (default 10)")
    p.add_argument("--plateau", type=positive_int, help="a reflection after N trials without a keep (default 8)")
    p.add_argument("--noise-repeats", type=noise_repeat_count,
                   help=f"measure the noise floor with N seeds before the first trial (default "
                        f"{DEFAULT_NOISE_REPEATS}; 0: not now, `autoresearch noise` later; else at least 2)")
    p.add_argument("--memory-limit-mb", type=memory_limit_mb,
                   help="cap a trial's virtual memory (default on CPU-only machines: 80%% of RAM; 0 turns it off)")
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                   help="start the next trial's Python and its imports while the agent is still writing "
                        "(default on; --no-warm-start starts every trial cold)")
    p.add_argument("--transfer-at-end", action=argparse.BooleanOptionalAction, default=None,
                   help="when the night finishes (its trial budget spent), run the scale-transfer check on its "
                        "keeps at the default larger scale, as `autoresearch transfer` does (default off)")


def _add_run_and_demo(sub: argparse._SubParsersAction) -> None:
    def run_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
        _add_common(p)
        p.add_argument("--headless", action="store_true", help="no terminal UI: print events as lines")
        p.add_argument("--device", default=None if not demo else "auto", choices=["auto", "cuda", "mps", "cpu"])

    p = sub.add_parser("run", help="start (or --resume) a supervised research run")
    run_options(p)
    p.add_argument("--tag", required=True, type=tag_name, help="the run's name (its branch is autoresearch/TAG)")
    p.add_argument("--resume", action="store_true", help="continue the run with this tag")
    _add_run_settings(p)
    p.add_argument("--upstream", type=absolute_path, metavar="REPO",
                   help="drive an existing upstream autoresearch checkout")
    p.add_argument("--train-command", type=command_line, default="uv run train.py",
                   help="with --upstream: how a trial runs")
    p.add_argument("--trainer-dir", type=absolute_path,
                   help="copy trainer/ and program.md from this folder (default: this project)")
    p.add_argument("--tracker", type=tracker_spec, metavar="TRACKER[=STORE]",
                   help="stream every trial to trackio, wandb (offline files) or mlflow while the run goes, from "
                        "the supervisor (trials stay offline); stores as for `export tracker`; this session "
                        "only: give it again with --resume")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole loop on the embedded corpus: no API key, no GPU, no network")
    run_options(p, demo=True)
    p.add_argument("--tag", type=tag_name, help="run name (default demo-DATE-TIME)")
    p.add_argument("--budget", type=finite_positive_float, default=20.0,
                   help="training seconds per trial (default 20)")
    p.add_argument("--max-trials", type=positive_int, default=6, help="trials to run (default 6)")
    p.add_argument("--grace", type=grace_seconds,
                   help="warm-up allowance: seconds past the budget a trial may take to start, compile and hand "
                        "over its model (default: max(30, budget/4))")
    p.add_argument("--sandbox", choices=SANDBOX_SETTINGS, default="auto",
                   help="the OS sandbox of every trial: auto (default), bwrap (required) or off")
    p.add_argument("--noise-repeats", type=noise_repeat_count, default=DEMO_NOISE_REPEATS,
                   help=f"seeds measuring the noise floor first (default {DEMO_NOISE_REPEATS}; 0: skip)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="autoresearch",
        description="Host an LLM agent doing small-scale LM pretraining research, and keep it honest.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_prepare(sub)
    _add_run_and_demo(sub)

    p = sub.add_parser("noise", help="measure the noise floor: re-run the current best with new seeds")
    _add_common(p)
    p.add_argument("--tag", required=True, type=tag_name)
    p.add_argument("--repeats", type=repeat_count, default=3, help="how many seeds (default 3, at least 2)")
    p.add_argument("--floor-factor", type=finite_positive_float,
                   help="noise floor = factor x sd (default: the run's)")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("status", help="the state of a run (--json for tools)")
    _add_common(p)
    p.add_argument("--tag", required=True, type=tag_name)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("control", help="pause, resume, stop-trial, stop or steer a run from another terminal")
    _add_common(p)
    p.add_argument("--tag", required=True, type=tag_name)
    p.add_argument("command", help="pause | resume | stop-trial | stop | steer")
    p.add_argument("message", nargs="*", help="the steering message")
    p.set_defaults(func=cmd_control)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _machine_error(exc: OSError) -> str | None:
    """One line for an error of the machine (read-only disk, disk full, permission), None for anything else."""
    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}: free some space or fix the permissions, then run the command again"


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        message = _machine_error(exc)
        if message is None:
            raise
        print(f"autoresearch: {message}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """After the reader of our output went away: point stdout at /dev/null so the final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured in tests): nothing will be flushed to a pipe


def main(argv: Sequence[str] | None = None) -> int:
    """The `autoresearch` entry point; returns the exit status."""
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe (`| head -1`) shows here, where it can be handled
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def entry() -> int:
    """The `autoresearch` console script, `python -m supervisor.cli` and `python -m supervisor.cli.main`.

    First the credentials leave this process's environment (it re-executes itself without them and takes
    them over a pipe: supervisor/cli/secret_handoff.py), then main(). Only here: a test that calls main()
    in-process must not be replaced by a new program.
    """
    from supervisor.cli.secret_handoff import move_secrets_out

    move_secrets_out()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
