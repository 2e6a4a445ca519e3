"""The walls of the architecture, checked on every test run (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_trainer_imports_nothing_from_supervisor():
    for path in modules("trainer"):
        assert not {n for n in imports(path) if n.split(".")[0] == "supervisor"}, path


def test_domain_knows_nothing_of_the_ui():
    for path in modules("supervisor"):
        if path.relative_to(ROOT / "supervisor").parts[0] in ("tui", "cli"):  # the UI, and the command that opens it
            continue
        bad = {n for n in imports(path) if n.split(".")[0] == "textual" or n.startswith("supervisor.tui")}
        assert not bad, f"{path} imports UI code: {bad}"


def test_agents_only_turn_model_output_into_tool_calls():
    forbidden = ("git", "sqlite3", "subprocess", "supervisor.store", "supervisor.trial", "supervisor.run",
                 "trainer")
    for path in modules("supervisor/agents"):
        bad = {n for n in imports(path) if n.startswith(forbidden)}
        assert not bad, f"{path} reaches past the tool interface: {bad}"


def test_supervisor_never_imports_torch_at_module_level():
    """torch costs seconds and GPU memory; the supervisor must not hold it all night."""
    for path in modules("supervisor"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "torch" for n in names), path


def test_the_layer_contracts_hold():
    """The layers of docs/architecture.md, as `lint-imports` checks them from pyproject.toml."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    proc = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout


def test_importing_the_domain_loads_no_ui_and_no_sdk():
    """The loop, the store and the morning commands run headless, on machines without the UI or an API key."""
    domain = ["supervisor.core.config", "supervisor.store.ledger", "supervisor.trial.runner", "supervisor.run.loop",
              "supervisor.run.status", "supervisor.morning.graveyard", "supervisor.agents.offline",
              "supervisor.agents.scripted"]
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in domain)
            + "print(sorted({n.split('.')[0] for n in sys.modules} & {'textual', 'anthropic', 'openai', 'torch'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"importing the domain loaded {proc.stdout.strip()}"
