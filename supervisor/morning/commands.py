"""The morning-after commands: `export graveyard`, `export tracker`, `report`, and `import` of an upstream
results.tsv.

Thin, like the rest of the CLI: parse, call the domain (graveyard, report, importer), print where the
files went. Errors a person can fix are UserErrors and end in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from supervisor.core.config import (
    absolute_path,
    check_writable_folder,
    default_journals_root,
    existing_file,
    existing_folder,
    finite_float_list,
    finite_positive_float,
    non_negative_float,
    non_negative_int,
    tag_name,
)
from supervisor.core.errors import UserError
from supervisor.morning.trackers import DEFAULT_PROJECT, tracker_spec
from supervisor.morning.trackers.base import project_name


class MorningError(UserError):
    """A wrong argument to export, report or import; the message says what to type instead."""


def _journals(args: argparse.Namespace) -> Path:
    return args.journals or default_journals_root()


def _open_run(args: argparse.Namespace):
    """The run's ledger, opened read-only and without its lock (a run may be going on; a damaged ledger must
    stay exactly as it is)."""
    from supervisor.core.paths import RunPaths
    from supervisor.store.ledger import Ledger

    journals = _journals(args)
    path = RunPaths(journals / args.tag).ledger
    if not path.exists():
        raise MorningError(f"no run {args.tag!r} in {journals} (list them with `ls {journals}`; "
                           "pass --journals DIR if it lives elsewhere)")
    return Ledger(path, readonly=True)


def _output_path(text: str) -> Path | str:
    """`-o`: `-` (stdout) as it is, any other path made absolute."""
    return text if text == "-" else absolute_path(text)


def cmd_export_graveyard(args: argparse.Namespace) -> int:
    from supervisor.morning.graveyard import RunView, graveyard_markdown, write_graveyard

    to_stdout = args.output == "-"
    out = Path(args.output) if args.output and not to_stdout else _journals(args) / args.tag / "graveyard.md"
    if out.is_dir():
        out = out / "graveyard.md"
    if not to_stdout:
        check_writable_folder(out.parent, "-o")
    ledger = _open_run(args)
    try:
        if to_stdout:
            sys.stdout.write(graveyard_markdown(RunView.from_ledger(ledger), diff_lines=args.diff_lines))
            return 0
        write_graveyard(ledger, out, diff_lines=args.diff_lines)
    finally:
        ledger.close()
    print(f"graveyard written to {out}")
    return 0


def cmd_export_tracker(args: argparse.Namespace) -> int:
    from supervisor.core.paths import RunPaths
    from supervisor.morning.trackers import open_tracker
    from supervisor.morning.trackers.export import export_run
    from supervisor.store.lock import RunLock

    journals = _journals(args)
    ledger = _open_run(args)  # a missing run is said before a tracker's SDK is even imported
    live = RunLock.holder(RunPaths(journals / args.tag).lock) is not None
    try:
        tracker = open_tracker(args.to, project=args.project, journals_root=journals, run_dir=journals / args.tag)
        try:
            result = export_run(ledger, tracker, replace=args.replace, live=live, progress=_progress_line())
            where, look = tracker.where(), tracker.how_to_look(args.tag)
        finally:
            tracker.close()
    finally:
        ledger.close()
    print(f"exported {len(result.exported)} trial(s) of {args.tag} ({result.history_points:,} loss points) to "
          f"{where}, project {args.project}, group {args.tag}")
    if result.replaced:
        print(f"{len(result.replaced)} trial(s) were already there: deleted and sent again (--replace)")
    if result.skipped:
        print(f"{len(result.skipped)} trial(s) were already there and were left as they are "
              "(--replace sends them again)")
    if result.running:
        print(f"{len(result.running)} trial(s) still running or being written up, left for a later export: "
              f"{', '.join(map(str, result.running))}")
    print(f"look at them: {look}")
    return 0


def _progress_line() -> Callable[[int, int], None] | None:
    """`n/total` rewritten in place on a terminal (an export of a long night takes minutes); nothing otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\r  {done}/{total} trials" + ("\n" if done == total else ""))
        sys.stderr.flush()

    return show


def cmd_report(args: argparse.Namespace) -> int:
    from supervisor.morning.report import write_report

    out = args.output or _journals(args) / args.tag / "report"
    if out.exists() and not out.is_dir():
        raise MorningError(f"-o {out} is a file; the report needs a folder (it writes report.md and charts/)")
    check_writable_folder(out, "-o")
    ledger = _open_run(args)
    try:
        written = write_report(ledger, out, png=not args.no_png)
    finally:
        ledger.close()
    formats = "SVG" if args.no_png else "SVG and PNG"
    print(f"report written to {written.markdown} ({written.chart_count} charts, {formats}, in {written.charts_dir})")
    if written.left_out:
        print(f"note: the {', '.join(written.left_out)} chart(s) were left out: a value in the ledger is too "
              "large for an axis", file=sys.stderr)
    return 0


def noise_values(text: str) -> list[float]:
    """`--noise-values`: val_bpb of repeats of the same code; a standard deviation needs two of them."""
    values = finite_float_list(text)
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"needs at least two values (val_bpb of the same code, new seeds), "
                                         f"got {text!r}")
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"val_bpb values are above 0, got {text!r}")
    return values


