"""The walls of the architecture, checked on every test run (docs/architecture.md)."""

from __future__ import annotations

import ast
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
        if "tui" in path.relative_to(ROOT / "supervisor").parts:
            continue
        bad = {n for n in imports(path) if n.split(".")[0] == "textual" or n.startswith("supervisor.tui")}
        assert not bad, f"{path} imports UI code: {bad}"


def test_agents_only_turn_model_output_into_tool_calls():
    forbidden = ("git", "sqlite3", "subprocess", "supervisor.ledger", "supervisor.workspace", "supervisor.loop",
                 "supervisor.runner", "trainer")
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
