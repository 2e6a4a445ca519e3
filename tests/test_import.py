"""Import of upstream autoresearch runs: constructed results.tsv files with the real quirks, a real git
repository for the diffs, and the imported run read back through `status --json`, the graveyard and the
report exactly as our own runs are."""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest

from supervisor.morning.graveyard import RunView, graveyard_markdown
from supervisor.morning.importer import ResultsImportError, import_results, parse_results
from supervisor.morning.report import write_report
from supervisor.store.ledger import Ledger
from tests.loop_support import cli

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
SD = 0.0006  # floor 0.0012 at factor 2


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """An upstream-style repository: each experiment a commit; discards and crashes reset away (so their
    commits are dangling, as upstream leaves them), and the results.tsv upstream would have written."""
    root = tmp_path_factory.mktemp("upstream")
    repo_dir = root / "repo"
    repo = git.Repo.init(repo_dir, initial_branch="master")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "upstream")
        cfg.set_value("user", "email", "upstream@example.com")
    train = repo_dir / "train.py"
    train.write_text("MATRIX_LR = 0.02\nDEPTH = 8\nWARMDOWN_RATIO = 0.5\nWINDOW_PATTERN = 'L'\n")
    (repo_dir / "prepare.py").write_text("# the harness\n")
    repo.index.add(["train.py", "prepare.py"])
    repo.index.commit("initial")
    rows = [("", "0.997900", "44.0", "keep", "baseline")]

    def experiment(old, new, val, mem, status, description):
        train.write_text(train.read_text().replace(old, new))
        repo.index.add(["train.py"])
        commit = repo.index.commit(description)
        rows.append((commit.hexsha[:7], val, mem, status, description))
        if status != "keep":
            repo.git.reset("--hard", "HEAD~1")

    experiment("MATRIX_LR = 0.02", "MATRIX_LR = 0.04", "0.993200", "44.2", "keep",
               "increase matrix LR to 0.04 (from 0.02, Muon only)")
    experiment("DEPTH = 8", "DEPTH = 12", "1.005000", "60.1", "discard", "deeper model: 12 layers, same width")
    rows.append(("deadbee", "0.999000", "44.0", "discard", "a commit since garbage-collected"))
    experiment("WINDOW_PATTERN = 'L'", "WINDOW_PATTERN = 'SSSL'", "0.000000", "0.0", "crash",
               "sliding windows SSSL (OOM, flash kernel)")
    experiment("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6", "0.992500", "44.2", "keep",
               "warmdown 0.5 -> 0.6, slightly longer")
    experiment("DEPTH = 8", "DEPTH = 6", "0.992900", "38.0", "discard", "shallower, 6 layers, faster steps")
    experiment("MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "0.990500", "44.2", "keep", "matrix LR 0.05")
    lines = [HEADER] + ["\t".join(r) for r in rows]
    clean = root / "results.tsv"
    clean.write_text("\n".join(lines) + "\n\n\n")  # upstream files often end in blank lines
    # The same file copied from a web page: a line-number column, and every tab turned into spaces.
    web = root / "web.tsv"
    web.write_text("\n".join(f"{n}  " + line.replace("\t", "    ") for n, line in enumerate(lines, 1)) + "\n")
    return {"root": root, "repo": repo_dir, "clean": clean, "web": web, "rows": rows}


def load(run_dir: Path) -> list:
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        return ledger.trials()
    finally:
        ledger.close()


def test_import_flags_keeps_against_the_floor_and_recovers_diffs(upstream, tmp_path):
    journals = tmp_path / "journals"
    result = cli("import", str(upstream["clean"]), "--tag", "up", "--journals", str(journals),
                 "--noise-sd", str(SD), "--repo", str(upstream["repo"]))
    assert result.returncode == 0, result.stderr
    assert "imported 8 trials" in result.stdout and "1 keep(s) flagged" in result.stdout
    assert "line 5: commit deadbee is not in" in result.stderr  # reported, not fatal
    status = json.loads(cli("status", "--tag", "up", "--journals", str(journals), "--json").stdout)
    assert status["state"] == "imported" and status["noise_floor"] == pytest.approx(2 * SD)
    trials = status["trials"]
    assert [t["kind"] for t in trials] == ["imported"] * 8
    assert [t["status"] for t in trials] == ["keep", "keep", "discard", "discard", "crash", "keep", "discard", "keep"]
    assert [t["journal"] for t in trials] == [False] * 8
    by_desc = {t["description"]: t for t in trials}
    baseline = by_desc["baseline"]
    assert baseline["commit"] is None and baseline["delta"] is None and not baseline["flagged"]
    lr = by_desc["increase matrix LR to 0.04 (from 0.02, Muon only)"]
    assert lr["parent_trial"] == baseline["id"] and lr["delta"] == pytest.approx(0.9932 - 0.9979)
    assert not lr["flagged"] and "above the noise floor 0.0012" in lr["decision"]
    warmdown = by_desc["warmdown 0.5 -> 0.6, slightly longer"]
    # Each keep's gain is against the keep before it (0.9932), not the baseline: 0.0007 < 0.0012.
    assert warmdown["parent_trial"] == lr["id"] and warmdown["delta"] == pytest.approx(-0.0007)
    assert warmdown["flagged"] and "under the noise floor" in warmdown["decision"]
    assert status["counts"]["flagged"] == 1 and [t["id"] for t in status["flagged"]] == [warmdown["id"]]
    last = by_desc["matrix LR 0.05"]
    assert last["parent_trial"] == warmdown["id"] and last["delta"] == pytest.approx(0.9905 - 0.9925)
    crash = by_desc["sliding windows SSSL (OOM, flash kernel)"]
    assert crash["status"] == "crash" and crash["val_bpb"] is None and crash["delta"] is None
    deeper = by_desc["deeper model: 12 layers, same width"]
    assert deeper["delta"] == pytest.approx(1.005 - 0.9932) and deeper["parent_trial"] == lr["id"]

    ledger_trials = {t.description: t for t in load(journals / "up")}
    # Diffs against the parent keep, for the dangling discard and crash commits too.
    assert "-DEPTH = 8\n+DEPTH = 12" in ledger_trials["deeper model: 12 layers, same width"].diff
    assert "+WINDOW_PATTERN = 'SSSL'" in ledger_trials["sliding windows SSSL (OOM, flash kernel)"].diff
    shallower = ledger_trials["shallower, 6 layers, faster steps"].diff
    assert "-DEPTH = 8\n+DEPTH = 6" in shallower and "WARMDOWN" not in shallower.split("@@")[-1].replace(
        " WARMDOWN_RATIO = 0.6", "")  # the parent keep already had the warmdown change
    assert ledger_trials["a commit since garbage-collected"].diff == ""
    assert ledger_trials["deeper model: 12 layers, same width"].peak_vram_mb == pytest.approx(60.1 * 1024)
    # The run folder is a run folder: results.tsv in the upstream format, the journal, the source kept.
    run_dir = journals / "up"
    assert (run_dir / "results.tsv").read_text().splitlines()[0] == HEADER
    assert (run_dir / "upstream-results.tsv").read_text() == upstream["clean"].read_text()
    assert "Noise floor given" in (run_dir / "journal.md").read_text()


def test_web_copy_reads_the_same_as_the_file(upstream):
    clean = parse_results(upstream["clean"].read_text())
    web = parse_results(upstream["web"].read_text())
    key = [(r.commit, r.val_bpb, r.memory_gb, r.status, r.description) for r in clean.rows]
    assert [(r.commit, r.val_bpb, r.memory_gb, r.status, r.description) for r in web.rows] == key
    assert len(key) == 8 and not clean.unreadable and not web.unreadable
    assert any("line-number" in n for n in web.notes) and any("spaces" in n for n in web.notes)
    assert key[0] == (None, 0.9979, 44.0, "keep", "baseline")
    assert key[4] == (upstream["rows"][4][0], None, None, "crash", "sliding windows SSSL (OOM, flash kernel)")


def test_quirks_and_unreadable_lines_are_named():
    text = "\ufeff" + "\r\n".join([
        HEADER,
        "\t1.000000\t10.0\tKEEP\tbaseline",                              # 2: no commit, status in capitals
        "a1b2c3d\t0.990000\t10.0\tkeep\tLR 0.04\t(tab inside)",         # 3: a tab inside the description
        "b2c3d4e\t0.000000\t0.0\tcrash\tOOM, at 2x width (bf16)",       # 4: the crash convention
        "c3d4e5f\tabc\t10.0\tdiscard\ta broken number",                 # 5: unreadable
        "d4e5f6a\t0.980000\t10.0\tbest\tnot a status",                  # 6: unreadable
        "e5f6a7b\t0.000000\t0.0\tkeep\ta keep without a result",        # 7: unreadable
        "f6a7b8c\t0.000000\t0.0\tdiscard\taborted before the eval",     # 8: a discard with no result
        "a7b8c9d\tFAILED\t\tcrashed\tNaN at step 40",                   # 9: crashed, a word for val_bpb
        "0123456",                                                      # 10: too short
        "", "   ", "",
    ])
    parsed = parse_results(text)
    assert [r.line for r in parsed.rows] == [2, 3, 4, 8, 9]
    rows = {r.line: r for r in parsed.rows}
    assert rows[2].commit is None and rows[2].status == "keep"
    assert rows[3].description == "LR 0.04 (tab inside)"
    assert rows[4].val_bpb is None and rows[4].status == "crash" and rows[4].description == "OOM, at 2x width (bf16)"
    assert rows[8].val_bpb is None and rows[8].status == "discard" and "no result" in rows[8].notes[0]
    assert rows[9].status == "crash" and rows[9].val_bpb is None
    bad = {u.line: u.reason for u in parsed.unreadable}
    assert set(bad) == {5, 6, 7, 10}
    assert "'abc' is not a number" in bad[5]
    assert "no status (keep, discard or crash) in column 4; found 'best'" in bad[6]
    assert "no result to keep" in bad[7]
    assert "only 1 column" in bad[10]


def test_numbers_no_measurement_gives_are_left_out_and_said(tmp_path):
    """1e308 (a sentinel or a typo) is not a val_bpb, a memory size or a step count: a keep with it is unreadable,
    a discard keeps its line without the value, and the report and status of the run work."""
    text = "\n".join([
        "commit\tval_bpb\tmemory_gb\tnum_steps\tstatus\tdescription",
        "a1b2c3d\t1.000000\t10.0\t100\tkeep\tbaseline",
        "b2c3d4e\t1e308\t1e308\t1e308\tdiscard\ta typo",
        "c3d4e5f\t1e308\t10.0\t100\tkeep\ta keep with no real result",
        "d4e5f6a\t0.990000\t10.0\t100\tkeep\treal gain",
    ])
    parsed = parse_results(text)
    rows = {r.line: r for r in parsed.rows}
    assert rows[3].val_bpb is None and rows[3].memory_gb is None
    assert "not a bits-per-byte value" in rows[3].notes[0] and "not a memory size" in rows[3].notes[1]
    assert [u.line for u in parsed.unreadable] == [4] and "not a bits-per-byte value" in parsed.unreadable[0].reason
    results = tmp_path / "results.tsv"
    results.write_text(text + "\n")
    journals = tmp_path / "journals"
    imported = cli("import", str(results), "--tag", "typo", "--journals", str(journals))
    assert imported.returncode == 0 and "Traceback" not in imported.stderr, imported.stderr
    assert load(journals / "typo")[1].num_steps is None  # 1e308 steps do not fit a SQLite integer either
    for command in (["report"], ["status"], ["export", "graveyard"]):
        result = cli(*command, "--tag", "typo", "--journals", str(journals))
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)