def cmd_import(args: argparse.Namespace) -> int:
    from supervisor.morning.importer import import_results

    check_writable_folder(_journals(args), "--journals")
    result = import_results(
        args.results, args.tag, journals_root=_journals(args), noise_sd=args.noise_sd,
        noise_values=args.noise_values, floor_factor=args.floor_factor, budget_s=args.budget, repo=args.repo,
    )
    for line in result.summary_lines():
        print(line)
    parsed = result.parsed
    for note in parsed.notes:
        print(f"note: {note}", file=sys.stderr)
    if parsed.unreadable:
        print(f"{len(parsed.unreadable)} line(s) could not be read and were left out:", file=sys.stderr)
        for bad in parsed.unreadable:
            print(f"  {bad}", file=sys.stderr)
    if result.missing_commits:
        print(f"{len(result.missing_commits)} commit(s) not found in {args.repo}:", file=sys.stderr)
        for missing in result.missing_commits:
            print(f"  {missing}", file=sys.stderr)
    lenient = [r for r in parsed.rows if r.notes]
    if lenient and args.verbose:
        print("read with care:", file=sys.stderr)
        for row in lenient:
            print(f"  line {row.line}: {'; '.join(row.notes)}", file=sys.stderr)
    elif lenient:
        print(f"{len(lenient)} line(s) were read with care (no commit, 0.000000 values, ...); "
              "--verbose lists them", file=sys.stderr)
    where = f" --journals {args.journals}" if args.journals else ""
    print("next:")
    for command in ("status --json", "export graveyard", "report"):
        print(f"  autoresearch {command} --tag {args.tag}{where}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export graveyard`, `report` and `import` to the `autoresearch` command."""
    journals_help = "folder holding the runs' journals (default: ./journals of the project)"

    p = subparsers.add_parser("export", help="export part of a run to share (export graveyard | tracker)")
    what = p.add_subparsers(dest="what", required=True, metavar="graveyard | tracker")
    g = what.add_parser("graveyard", help="markdown of every discarded and crashed trial, grouped by what was tried")
    g.add_argument("--tag", required=True, type=tag_name, help="the run")
    g.add_argument("--journals", type=absolute_path, help=journals_help)
    g.add_argument("-o", "--output", type=_output_path,
                   help="the markdown file (default journals/TAG/graveyard.md; - for stdout)")
    g.add_argument("--diff-lines", type=non_negative_int, default=40, help="lines of each diff to show (default 40)")
    g.set_defaults(func=cmd_export_graveyard)
    t = what.add_parser("tracker", help="every trial as a run of an experiment tracker: trackio, wandb (offline "
                                        "files) or mlflow, grouped by the tag")
    t.add_argument("--tag", required=True, type=tag_name, help="the run")
    t.add_argument("--journals", type=absolute_path, help=journals_help)
    t.add_argument("--to", required=True, type=tracker_spec, metavar="TRACKER[=STORE]",
                   help="trackio (its local store, or trackio=FOLDER), wandb (offline runs in journals/TAG/wandb, "
                        "or wandb=FOLDER) or mlflow (journals/mlflow.db, $MLFLOW_TRACKING_URI, or mlflow=URI)")
    t.add_argument("--project", type=project_name, default=DEFAULT_PROJECT,
                   help=f"the trackio / W&B project (default {DEFAULT_PROJECT}); MLflow files each tag as its "
                        "own experiment")
    t.add_argument("--replace", action="store_true",
                   help="send again the trials already in the tracker (their runs are deleted first); without "
                        "it they are skipped")
    t.set_defaults(func=cmd_export_tracker)

    p = subparsers.add_parser("report", help="a markdown report of a run with charts (SVG and PNG)")
    p.add_argument("--tag", required=True, type=tag_name, help="the run")
    p.add_argument("--journals", type=absolute_path, help=journals_help)
    p.add_argument("-o", "--output", type=absolute_path, help="the folder to write (default journals/TAG/report/)")
    p.add_argument("--no-png", action="store_true", help="SVG charts only")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("import", help="bring in a run made with upstream autoresearch (its results.tsv)")
    p.add_argument("results", type=existing_file, metavar="RESULTS_TSV", help="the upstream results.tsv")
    p.add_argument("--tag", required=True, type=tag_name, help="name of the new run (journals/TAG/)")
    p.add_argument("--journals", type=absolute_path, help=journals_help)
    p.add_argument("--repo", type=existing_folder, metavar="PATH",
                   help="the upstream git repository, to recover each commit's diff")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-sd", type=non_negative_float,
                       help="sd of val_bpb between seeds of identical code; keeps under factor x sd are flagged")
    noise.add_argument("--noise-values", type=noise_values, metavar="V1,V2,...",
                       help="val_bpb of repeats of identical code with different seeds (the sd is computed)")
    p.add_argument("--floor-factor", type=finite_positive_float, default=2.0,
                   help="noise floor = factor x sd (default 2)")
    p.add_argument("--budget", type=finite_positive_float, default=300.0,
                   help="the training budget the run used, in seconds (default 300, upstream's)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every line read with care")
    p.set_defaults(func=cmd_import)
