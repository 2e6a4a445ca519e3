"""`autoresearch transfer`: do the night's wins survive a larger scale? (supervisor/run/transfer.py)"""

from __future__ import annotations

import argparse
import json
import sys

from supervisor.core.errors import UserError
from supervisor.core.transfer import (
    DEFAULT_BUDGET_FACTOR,
    DEFAULT_DEPTH_FACTOR,
    DEFAULT_DEPTH_NAME,
    DEFAULT_TRANSFER_SEEDS,
    Scale,
    ScaleError,
)
from supervisor.core.types import RunState


class TransferError(UserError):
    """A transfer check that cannot start; the message says why."""


def _scale(args: argparse.Namespace) -> Scale:
    try:
        overrides = tuple(args.set or ())
        return Scale(args.depth_factor, args.budget_factor, args.depth_name, overrides)
    except ScaleError as exc:
        raise TransferError(str(exc)) from None


def cmd_transfer(args: argparse.Namespace) -> int:
    from supervisor.cli.main import _check_cache, _install_signal_handlers, _load_config, _make_agent
    from supervisor.core.paths import RunPaths
    from supervisor.run.transfer import plan_transfer, result_lines
    from supervisor.store.ledger import Ledger

    scale = _scale(args)
    config = _load_config(args)
    ledger = Ledger(RunPaths(config.run_dir).ledger, readonly=True)  # the plan reads; only the check writes
    try:
        plan = plan_transfer(ledger, scale, args.seeds, args.last)
    except ScaleError as exc:
        raise TransferError(str(exc)) from None
    finally:
        ledger.close()
    print(plan.describe(config.budget_s, config.budget_tokens), file=sys.stderr)
    if not any(link.parent is not None for link in plan.chain):
        raise TransferError(f"run {args.tag!r} has no keep built on another keep: there is nothing to transfer")
    if args.dry_run:
        return 0
    _check_cache(config.cache_dir, config.upstream_repo is not None)
    from supervisor.cli.console import ConsolePrinter
    from supervisor.run.loop import Supervisor

    supervisor = Supervisor(config, _make_agent("offline"), resume=True)  # the run's lock, workspace and sandbox
    from rich.console import Console

    supervisor.bus.subscribe(ConsolePrinter(Console(stderr=True, highlight=False)))  # stdout: the result alone
    _install_signal_handlers(supervisor)
    try:
        result = supervisor.transfer_check(plan)
    finally:
        supervisor._set_state(RunState.STOPPED, "after a scale-transfer check")  # noqa: SLF001
        supervisor.close()
    if args.json:
        print(json.dumps({"scale": result.scale_key, "sd": result.sd, "factor": result.factor,
                          "counts": result.counts(), "keeps": [v.as_dict() for v in result.verdicts]}, indent=2))
    else:
        print("\n".join(result_lines(result)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from supervisor.cli.main import _add_common
    from supervisor.core.config import (
        constant_setting,
        finite_positive_float,
        positive_int,
        python_name,
        tag_name,
    )

    p = subparsers.add_parser(
        "transfer", help="re-run the chain of keeps at a larger scale and label each scale-stable, scale-bound or "
                         "unknown")
    _add_common(p)
    p.add_argument("--tag", required=True, type=tag_name, help="the run whose keeps are checked")
    p.add_argument("--depth-factor", type=finite_positive_float, default=DEFAULT_DEPTH_FACTOR,
                   help=f"multiply the model's depth constant by this (default {DEFAULT_DEPTH_FACTOR:g}; 1 keeps it)")
    p.add_argument("--depth-name", type=python_name, default=DEFAULT_DEPTH_NAME,
                   help=f"the script's top-level depth constant (default {DEFAULT_DEPTH_NAME})")
    p.add_argument("--budget-factor", type=finite_positive_float, default=DEFAULT_BUDGET_FACTOR,
                   help=f"multiply the training budget (seconds or tokens) by this (default "
                        f"{DEFAULT_BUDGET_FACTOR:g})")
    p.add_argument("--set", action="append", type=constant_setting, metavar="NAME=VALUE",
                   help="also set a top-level constant of the script at the larger scale, e.g. MODEL_DIM=256 "
                        "(repeatable)")
    p.add_argument("--seeds", type=positive_int, default=DEFAULT_TRANSFER_SEEDS,
                   help=f"runs of every code, each with the same seeds (default {DEFAULT_TRANSFER_SEEDS}; the "
                        "noise at scale is measured from them, so at least 2 to label anything)")
    p.add_argument("--last", type=positive_int, metavar="K", help="check only the last K keeps (and their parents)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, and how long it takes; run nothing")
    p.add_argument("--json", action="store_true", help="print the labels as JSON")
    p.set_defaults(func=cmd_transfer)
