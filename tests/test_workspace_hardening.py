"""The supervisor never runs what the workspace contains: hooks, config-driven programs, filter drivers.

A trial that is not sandboxed can write into the workspace's `.git` and plant `.gitattributes`. Real git,
real repositories: each planted program would touch a marker file if git ran it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from supervisor.core.config import Layout
from supervisor.trial.workspace import (
    GIT_OVERRIDES,
    Workspace,
    WorkspaceError,
    git_environment,
    sanitize_config,
)

FAKE_SOURCE = Path(__file__).resolve().parent / "fake_trainer"
BRANCH = "autoresearch/hardening"


def make(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws", FAKE_SOURCE, Layout(), BRANCH)


def program(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An executable shell script that leaves a marker file when run; returns (script, marker)."""
    marker = tmp_path / f"{name}.ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\ncat\n")
    script.chmod(0o755)
    return script, marker


def plant_everything(tmp_path: Path, ws: Workspace) -> dict[str, Path]:
    """What an adversarial trial can leave behind: hooks, dangerous config, a filter via .gitattributes."""
    markers = {}
    hooks = ws.root / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-commit", "post-checkout", "post-rewrite", "reference-transaction",
                 "pre-auto-gc", "post-index-change"):
        script, markers[hook] = program(tmp_path, hook)
        (hooks / hook).write_text(script.read_text())
        (hooks / hook).chmod(0o755)
    fsmonitor, markers["fsmonitor"] = program(tmp_path, "fsmonitor")
    clean, markers["clean"] = program(tmp_path, "clean")
    smudge, markers["smudge"] = program(tmp_path, "smudge")
    textconv, markers["textconv"] = program(tmp_path, "textconv")
    external, markers["external"] = program(tmp_path, "external")
    pager, markers["pager"] = program(tmp_path, "pager")
    hooks_path = tmp_path / "evil-hooks"
    hooks_path.mkdir()
    script, markers["hooksPath"] = program(tmp_path, "hookspath-post-commit")
    (hooks_path / "post-commit").write_text(script.read_text())
    (hooks_path / "post-commit").chmod(0o755)
    with open(ws.root / ".git" / "config", "a") as cfg:
        cfg.write(f"[core]\n\tfsmonitor = {fsmonitor}\n\thooksPath = {hooks_path}\n\tpager = {pager}\n"
                  f"[filter \"evil\"]\n\tclean = {clean}\n\tsmudge = {smudge}\n\trequired = true\n"
                  f"[diff]\n\texternal = {external}\n[diff \"evil\"]\n\ttextconv = {textconv}\n"
                  f"[include]\n\tpath = {tmp_path / 'more.config'}\n")
    (tmp_path / "more.config").write_text(f"[core]\n\tfsmonitor = {fsmonitor}\n")
    (ws.root / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (ws.root / "trainer" / ".gitattributes").write_text("*.py filter=evil diff=evil\n")
    info = ws.root / ".git" / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_text("* filter=evil diff=evil\n")
    return markers


def ran(markers: dict[str, Path]) -> list[str]:
    return sorted(name for name, marker in markers.items() if marker.exists())


def test_nothing_planted_runs_and_everything_is_repaired(tmp_path: Path) -> None:
    ws = make(tmp_path)
    clean_config = (ws.root / ".git" / "config").read_bytes()
    markers = plant_everything(tmp_path, ws)
    ws.editable_path.write_text(ws.editable_path.read_text() + "\n# a trial's change\n")

    diff = ws.working_diff()
    assert "+# a trial's change" in diff
    commit = ws.commit_trial("trial 1")
    assert ws.show_file(commit).endswith("# a trial's change")  # committed as written: no clean filter
    ws.reset_to(commit + "~1")
    ws.dirty_paths()
    ws.diff(commit + "~1", commit)

    assert ran(markers) == []
    assert (ws.root / ".git" / "config").read_bytes() == clean_config
    assert not (ws.root / ".gitattributes").exists() and not (ws.root / "trainer" / ".gitattributes").exists()
    assert not (ws.root / ".git" / "info" / "attributes").exists()
    assert not list((ws.root / ".git" / "hooks").iterdir())
    findings = ws.tamper_findings()
    assert any(".git/config" in f for f in findings)
    assert any(".git/hooks/post-commit" in f for f in findings)
    assert any(f.startswith(".gitattributes") for f in findings)
    assert any("trainer/.gitattributes" in f for f in findings)
    assert any(".git/info/attributes" in f for f in findings)
    assert ws.tamper_findings() == []  # returned once, then cleared


def test_without_the_repair_the_command_line_still_disables_hooks_and_programs(tmp_path: Path) -> None:
    """Between a repair and a command (a trial running while git runs), the `-c` overrides and the clean
    environment alone keep hooks, hooksPath, fsmonitor, pager, external diff and includes from running."""
    ws = make(tmp_path)
    ws.repo.git.before_command = None  # no guard: only the overrides stand
    markers = plant_everything(tmp_path, ws)
    for name in ("clean", "smudge", "textconv"):  # a filter driver named by attributes needs the guard
        markers.pop(name)
    (ws.root / ".gitattributes").unlink()
    (ws.root / "trainer" / ".gitattributes").unlink()
    (ws.root / ".git" / "info" / "attributes").unlink()
    ws.editable_path.write_text(ws.editable_path.read_text() + "\n# change\n")
    ws.working_diff()
    commit = ws.commit_trial("trial")
    ws.dirty_paths()
    ws.reset_to(commit + "~1")
    ws.repo.git.checkout("HEAD", "--", ws.layout.editable)
    assert ran(markers) == []


def test_opening_a_tampered_workspace_cleans_its_config_first(tmp_path: Path) -> None:
    """A supervisor killed after a trial planted config: --resume opens the workspace without using it."""
    ws = make(tmp_path)
    ws.repo.close()
    fsmonitor, marker = program(tmp_path, "fsmonitor")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open(ws.root / ".git" / "config", "a") as cfg:
        cfg.write(f"[core]\n\tfsmonitor = {fsmonitor}\n\tworktree = {elsewhere}\n"
                  "[remote \"origin\"]\n\turl = https://example.com/x.git\n\tuploadpack = /tmp/evil\n"
                  "[user]\n\tsigningkey = ABC\n")
    reopened = Workspace(ws.root, Layout(), BRANCH)
    assert Path(reopened.repo.working_tree_dir) == ws.root  # core.worktree did not redirect it
    reopened.ensure_branch()
    reopened.dirty_paths()
    assert not marker.exists()
    findings = reopened.tamper_findings()
    assert len(findings) == 1 and "core.fsmonitor" in findings[0] and "core.worktree" in findings[0]
    listed = subprocess.run(["git", "config", "--file", str(ws.root / ".git" / "config"), "--list"],
                            capture_output=True, text=True, check=True).stdout
    assert "fsmonitor" not in listed and "worktree" not in listed and "uploadpack" not in listed
    # Everything harmless is kept as it was: the identity, the remote, a signing key id.
    assert "user.name=autoresearch-supervisor" in listed and "remote.origin.url=https://example.com/x.git" in listed
    assert "user.signingkey=ABC" in listed


def test_a_clean_config_is_left_byte_for_byte(tmp_path: Path) -> None:
    config = tmp_path / "config"
    text = '[core]\n\tbare = false\n[remote "up stream"]\n\turl = git@host:x.git\n# a comment\n'
    config.write_text(text)
    assert sanitize_config(config) == []
    assert config.read_text() == text


def test_a_sanitized_config_keeps_odd_values_exactly(tmp_path: Path) -> None:
    config = tmp_path / "config"
    subprocess.run(["git", "config", "--file", str(config), "user.name", 'A "quoted" back\\slash\tname'], check=True)
    subprocess.run(["git", "config", "--file", str(config), 'branch.we"ird.remote', "origin"], check=True)
    subprocess.run(["git", "config", "--file", str(config), "core.hooksPath", "/tmp/x"], check=True)
    assert sanitize_config(config) and "hooksPath" not in config.read_text()
    read = subprocess.run(["git", "config", "--file", str(config), "--get", "user.name"], capture_output=True,
                          text=True, check=True).stdout
    assert read == 'A "quoted" back\\slash\tname\n'
    assert subprocess.run(["git", "config", "--file", str(config), "--get", 'branch.we"ird.remote'],
                          capture_output=True, text=True, check=True).stdout == "origin\n"


def test_an_unreadable_config_is_replaced(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.repo.close()
    (ws.root / ".git" / "config").write_text("[core\n\tthis is not git config = = =\n")
    reopened = Workspace(ws.root, Layout(), BRANCH)
    reopened.editable_path.write_text("print('x')\n")
    assert reopened.commit_trial("after the repair")  # the identity came back with the minimal config
    assert "replaced by a minimal configuration" in reopened.tamper_findings()[0]


def test_changed_and_replaced_guarded_files_are_restored(tmp_path: Path) -> None:
    ws = make(tmp_path)
    config = ws.root / ".git" / "config"
    original = config.read_bytes()
    config.unlink()
    config.symlink_to(tmp_path / "nowhere")
    (ws.root / ".git" / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (ws.root / ".git" / "objects" / "info" / "alternates").write_text(str(tmp_path) + "\n")
    (ws.root / ".git" / "hooks").mkdir(exist_ok=True)
    (ws.root / ".git" / "hooks" / "sub").mkdir()
    (ws.root / ".git" / "hooks" / "sub" / "x").write_text("x")
    ws.head()  # pure Python: no git command, no repair yet
    ws.dirty_paths()
    assert not config.is_symlink() and config.read_bytes() == original
    assert not (ws.root / ".git" / "objects" / "info" / "alternates").exists()
    assert not (ws.root / ".git" / "hooks" / "sub").exists()
    assert len(ws.tamper_findings()) == 3


def test_an_adopted_checkout_keeps_its_own_hooks_and_settings(tmp_path: Path) -> None:
    """A person's upstream checkout: their hook and settings stay (never run by us), new ones go."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    env = {**git_environment(), "GIT_AUTHOR_NAME": "p", "GIT_AUTHOR_EMAIL": "p@x", "GIT_COMMITTER_NAME": "p",
           "GIT_COMMITTER_EMAIL": "p@x"}
    for rel in ("train.py", "prepare.py", "program.md"):
        (repo / rel).write_text(f"# {rel}\n")
    subprocess.run(["git", "init", "-q", "-b", "master"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "upstream"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "config", "pull.rebase", "true"], cwd=repo, env=env, check=True)
    own_hook, own_marker = program(tmp_path, "own-pre-commit")
    (repo / ".git" / "hooks" / "pre-commit").write_text(own_hook.read_text())
    (repo / ".git" / "hooks" / "pre-commit").chmod(0o755)
    ws = Workspace.adopt(repo, Layout.upstream(), BRANCH)
    assert ws.tamper_findings() == []
    new_hook, new_marker = program(tmp_path, "new-post-commit")
    (repo / ".git" / "hooks" / "post-commit").write_text(new_hook.read_text())
    (repo / ".git" / "hooks" / "post-commit").chmod(0o755)
    (repo / "train.py").write_text("# changed\n")
    ws.commit_trial("trial")
    assert not own_marker.exists() and not new_marker.exists()
    assert (repo / ".git" / "hooks" / "pre-commit").exists()  # the person's, kept
    assert os.stat(repo / ".git" / "hooks" / "pre-commit").st_mode & stat.S_IXUSR
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    assert "pull.rebase=true" in subprocess.run(["git", "config", "--list", "--local"], cwd=repo, env=env,
                                                capture_output=True, text=True, check=True).stdout
    assert [f for f in ws.tamper_findings() if "post-commit" in f]


def test_git_runs_with_a_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-not-for-git-abcdefghijklmnop")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.hooksPath'='{tmp_path}'")
    monkeypatch.setenv("GIT_EXTERNAL_DIFF", str(program(tmp_path, "env-external")[0]))
    ws = make(tmp_path)
    # A hook in the place GIT_CONFIG_PARAMETERS points to, and the environment git sees, printed by git.
    script, marker = program(tmp_path, "param-hook")
    (tmp_path / "post-commit").write_text(script.read_text())
    (tmp_path / "post-commit").chmod(0o755)
    ws.editable_path.write_text("print(1)\n")
    assert "+print(1)" in ws.working_diff()
    ws.commit_trial("trial")
    assert not marker.exists() and not (tmp_path / "env-external.ran").exists()
    # What a program git starts actually inherits (an alias given on this one command line prints it).
    seen = ws.repo.git(c="alias.showenv=!env").showenv()
    assert "sk-ant-api03-not-for-git" not in seen and "ANTHROPIC_API_KEY" not in seen
    assert "GIT_EXTERNAL_DIFF" not in seen and f"'{tmp_path}'" not in seen
    assert f"GIT_CONFIG_GLOBAL={os.devnull}" in seen and "core.hookspath" in seen.lower()
    env = git_environment(ws.root)
    assert "ANTHROPIC_API_KEY" not in env and "GIT_CONFIG_PARAMETERS" not in env
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_DIR"] == str(ws.root / ".git") and env["GIT_WORK_TREE"] == str(ws.root)
    assert ("core.hooksPath", os.devnull) in GIT_OVERRIDES and ("core.fsmonitor", "false") in GIT_OVERRIDES


def test_a_folder_that_is_not_the_top_of_its_repository_is_refused(tmp_path: Path) -> None:
    ws = make(tmp_path)
    with pytest.raises(WorkspaceError, match="not a git repository|not the top"):
        Workspace(ws.root / "trainer", Layout(), BRANCH)


def test_a_config_replaced_by_a_link_is_made_a_plain_file_on_opening(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.repo.close()
    fsmonitor, marker = program(tmp_path, "fsmonitor")
    outside = tmp_path / "outside.config"
    outside.write_text((ws.root / ".git" / "config").read_text() + f"[core]\n\tfsmonitor = {fsmonitor}\n")
    (ws.root / ".git" / "config").unlink()
    (ws.root / ".git" / "config").symlink_to(outside)
    reopened = Workspace(ws.root, Layout(), BRANCH)
    reopened.dirty_paths()
    config = ws.root / ".git" / "config"
    assert not config.is_symlink() and "fsmonitor" not in config.read_text() and not marker.exists()
    findings = reopened.tamper_findings()
    assert any("link" in f for f in findings) and any("core.fsmonitor" in f for f in findings)
