"""The graveyard export on a constructed night (the real loop on the stand-in trainer) and on ledgers
built through the Ledger API: what it lists, how it groups, and that it stays readable markdown."""

from __future__ import annotations

import re
import statistics

import pytest

from supervisor.core.categories import Category, infer_category, normalize_category, trial_category
from supervisor.core.config import RunConfig
from supervisor.morning.graveyard import RunView, fenced, graveyard_markdown, md_cell
from supervisor.store.ledger import Ledger
from tests.loop_support import cli
from tests.morning_support import build_run


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    config = build_run(tmp_path_factory.mktemp("graveyard"))
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    yield config, ledger
    ledger.close()


def sections(markdown: str) -> dict[str, str]:
    """'## Heading' -> the text under it."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def trial_block(markdown: str, trial_id: int) -> str:
    start = markdown.index(f'<a id="trial-{trial_id}"></a>')
    end = markdown.find('<a id="trial-', start + 10)
    end = min(x for x in (end, markdown.find("\n## ", start)) if x != -1)
    return markdown[start:end]


def test_every_discard_and_crash_grouped_by_what_was_tried(night):
    config, ledger = night
    md = graveyard_markdown(RunView.from_ledger(ledger))
    trials = ledger.trials()
    buried = [t for t in trials if t.status in ("discard", "crash")]
    assert {t.status for t in buried} == {"discard", "crash"}
    for t in trials:
        assert (f'<a id="trial-{t.id}"></a>' in md) == (t in buried), t.id
    groups = sections(md)
    ids_in = {name: set(map(int, re.findall(r'<a id="trial-(\d+)"', text))) for name, text in groups.items()}
    by_description = {t.description.split(" |")[0]: t.id for t in trials}
    # The agent's own category where it gave one; inferred from the diff (WIDTH, LR) where it did not.
    assert ids_in["Learning rates"] == {by_description["double the learning rate to 0.08"],
                                        by_description["raise the learning rate slightly to 0.041"]}
    assert ids_in["Architecture"] == {by_description["halve the model width to 16"]}
    assert ids_in["Efficiency"] == {by_description["fused attention kernel (crashes)"]}
    assert ids_in["Other"] == {by_description["stream two more metric lines"]}
    assert "(inferred from LR in the diff)" in trial_block(md, by_description["raise the learning rate slightly to 0.041"])
    assert "(the agent's category)" in trial_block(md, by_description["double the learning rate to 0.08"])


def test_each_trial_has_numbers_interpretation_diff_and_log(night):
    config, ledger = night
    view = RunView.from_ledger(ledger)
    md = graveyard_markdown(view)
    floor = view.floor()
    assert floor and floor > 0
    for t in view.by_status("discard"):
        block = trial_block(md, t.id)
        parent = ledger.trial(t.parent_trial)
        assert f"**val_bpb** {t.val_bpb:.6f} vs parent {parent.val_bpb:.6f} (trial {parent.id})" in block
        assert f"{abs(t.delta) / floor:.1f}x floor" in block
        assert ("within noise" in block) == (abs(t.delta) < floor)
        assert ledger.journal_for(t.id).interpretation in block
        # A short diff, folded: the changed line is there, inside <details> and a diff fence.
        diff_block = block[block.index("<details><summary>diff"):]
        assert "```diff" in diff_block and "</details>" in diff_block
        changed = [line for line in t.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
        assert changed[0] in diff_block
    crash = view.by_status("crash")[0]
    block = trial_block(md, crash.id)
    assert "**Crashed:** exit code 1: RuntimeError: CUDA error" in block
    log = block[block.index("lines of the log"):]
    assert "RuntimeError: CUDA error: an illegal memory access" in log and "Traceback" in log
    assert ledger.journal_for(crash.id).interpretation in block


def test_summary_table_counts_and_losses(night):
    config, ledger = night
    view = RunView.from_ledger(ledger)
    md = graveyard_markdown(view)
    summary = sections(md)["Summary"]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in summary.splitlines()
             if line.startswith("| ") and not line.startswith("| what"))}
    lr = [t for t in view.by_status("discard", "crash") if view.category(t).name == "learning_rate"]
    deltas = [t.delta for t in lr]
    tries, discarded, crashed, within, mean, best = rows["learning rates"]
    assert (tries, discarded, crashed) == ("2", "2", "0")
    assert within == str(sum(abs(d) < view.floor() for d in deltas))
    assert mean == f"+{statistics.fmean(deltas):.4f}" and float(best.replace("+", "")) == pytest.approx(min(deltas), abs=1e-4)
    assert rows["efficiency"][:3] == ["1", "0", "1"] and rows["efficiency"][4:] == ["n/a", "n/a"]
    assert rows["**all**"][:3] == ["5", "4", "1"]
    # The contents link every group to its heading.
    for label in ("Learning rates", "Architecture", "Efficiency", "Other"):
        assert f"[{label}](#{label.lower().replace(' ', '-')})" in md


def test_markdown_stays_intact_with_hostile_text(tmp_path):
    """Pipes, HTML and backtick fences in descriptions and diffs cannot break the page."""
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    ledger.init_run("h", RunConfig(tag="h", journals_root=tmp_path).to_json())
    base = ledger.insert_imported_trial(description="baseline", status="keep", val_bpb=1.0, budget_s=300.0)
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-X = 1\n+X = 2  # ```` a fence inside\n"
    ledger.insert_imported_trial(description="a | b <script>alert(1)</script>", status="discard", val_bpb=1.01,
                                 parent_trial=base, parent_val_bpb=1.0, delta=0.01, diff=diff, budget_s=300.0)
    md = graveyard_markdown(RunView.from_ledger(ledger))
    row = next(line for line in md.splitlines() if line.startswith("| [2]"))
    assert row.count(" | ") == 6  # seven cells, the pipe in the description escaped
    assert "a \\| b &lt;script>alert(1)&lt;/script>" in row and "<script>" not in md
    fence = re.search(r"^(`{3,})diff$", md, flags=re.MULTILINE).group(1)
    assert len(fence) >= 5  # longer than the four backticks inside the diff
    assert md.count(fence) == 2
    ledger.close()
    assert fenced("x ``` y", "text").startswith("````text\n")
    assert md_cell("a\nb | c") == "a b \\| c"


def test_nothing_buried(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    ledger.init_run("clean", RunConfig(tag="clean", journals_root=tmp_path).to_json())
    ledger.insert_imported_trial(description="baseline", status="keep", val_bpb=1.0, budget_s=300.0)
    md = graveyard_markdown(RunView.from_ledger(ledger))
    assert "Nothing was discarded and nothing crashed." in md and "## Summary" not in md
    ledger.close()


def test_cli_export_graveyard(night):
    config, _ = night
    journals = str(config.journals_root)
    out = config.run_dir / "shared" / "graveyard.md"
    result = cli("export", "graveyard", "--tag", config.tag, "--journals", journals, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    text = out.read_text()
    assert text.startswith(f"# Graveyard: {config.tag}") and "## Summary" in text
    default = cli("export", "graveyard", "--tag", config.tag, "--journals", journals)
    assert default.returncode == 0 and (config.run_dir / "graveyard.md").is_file()
    stdout = cli("export", "graveyard", "--tag", config.tag, "--journals", journals, "-o", "-")
    assert stdout.stdout.startswith("# Graveyard:")
    missing = cli("export", "graveyard", "--tag", "nope", "--journals", journals)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("description, diff, expected", [
    ("increase matrix LR to 0.04", "", "learning_rate"),
    ("EMBEDDING_LR 0.4→0.6 (embeddings undertrained)", "", "learning_rate"),
    ("cosine warmdown instead of linear", "", "schedule"),
    ("WARMDOWN_RATIO 0.5 -> 0.6", "", "schedule"),
    ("Muon NS iterations 5→4, fewer orthogonalization steps", "", "optimizer"),
    ("HEAD_DIM 128→64 (6 heads→12 heads)", "", "attention"),
    ("sliding window attention SSSL", "", "attention"),
    ("halve total batch size to 2^16", "", "batch_size"),
    ("Hypothesis: smaller batch (2^18→2^16) = more optimizer steps", "", "batch_size"),
    ("lower weight decay to 0.1", "", "regularisation"),
    ("softcap 30→15", "", "regularisation"),
    ("zero-init the output projections", "", "initialisation"),
    ("FP8 training via torchao", "", "efficiency"),
    ("re-enable torch.compile", "", "efficiency"),
    ("ReLU² MLP instead of SwiGLU", "", "architecture"),
    ("double model width (OOM)", "", "architecture"),
    ("try the thing from the paper", "-X = 1\n+STEPS = 12\n", "other"),
    ("offline: MUON_MOMENTUM 0.95 -> 0.9", "", "optimizer"),
    ("try it", "--- a/t.py\n+++ b/t.py\n-DEPTH = 8\n+DEPTH = 12\n", "architecture"),
    ("try it", "-NS_STEPS = 5\n+NS_STEPS = 4\n", "optimizer"),
])
def test_inferred_categories(description, diff, expected):
    assert infer_category(description, diff).name == expected


def test_agent_category_wins_and_aliases():
    assert trial_category("attention", "increase matrix LR", "") == Category("attention", "agent")
    assert trial_category("bogus", "increase matrix LR").source == "inferred"
    assert normalize_category("Learning Rate") == "learning_rate"
    assert normalize_category("lr") == "learning_rate"
    assert normalize_category("regularization") == "regularisation"
    assert normalize_category("arch") == "architecture"
    assert normalize_category("router") is None
    assert infer_category("nothing here").evidence.startswith("nothing")
