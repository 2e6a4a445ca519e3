"""The `autoresearch` command. Thin: it parses arguments, builds the domain objects, and reports errors.

Every error a person can cause ends in one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from supervisor.config import (
    POLICY_NAMES,
    Layout,
    RunConfig,
    default_cache_dir,
    default_journals_root,
)
from supervisor.errors import UserError

EXIT_ERROR = 1
DEFAULT_NOISE_REPEATS = 3  # seeds of the starting code measured before a run's first trial
DEMO_NOISE_REPEATS = 2
AGENT_CHOICES = "offline | anthropic | openai | script:FILE"


class CliError(UserError):
    """A wrong command line; the message says what to type instead."""


# Commands that live in their own modules: each module has `register(subparsers)`, which adds its
# parsers and sets `func`. Keeps this file thin as features arrive.
COMMAND_MODULES: list[str] = ["supervisor.doctor", "supervisor.morning_cli", "supervisor.tui.commands"]


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
    from supervisor.agents.pricing import PriceError, parse_price

    try:
        return parse_price(text)
    except PriceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_cache(cache_dir: Path, upstream: bool) -> None:
    if upstream:
        return
    if not (Path(cache_dir) / "manifest.json").is_file():
        raise CliError(f"no prepared data in {cache_dir}: run `autoresearch prepare` first "
                       "(the embedded corpus needs no network)")


# Run options and the RunConfig field each sets. On --resume only the options given on the command line
# change the stored settings; everything else stays as the run was started.
RUN_OPTIONS = {
    "budget": "budget_s", "grace": "grace_s", "max_trials": "max_trials", "policy": "policy",
    "floor_factor": "floor_factor", "confirm_seeds": "confirm_seeds", "reflect_every": "reflect_every",
    "plateau": "plateau_trials", "noise_repeats": "noise_repeats", "device": "device",
    "memory_limit_mb": "memory_limit_mb", "agent": "agent", "model": "model", "base_url": "base_url",
    "max_cost": "max_cost", "price": "price", "outage_pause": "outage_s", "warm_start": "warm_start",
}


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    journals = Path(args.journals) if args.journals else default_journals_root()
    if args.resume:
        config = _load_config(args)
    else:
        layout = Layout.upstream(args.train_command) if args.upstream else Layout()
        config = RunConfig(tag=args.tag, journals_root=journals,
                           upstream_repo=Path(args.upstream).resolve() if args.upstream else None, layout=layout)
        if args.trainer_dir:
            config.source_dir = Path(args.trainer_dir).resolve()
    if args.cache:
        config.cache_dir = Path(args.cache)
    if not args.resume and args.noise_repeats is None:
        # A night starts by measuring its noise floor: without one every policy is greedy.
        config.noise_repeats = DEFAULT_NOISE_REPEATS
    for option, field_name in RUN_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            setattr(config, field_name, value)
    config.__post_init__()  # validate the merged settings
    return config


def _install_signal_handlers(supervisor) -> None:
    def handler(signum, frame):  # noqa: ARG001
        print(f"\n{signal.Signals(signum).name}: stopping the run (the current trial is recorded as aborted); "
              "continue later with --resume", file=sys.stderr)
        supervisor.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _drive(config: RunConfig, resume: bool, headless: bool, quiet: bool = False) -> int:
    from supervisor.console import ConsolePrinter
    from supervisor.ledger import Ledger
    from supervisor.loop import RunPaths, Supervisor

    resume_turns = 0
    if resume and RunPaths(config.run_dir).ledger.exists():
        ledger = Ledger(RunPaths(config.run_dir).ledger)
        resume_turns = sum(1 for t in ledger.turns() if t["role"] == "agent")
        ledger.close()
    agent = _make_agent(config.agent, resume_turns, config)
    _check_cache(config.cache_dir, config.upstream_repo is not None)
    if not headless:
        # The UI is a client: the loop runs in its own process so closing the terminal does not stop it.
        launcher = importlib.import_module("supervisor.tui.launcher")
        if launcher.can_open():
            agent.close()
            return launcher.launch(config, resume=resume)
        print("(no terminal to draw the UI in: running headless)", file=sys.stderr)
    supervisor = Supervisor(config, agent, resume=resume)
    if not quiet:
        supervisor.bus.subscribe(ConsolePrinter())
    _install_signal_handlers(supervisor)
    print(f"run {config.tag}: journal in {config.run_dir}, workspace {config.workspace} "
          f"(branch {config.branch})", file=sys.stderr)
    end = supervisor.run()
    print(f"run {config.tag} {end}. Journal: {config.run_dir / 'journal.md'}", file=sys.stderr)
    return 0


# ---- commands ---------------------------------------------------------------------------------------------
def cmd_prepare(args: argparse.Namespace) -> int:
    from trainer import prepare

    argv = list(args.prepare_args)
    if args.cache and "--cache" not in argv:
        argv += ["--cache", args.cache]
    return int(prepare.main(argv) or 0)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return _drive(config, resume=args.resume, headless=args.headless)


def cmd_demo(args: argparse.Namespace) -> int:
    from trainer import prepare

    cache = Path(args.cache) if args.cache else default_cache_dir()
    if not (cache / "manifest.json").is_file():
        print(f"preparing the embedded corpus (no network needed) into {cache} ...", file=sys.stderr)
        code = prepare.main(["--source", "embedded", "--cache", str(cache)])
        if code:
            return int(code)
    tag = args.tag or time.strftime("demo-%Y%m%d-%H%M%S")
    config = RunConfig(
        tag=tag,
        journals_root=Path(args.journals) if args.journals else default_journals_root(),
        cache_dir=cache,
        budget_s=args.budget,
        max_trials=args.max_trials,
        reflect_every=max(2, min(10, args.max_trials // 2)),
        noise_repeats=args.noise_repeats,
        agent="offline",
        device=args.device,
    )
    print(f"demo: the offline agent (a coordinate search, no API key) runs {args.max_trials} trials of "
          f"{args.budget:g}s on the embedded corpus", file=sys.stderr)
    return _drive(config, resume=False, headless=args.headless)


def cmd_noise(args: argparse.Namespace) -> int:
    from supervisor.console import ConsolePrinter
    from supervisor.loop import Supervisor

    config = _load_config(args)
    if args.cache:
        config.cache_dir = Path(args.cache)
    if args.floor_factor is not None:
        config.floor_factor = args.floor_factor
    _check_cache(config.cache_dir, config.upstream_repo is not None)
    supervisor = Supervisor(config, _make_agent("offline"), resume=True)
    supervisor.bus.subscribe(ConsolePrinter())
    _install_signal_handlers(supervisor)
    try:
        noise = supervisor.measure_noise(args.repeats)
    finally:
        supervisor._set_state("stopped", "after a noise measurement")  # noqa: SLF001
        supervisor.close()
    print(noise.describe(config.floor_factor))
    return 0 if noise.n >= 2 else EXIT_ERROR


def _load_config(args: argparse.Namespace) -> RunConfig:
    from supervisor.loop import RunPaths

    journals = Path(args.journals) if args.journals else default_journals_root()
    ledger_path = RunPaths(journals / args.tag).ledger
    if not ledger_path.exists():
        raise CliError(f"no run {args.tag!r} in {journals} (list them with `ls {journals}`)")
    from supervisor.ledger import Ledger

    ledger = Ledger(ledger_path)
    try:
        row = ledger.run_row()
        config = RunConfig.from_json(row["config"])
    finally:
        ledger.close()
    if row["state"] == "imported":
        # The same message as the loop's own check, before an agent is even made.
        raise CliError(f"run {args.tag!r} was imported from an upstream results.tsv: it has no workspace to "
                       "continue. Its graveyard, report and status work as for any run; start a new run with "
                       "another --tag (or --upstream REPO to drive that checkout).")
    config.journals_root = journals
    return config


def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.ledger import Ledger
    from supervisor.loop import RunPaths
    from supervisor.status import run_status

    journals = Path(args.journals) if args.journals else default_journals_root()
    paths = RunPaths(journals / args.tag)
    if not paths.ledger.exists():
        raise CliError(f"no run {args.tag!r} in {journals}")
    ledger = Ledger(paths.ledger)
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
        print(f"best: trial {best['id']} val_bpb {best['val_bpb']:.6f} · {best['description']}")
    cost = status.get("cost") or {}
    if cost.get("turns"):
        limit = f" of {cost['max_cost']:.2f} allowed" if cost.get("max_cost") else ""
        spent = ("tokens only (no price known)" if cost.get("cost_usd") is None
                 else f"${cost['cost_usd']:.2f}{limit}")
        print(f"agent: {cost.get('turns', 0)} turns · {cost.get('tokens_in', 0):,} tokens in, "
              f"{cost.get('tokens_out', 0):,} out · {spent}")
    for t in status["trials"][-15:]:
        val = "" if t["val_bpb"] is None else f"{t['val_bpb']:.6f}"
        print(f"  {t['id']:>4} {t['status']:<8} {val:<9} {'⚑' if t['flagged'] else ' '} {t['description']}")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from supervisor.ledger import Ledger
    from supervisor.lock import RunLock
    from supervisor.loop import COMMANDS, RunPaths

    journals = Path(args.journals) if args.journals else default_journals_root()
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
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--journals", help="folder holding the runs' journals (default: ./journals of the project)")
    p.add_argument("--cache", help="prepared data cache (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="Host an LLM agent doing small-scale LM pretraining research, and keep it honest.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="download or build the data and tokenizer (embedded corpus by default)",
                       add_help=False)
    p.add_argument("--cache")
    p.add_argument("prepare_args", nargs=argparse.REMAINDER,
                   help="passed to trainer/prepare.py (try `autoresearch prepare --help`)")
    p.set_defaults(func=cmd_prepare)

    def run_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
        _add_common(p)
        p.add_argument("--headless", action="store_true", help="no terminal UI: print events as lines")
        p.add_argument("--device", default=None if not demo else "auto", choices=["auto", "cuda", "mps", "cpu"])

    p = sub.add_parser("run", help="start (or --resume) a supervised research run")
    run_options(p)
    p.add_argument("--tag", required=True, help="the run's name (its branch is autoresearch/TAG)")
    p.add_argument("--agent", help=f"who proposes changes: {AGENT_CHOICES}")
    p.add_argument("--model", help="model name for LLM agents")
    p.add_argument("--base-url", help="API base URL for LLM agents (an OpenAI-compatible local server: vLLM, "
                                      "Ollama, llama.cpp); default $ANTHROPIC_BASE_URL / $OPENAI_BASE_URL")
    p.add_argument("--max-cost", type=float, metavar="DOLLARS",
                   help="stop the run cleanly once the agent's API spend reaches this many dollars")
    p.add_argument("--price", type=_price, metavar="IN,OUT",
                   help="dollars per million tokens for a model missing from the price table: "
                        "IN,OUT[,CACHE_READ,CACHE_WRITE]")
    p.add_argument("--outage-pause", type=float, metavar="SECONDS",
                   help="pause the run when the agent's API has failed this long (default 600); it resumes "
                        "by itself when the API answers again")
    p.add_argument("--budget", type=float, help="training seconds per trial (default 300)")
    p.add_argument("--grace", type=float, help="seconds past the budget before a trial is killed "
                                               "(default: max(60, budget/2), for startup, compile and evaluation)")
    p.add_argument("--max-trials", type=int, help="stop after this many finished trials")
    p.add_argument("--resume", action="store_true", help="continue the run with this tag")
    p.add_argument("--policy", choices=POLICY_NAMES, help="keep policy (default flag)")
    p.add_argument("--floor-factor", type=float, help="noise floor = factor x sd (default 2)")
    p.add_argument("--confirm-seeds", type=int, help="re-runs for the confirm policy (default 2)")
    p.add_argument("--reflect-every", type=int, help="a reflection every N trials (default 10)")
    p.add_argument("--plateau", type=int, help="a reflection after N trials without a keep")
    p.add_argument("--noise-repeats", type=int,
                   help=f"measure the noise floor with N seeds before the first trial (default "
                        f"{DEFAULT_NOISE_REPEATS}; 0: not now, `autoresearch noise` later)")
    p.add_argument("--memory-limit-mb", type=int, help="cap a trial's virtual memory (default on CPU-only "
                                                         "machines: 80%% of RAM; 0 turns it off)")
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                   help="start the next trial's Python and its imports while the agent is still writing "
                        "(default on; --no-warm-start starts every trial cold)")
    p.add_argument("--upstream", metavar="REPO", help="drive an existing upstream autoresearch checkout")
    p.add_argument("--train-command", default="uv run train.py", help="with --upstream: how a trial runs")
    p.add_argument("--trainer-dir", help="copy trainer/ and program.md from this folder (default: this project)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole loop on the embedded corpus: no API key, no GPU, no network")
    run_options(p, demo=True)
    p.add_argument("--tag", help="run name (default demo-DATE-TIME)")
    p.add_argument("--budget", type=float, default=20.0, help="training seconds per trial (default 20)")
    p.add_argument("--max-trials", type=int, default=6, help="trials to run (default 6)")
    p.add_argument("--noise-repeats", type=int, default=DEMO_NOISE_REPEATS,
                   help=f"seeds measuring the noise floor first (default {DEMO_NOISE_REPEATS}; 0: skip)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("noise", help="measure the noise floor: re-run the current best with new seeds")
    _add_common(p)
    p.add_argument("--tag", required=True)
    p.add_argument("--repeats", type=int, default=3, help="how many seeds (default 3, at least 2)")
    p.add_argument("--floor-factor", type=float, help="noise floor = factor x sd (default: the run's)")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("status", help="the state of a run (--json for tools)")
    _add_common(p)
    p.add_argument("--tag", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("control", help="pause, resume, stop-trial, stop or steer a run from another terminal")
    _add_common(p)
    p.add_argument("--tag", required=True)
    p.add_argument("command", help="pause | resume | stop-trial | stop | steer")
    p.add_argument("message", nargs="*", help="the steering message")
    p.set_defaults(func=cmd_control)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