def test_extra_columns_and_category_column():
    text = "\n".join([
        "commit\tval_bpb\tmemory_gb\tmfu\ttok_per_sec\tnum_steps\tnum_params_M\tstatus\tdescription",
        "3087aeb\t2.335670\t5.5\t58.1\t37700\t180\t162.1\tkeep\tbaseline (SwiGLU d12)",
        "81dd182\t2.494669\t5.5\t53.7\t33477\t167\t162.1\tdiscard\tconstant WD + WARMDOWN_RATIO 0.4→0.3",
        "7b1c5a1\t0.000000\t0.0\t0.0\t0\t0\t0.0\tcrash\tweight tying: loss stuck at 10.82",
    ])
    parsed = parse_results(text)
    assert [r.status for r in parsed.rows] == ["keep", "discard", "crash"]
    assert parsed.rows[1].columns["tok_per_sec"] == "33477"
    # The same with spaces for tabs: still readable, since only the description has spaces.
    spaced = parse_results(text.replace("\t", "  "))
    assert [(r.val_bpb, r.status, r.description) for r in spaced.rows] == \
        [(r.val_bpb, r.status, r.description) for r in parsed.rows]
    categorised = parse_results("commit\tkind\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                "153211f\tlr\t0.96\t29.9\tkeep\tlower AdamW peak\n")
    assert categorised.rows[0].columns["kind"] == "lr"


def test_import_maps_extra_columns_and_categories(tmp_path):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("\n".join([
        "commit\tcategory\tval_bpb\tmemory_gb\tmfu\ttok_per_sec\tnum_steps\tnum_params_M\tstatus\tdescription",
        "3087aeb\t\t2.30\t5.5\t58.1\t37700\t180\t162.1\tkeep\tbaseline",
        "81dd182\tlr\t2.29\t5.5\t53.7\t33477\t167\t162.1\tkeep\tbigger steps",
        "91dd182\t\t2.40\t5.5\t50.0\t30000\t150\t162.1\tdiscard\tswap GeLU for ReLU",
    ]) + "\n")
    result = import_results(tsv, "cols", journals_root=tmp_path / "j")
    trials = load(result.run_dir)
    assert [(t.mfu_percent, t.tokens_per_s, t.num_steps, t.num_params_m) for t in trials][1] == (53.7, 33477.0, 167, 162.1)
    assert trials[1].category == "learning_rate" and trials[2].category is None
    assert result.floor is None and result.flagged == 0
    ledger = Ledger(result.run_dir / "ledger.sqlite")
    view = RunView.from_ledger(ledger)
    assert view.category(trials[2]).name == "architecture" and view.category(trials[2]).source == "inferred"
    written = write_report(ledger, tmp_path / "report")
    assert "throughput.svg" in {p.name for p in written.charts}  # the file had throughput columns
    ledger.close()


def test_keep_worse_than_its_parent_and_noise_values(tmp_path):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("\n".join([HEADER, "aaaaaaa\t1.000\t1\tkeep\tbaseline",
                              "bbbbbbb\t1.002\t1\tkeep\tre-baseline on new hardware",
                              "ccccccc\t0.990\t1\tkeep\ta real gain"]) + "\n")
    result = import_results(tsv, "worse", journals_root=tmp_path / "j", noise_values=[1.0, 1.002, 0.998])
    trials = load(result.run_dir)
    assert trials[1].flagged and "worse than its parent" in trials[1].decision
    assert not trials[2].flagged  # 0.012 over its parent, the floor is 2 x 0.002
    assert result.floor == pytest.approx(0.004)
    ledger = Ledger(result.run_dir / "ledger.sqlite")
    noise = ledger.latest_noise(300.0)
    assert noise.values == (1.0, 1.002, 0.998) and noise.sd == pytest.approx(0.002)
    ledger.close()


def test_graveyard_and_report_of_an_imported_run(upstream, tmp_path):
    result = import_results(upstream["clean"], "shown", journals_root=tmp_path / "j", noise_sd=SD,
                            repo=upstream["repo"])
    ledger = Ledger(result.run_dir / "ledger.sqlite")
    md = graveyard_markdown(RunView.from_ledger(ledger))
    assert "(imported from an upstream results.tsv)" in md
    assert "## Architecture" in md and "+DEPTH = 12" in md
    assert "No diff: the commit was not found" in md  # the garbage-collected one
    assert "none (imported from an upstream results.tsv, which has no journal)" in md
    written = write_report(ledger, tmp_path / "report")
    page = written.markdown.read_text()
    assert "upstream autoresearch keeps no reflections" in page and "no plan queue" in page
    assert "upstream's results.tsv has no such columns" in page
    assert {"trajectory.svg", "gains.svg", "cost.svg"} <= {p.name for p in written.charts}
    ledger.close()


def test_bad_input_creates_nothing(upstream, tmp_path):
    journals = tmp_path / "j"
    junk = tmp_path / "junk.tsv"
    junk.write_text("commit\trmse\tr2\tstatus\tdescription\nabc1234\t123\t0.5\tkeep\tnot ours\n")
    with pytest.raises(ResultsImportError, match="no val_bpb column"):
        import_results(junk, "junk", journals_root=journals)
    assert not (journals / "junk").exists()
    with pytest.raises(ResultsImportError, match="not a git repository"):
        import_results(upstream["clean"], "norepo", journals_root=journals, repo=tmp_path)
    assert not (journals / "norepo").exists()
    import_results(upstream["clean"], "once", journals_root=journals)
    before = (journals / "once" / "ledger.sqlite").read_bytes()
    again = cli("import", str(upstream["clean"]), "--tag", "once", "--journals", str(journals))
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (journals / "once" / "ledger.sqlite").read_bytes() == before
    missing = cli("import", str(tmp_path / "nope.tsv"), "--tag", "x", "--journals", str(journals))
    assert missing.returncode == 2 and "no file" in missing.stderr  # a wrong command line: refused as it is read
    negative = cli("import", str(upstream["clean"]), "--tag", "x", "--journals", str(journals), "--noise-sd", "-1")
    assert negative.returncode == 2 and "--noise-sd" in negative.stderr
    unreadable = cli("import", str(junk), "--tag", "x", "--journals", str(journals))
    assert unreadable.returncode == 1 and "line 2" in unreadable.stderr
    assert not (journals / "x").exists()


def test_an_imported_run_cannot_be_resumed_and_says_why(upstream, tmp_path):
    import_results(upstream["clean"], "old", journals_root=tmp_path / "j", noise_sd=SD)
    before = (tmp_path / "j/old/ledger.sqlite").read_bytes()
    result = cli("run", "--headless", "--tag", "old", "--resume", "--journals", str(tmp_path / "j"),
                 "--cache", str(tmp_path))
    assert result.returncode == 1 and "was imported from an upstream results.tsv" in result.stderr
    status = json.loads(cli("status", "--tag", "old", "--json", "--journals", str(tmp_path / "j")).stdout)
    assert status["state"] == "imported"
    noise = cli("noise", "--tag", "old", "--journals", str(tmp_path / "j"))
    assert noise.returncode == 1 and "was imported" in noise.stderr
    assert (tmp_path / "j/old/ledger.sqlite").read_bytes() == before  # refused before touching anything
