"""The run's own git repository: one commit per trial, keeps advance the branch, the rest is reset.

Made from the project's `trainer/` and `program.md` (or an existing upstream checkout), on a branch
`autoresearch/<tag>`. The project's own repository is never touched.

The supervisor never runs what the workspace contains. A trial that is not sandboxed can write into
`.git`: a hook (`git commit --no-verify` still runs post-commit), `core.fsmonitor`, `core.hooksPath`,
`diff.external`, a filter driver named by a `.gitattributes`, an `include.path`... Every git command the
workspace runs therefore goes through :class:`_IsolatedGit`:

* a clean environment (``env -i`` with :func:`scrub_environment`'s allowlist), no system or global
  configuration, no replace refs, no prompts;
* the settings that run programs forced off on the command line (``-c core.hooksPath=/dev/null``,
  ``-c core.fsmonitor=false``, ... :data:`GIT_OVERRIDES`), which beat the repository's own;
* before each command, :class:`_GitDirGuard` puts back the supervisor's version of `.git/config`, of
  `.git/info/` and `.git/hooks/`, and of the `.gitattributes` files that apply to the trainer, and removes
  what appeared there; each repair is a finding (:meth:`Workspace.tamper_findings`).

The supervisor's version of `.git/config` is the one found when the workspace is made or opened, without
the keys that run programs or redirect git (:func:`_dangerous_config_key`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import git

from supervisor.core.config import Layout
from supervisor.core.errors import UserError
from supervisor.trial.environment import scrub_environment

log = logging.getLogger(__name__)

IGNORED = "__pycache__/\n*.pyc\n.venv/\n"
AUTHOR = "autoresearch-supervisor"
AUTHOR_EMAIL = "supervisor@autoresearch.local"

# Given as `-c` to every git command: command-line configuration wins over the repository's, so whatever a
# trial wrote into .git/config between two repairs, these never run a program or change an output we parse.
GIT_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("sequence.editor", "false"),
    ("core.sshCommand", "false"),
    ("core.askPass", ""),
    ("core.attributesFile", os.devnull),
    ("core.excludesFile", os.devnull),
    ("credential.helper", ""),
    ("protocol.allow", "never"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("submodule.recurse", "false"),
    ("color.ui", "false"),
    ("diff.noprefix", "false"),
    ("diff.mnemonicPrefix", "false"),
    ("diff.relative", "false"),
)
# The environment of every git command, on top of the trial allowlist: no configuration outside the
# repository, no replace refs (which would make `git show` lie), no terminal prompts, plain C output.
GIT_ENVIRONMENT = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_SYSTEM": os.devnull,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_NO_LAZY_FETCH": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "LANGUAGE": "C",
    "LC_ALL": "C",
}

# Keys of .git/config that run a program, redirect git elsewhere, change the bytes committed or the text
# we parse. Whole sections, then single keys, then keys of a named subsection (remote.<name>.uploadpack).
_DROPPED_SECTIONS = frozenset({
    "include", "includeif", "filter", "diff", "merge", "credential", "gpg", "alias", "pager", "url", "http",
    "https", "protocol", "submodule", "uploadpack", "receive", "trace2", "difftool", "mergetool", "browser",
    "web", "instaweb", "sendemail", "hook", "color", "interactive", "sequence", "man", "guitool", "log",
    "status", "safe", "lfs",
})
_DROPPED_KEYS = frozenset({
    "core.fsmonitor", "core.fsmonitorhookversion", "core.hookspath", "core.worktree", "core.pager",
    "core.editor", "core.sshcommand", "core.askpass", "core.gitproxy", "core.alternaterefscommand",
    "core.attributesfile", "core.excludesfile", "core.autocrlf", "core.eol", "core.safecrlf",
    "core.virtualfilesystem", "core.sparsecheckout", "core.sparsecheckoutcone",
    "extensions.worktreeconfig", "extensions.partialclone",
})
_DROPPED_SUBSECTION_KEYS = frozenset({
    ("remote", "uploadpack"), ("remote", "receivepack"), ("remote", "proxy"), ("remote", "vcs"),
    ("remote", "promisor"), ("remote", "partialclonefilter"),
})
# What a config that cannot be read at all is replaced by (the workspace's own settings are added back).
_MINIMAL_CONFIG = ("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
                   f"[user]\n\tname = {AUTHOR}\n\temail = {AUTHOR_EMAIL}\n[commit]\n\tgpgsign = false\n")

# Files of the git directory that git reads and a trial must not add or change: the config, a per-worktree
# config, a pointer to another git directory, alternates (objects from elsewhere), shallow grafts.
_GUARDED_FILES = ("config", "config.worktree", "commondir", "objects/info/alternates",
                  "objects/info/http-alternates", "shallow")
_PER_WORKTREE_FILES = ("config.worktree", "commondir")
# Folders of the git directory whose files are guarded one by one: hooks, and info/ (attributes, exclude,
# grafts, sparse-checkout).
_GUARDED_FOLDERS = ("hooks", "info")


class WorkspaceError(UserError, RuntimeError):
    """The workspace is not in a state the supervisor can work from; the message says why."""


# ---- git, isolated ------------------------------------------------------------------------------------------
def git_environment(work_tree: Path | None = None) -> dict[str, str]:
    """The whole environment of a workspace git command: the trial allowlist and :data:`GIT_ENVIRONMENT`;
    with ``work_tree`` (whose .git is a folder), GIT_DIR and GIT_WORK_TREE, which beat a core.worktree."""
    env = scrub_environment(os.environ)
    env.update(GIT_ENVIRONMENT)
    if work_tree is not None and (Path(work_tree) / ".git").is_dir():
        env["GIT_DIR"] = str(Path(work_tree) / ".git")
        env["GIT_WORK_TREE"] = str(work_tree)
    return env


def git_config_arguments() -> list[str]:
    """``-c key=value`` for each of :data:`GIT_OVERRIDES`."""
    args: list[str] = []
    for key, value in GIT_OVERRIDES:
        args += ["-c", f"{key}={value}"]
    return args


class _IsolatedGit(git.Git):
    """GitPython's command runner, with every command run as ``env -i <clean env> git -c ... <command>``.

    GitPython starts each command with a copy of ``os.environ`` plus its own additions and cannot remove a
    variable; ``env -i`` can. ``before_command`` (the workspace's guard) runs before each command.
    """

    __slots__ = ("_prefix", "before_command")

    def __init__(self, working_dir: Any = None) -> None:
        super().__init__(working_dir)
        self.before_command: Callable[[], None] | None = None
        work_tree = Path(working_dir) if working_dir is not None else None
        git_path = shutil.which(str(self.GIT_PYTHON_GIT_EXECUTABLE)) or str(self.GIT_PYTHON_GIT_EXECUTABLE)
        env_path = "/usr/bin/env" if os.path.exists("/usr/bin/env") else shutil.which("env")
        if env_path:
            pairs = [f"{k}={v}" for k, v in git_environment(work_tree).items()]
            self._prefix = [env_path, "-i", *pairs, git_path, *git_config_arguments()]
        else:  # no env(1) (Windows): GitPython's environment, overridden where it matters
            self.update_environment(**git_environment(work_tree))
            self._prefix = [git_path, *git_config_arguments()]

    def execute(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        if self.before_command is not None:
            self.before_command()
        if isinstance(command, (list, tuple)) and command and command[0] == self.GIT_PYTHON_GIT_EXECUTABLE:
            command = [*self._prefix, *command[1:]]
        return super().execute(command, *args, **kwargs)


class _IsolatedRepo(git.Repo):
    """A Repo whose commands, its object database's included, all go through :class:`_IsolatedGit`."""

    GitCommandWrapperType = _IsolatedGit


# ---- the configuration the supervisor trusts ------------------------------------------------------------
def _dangerous_config_key(key: str) -> bool:
    """Whether a .git/config key (``section[.subsection].name``, as `git config --list` writes it) is one a
    workspace must not have (see the module docstring)."""
    section, _, rest = key.lower().partition(".")
    subsection, _, name = rest.rpartition(".")
    if section in _DROPPED_SECTIONS:
        return True
    if not subsection:
        return f"{section}.{name}" in _DROPPED_KEYS
    return (section, name) in _DROPPED_SUBSECTION_KEYS


def _read_config_entries(path: Path) -> list[tuple[str, str | None]] | None:
    """The entries of one config file, in order, includes not followed; None when git cannot read it."""
    try:
        result = subprocess.run(["git", "config", "--file", str(path), "--no-includes", "--list", "-z"],
                                capture_output=True, env=git_environment(), cwd=os.path.abspath(os.sep),
                                timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    entries: list[tuple[str, str | None]] = []
    for item in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, newline, value = item.partition("\n")
            entries.append((key, value if newline else None))
    return entries


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def _render_config(entries: Sequence[tuple[str, str | None]]) -> str:
    """A config file holding exactly ``entries`` (keys as `git config --list` writes them)."""
    lines: list[str] = []
    current = None
    for key, value in entries:
        section, _, rest = key.partition(".")
        subsection, _, name = rest.rpartition(".")
        header = f'[{section} "{_quote(subsection)}"]' if subsection else f"[{section}]"
        if header != current:
            lines.append(header)
            current = header
        lines.append(f"\t{name}" if value is None else f'\t{name} = "{_quote(value)}"')
    return "\n".join(lines) + "\n"


def sanitize_config(path: Path) -> list[str]:
    """Remove from the config file at ``path`` every key a workspace must not have; say what was removed.

    A clean file is left byte for byte as it is (an adopted checkout keeps its remotes and settings).
    """
    findings = []
    if path.is_symlink() or not path.is_file():
        # A link would let a file outside the git directory be the configuration (and change after this).
        text = path.read_bytes() if path.is_file() else None
        _remove(path)
        path.write_bytes(text if text is not None else _MINIMAL_CONFIG.encode())
        findings.append(f"{path.name}: was a link or missing; replaced by a plain file")
    entries = _read_config_entries(path)
    if entries is None:
        path.write_text(_MINIMAL_CONFIG)
        return [*findings, f"{path.name}: git could not read it; replaced by a minimal configuration"]
    dropped = sorted({key for key, _ in entries if _dangerous_config_key(key)})
    if not dropped:
        return findings
    tmp = path.with_name(path.name + ".supervisor-tmp")
    tmp.write_text(_render_config([(k, v) for k, v in entries if not _dangerous_config_key(k)]),
                   encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)
    return [*findings, f"{path.name}: removed {', '.join(dropped)} (settings that run programs or redirect git)"]


# ---- the guard ----------------------------------------------------------------------------------------------
class _GitDirGuard:
    """The supervisor's copy of the files git reads from the workspace, put back before every command."""

    def __init__(self, git_dir: Path, common_dir: Path, work_tree: Path, attribute_files: Sequence[Path]) -> None:
        # A linked worktree has its own git_dir; the config, hooks, info and objects are the common dir's.
        self.work_tree = work_tree
        self.files = ([common_dir / rel for rel in _GUARDED_FILES if rel not in _PER_WORKTREE_FILES]
                      + [git_dir / rel for rel in _PER_WORKTREE_FILES] + list(attribute_files))
        self.folders = [common_dir / rel for rel in _GUARDED_FOLDERS]
        self.saved: dict[Path, tuple[bytes, int]] = {}
        self.saved_dirs: set[Path] = set()
        self.findings: list[str] = []
        self._lock = threading.Lock()  # two threads' git commands must not repair the same file at once

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self.work_tree).as_posix()
        except ValueError:
            return str(path)

    def snapshot(self) -> None:
        """Take the files as they are now as the supervisor's version."""
        self.saved = {}
        self.saved_dirs = set()
        for path in self.files:
            if path.is_file() and not path.is_symlink():
                self.saved[path] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        for folder in self.folders:
            if folder.is_symlink() or not folder.is_dir():
                continue
            self.saved_dirs.add(folder)
            for parent, dirs, names in os.walk(folder):
                self.saved_dirs.update(Path(parent) / d for d in dirs)
                for name in names:
                    path = Path(parent) / name
                    if path.is_file() and not path.is_symlink():
                        self.saved[path] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))

    def _present(self) -> set[Path]:
        """Every guarded file or link there is now; unknown folders inside guarded ones are removed."""
        present = {p for p in self.files if p.is_symlink() or p.exists()}
        for folder in self.folders:
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                folder.unlink()
                self._found(f"{self._name(folder)} was replaced by a link or a file (removed)")
                continue
            for parent, dirs, names in os.walk(folder):
                for d in list(dirs):
                    path = Path(parent) / d
                    if path not in self.saved_dirs:
                        dirs.remove(d)
                        _remove(path)
                        self._found(f"{self._name(path)}/ appeared in the git directory (removed)")
                present.update(Path(parent) / n for n in names)
        return present

    def _found(self, finding: str) -> None:
        log.warning("workspace tampering: %s", finding)
        self.findings.append(finding)

    def check(self) -> None:
        """Put back every guarded file that changed, remove every one that appeared; record each repair."""
        with self._lock:
            self._repair()

    def _repair(self) -> None:
        for path in sorted(self._present() | set(self.saved)):
            saved = self.saved.get(path)
            is_link = path.is_symlink()
            if saved is None:
                _remove(path)
                self._found(f"{self._name(path)} appeared (removed)")
            elif is_link or not path.is_file() or path.read_bytes() != saved[0]:
                if is_link or path.exists():
                    _remove(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(saved[0])
                os.chmod(path, saved[1])
                self._found(f"{self._name(path)} was changed or removed (the supervisor's version is back)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---- the workspace ------------------------------------------------------------------------------------------
class Workspace:
    def __init__(self, root: Path, layout: Layout, branch: str) -> None:
        self.root = Path(root)
        self.layout = layout
        self.branch = branch
        dot_git = self.root / ".git"
        opening_findings: list[str] = []
        if dot_git.is_dir() and not dot_git.is_symlink() and (dot_git / "HEAD").is_file():
            # Before GitPython reads it (it follows core.worktree when it opens a repository).
            opening_findings = sanitize_config(dot_git / "config")
        try:
            self.repo = _IsolatedRepo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise WorkspaceError(f"{self.root} is not a git repository") from exc
        if self.repo.working_tree_dir is None or Path(self.repo.working_tree_dir).resolve() != self.root.resolve():
            raise WorkspaceError(f"{self.root} is not the top of its git repository (git would work in "
                                 f"{self.repo.working_tree_dir}); give the repository's own folder")
        git_dir, common_dir = Path(self.repo.git_dir), Path(self.repo.common_dir)
        self._guard = _GitDirGuard(git_dir, common_dir, self.root, self._attribute_files())
        if common_dir != git_dir and (common_dir / "config").is_file():  # a linked worktree
            opening_findings += sanitize_config(common_dir / "config")
        for finding in opening_findings:
            self._guard._found(finding)
        self._guard.snapshot()
        self.repo.git.before_command = self._guard.check

    def _attribute_files(self) -> list[Path]:
        """The .gitattributes files that apply to the editable file and the harness: in their folders and
        every folder above them, up to the workspace's root."""
        folders = {self.root}
        for rel in [self.layout.editable, *self.layout.harness]:
            parent = Path(rel).parent
            while parent != Path("."):
                folders.add(self.root / parent)
                parent = parent.parent
        return sorted(folder / ".gitattributes" for folder in folders)

    def tamper_findings(self) -> list[str]:
        """What the guard had to repair in the git directory or the attributes since the last call (checking
        now, whether or not a git command ran): each a sentence to record with the trial (and to show the
        person). Clears the list."""
        self._guard.check()
        findings, self._guard.findings = self._guard.findings, []
        return findings

    # ---- creation ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, source_dir: Path, layout: Layout, branch: str) -> Workspace:
        """A fresh repository holding a copy of the trainer and program.md, on `branch`."""
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise WorkspaceError(f"{root} already exists and is not empty; use --resume to continue that run")
        root.mkdir(parents=True, exist_ok=True)
        files = [layout.editable, *layout.harness, layout.program]
        for rel in files:
            src = Path(source_dir) / rel
            if not src.is_file():
                raise WorkspaceError(f"cannot make the workspace: {src} is missing")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
        (root / ".gitignore").write_text(IGNORED)
        # No template: no sample hooks, nothing in info/ (the guard then lets nothing appear there).
        repo = _IsolatedRepo.init(root, initial_branch=branch, template="", allow_unsafe_options=True)
        cls._configure(repo)
        repo.index.add([*files, ".gitignore"])
        repo.index.commit("initial: trainer and program.md", author=cls._actor(), committer=cls._actor(),
                          skip_hooks=True)
        repo.close()
        return cls(root, layout, branch)

    @classmethod
    def adopt(cls, root: Path, layout: Layout, branch: str) -> Workspace:
        """Use an existing checkout (an upstream autoresearch repository) on a new branch of its own."""
        ws = cls(root, layout, branch)
        if ws.repo.is_dirty(untracked_files=False):
            raise WorkspaceError(f"{root} has uncommitted changes; commit or stash them before a run adopts it")
        cls._configure(ws.repo)
        ws._guard.snapshot()  # the identity just written is part of the supervisor's version
        if branch in ws.repo.heads:
            ws.repo.heads[branch].checkout()
        else:
            ws.repo.create_head(branch).checkout()
        for rel in [layout.editable, *layout.harness]:
            if not (ws.root / rel).is_file():
                raise WorkspaceError(f"{root} has no {rel}; is it an autoresearch checkout?")
        return ws

    @staticmethod
    def _configure(repo: git.Repo) -> None:
        with repo.config_writer() as cfg:
            cfg.set_value("user", "name", AUTHOR)
            cfg.set_value("user", "email", AUTHOR_EMAIL)
            cfg.set_value("commit", "gpgsign", "false")

    @staticmethod
    def _actor() -> git.Actor:
        return git.Actor(AUTHOR, AUTHOR_EMAIL)

    # ---- state ---------------------------------------------------------------------------------------
    @property
    def editable_path(self) -> Path:
        return self.root / self.layout.editable

    def head(self) -> str:
        return self.repo.head.commit.hexsha

    def ensure_branch(self) -> None:
        """Be on the run's branch (a person may have checked something else out)."""
        if self.repo.head.is_detached or self.repo.active_branch.name != self.branch:
            if self.branch not in self.repo.heads:
                raise WorkspaceError(f"the workspace has no branch {self.branch}")
            self.repo.git.checkout(self.branch, force=True)

    def harness_hash(self) -> str:
        """One sha256 over the harness files (names and bytes): any change to them changes it."""
        digest = hashlib.sha256()
        for rel in sorted(self.layout.harness):
            path = self.root / rel
            digest.update(rel.encode() + b"\0")
            digest.update(path.read_bytes() if path.is_file() else b"<missing>")
            digest.update(b"\0")
        return digest.hexdigest()

    def committed_harness_hash(self, commit: str | None = None) -> str:
        """The harness hash as recorded in git at `commit` (the first commit when None)."""
        rev = commit or self.repo.git.rev_list("--max-parents=0", "HEAD").splitlines()[0]
        digest = hashlib.sha256()
        tree = self.repo.commit(rev).tree
        for rel in sorted(self.layout.harness):
            digest.update(rel.encode() + b"\0")
            try:
                digest.update(tree[rel].data_stream.read())
            except KeyError:
                digest.update(b"<missing>")
            digest.update(b"\0")
        return digest.hexdigest()

    def restore_harness(self) -> None:
        """Put the harness back as committed (after a trial or an agent tampered with it)."""
        self.repo.git.checkout("HEAD", "--", *self.layout.harness)

    def dirty_paths(self) -> list[str]:
        """Tracked files that differ from HEAD, and untracked files git does not ignore."""
        changed = {d.a_path for d in self.repo.index.diff(None)} | {d.a_path for d in self.repo.index.diff("HEAD")}
        return sorted(changed | set(self.repo.untracked_files))

    def working_diff(self) -> str:
        """The uncommitted change to the editable file."""
        return self.repo.git.diff("--no-ext-diff", "--no-textconv", "HEAD", "--", self.layout.editable)

    def revert_editable(self) -> str:
        """Put the editable file back as it is at HEAD (the last keep); returns the change that was dropped."""
        dropped = self.working_diff()
        if dropped:
            self.repo.git.checkout("HEAD", "--", self.layout.editable)
        return dropped

    def diff(self, parent: str, commit: str) -> str:
        return self.repo.git.diff("--no-ext-diff", "--no-textconv", parent, commit, "--", self.layout.editable)

    def show_file(self, commit: str, rel: str | None = None) -> str:
        return self.repo.git.show(f"{commit}:{rel or self.layout.editable}")

    # ---- trials --------------------------------------------------------------------------------------
    def commit_trial(self, message: str) -> str:
        """Commit the editable file only (empty commits are allowed: a baseline or a re-run)."""
        self.repo.git.reset("-q")  # only the editable file goes into a trial's commit
        self.repo.git.add("--", self.layout.editable)
        self.repo.git.commit("--allow-empty", "--no-verify", "-m", message)
        return self.head()

    def reset_to(self, commit: str) -> None:
        """Move the branch to `commit` and drop every change to tracked files.

        Untracked files are left alone: in an adopted upstream checkout they may be the person's.
        """
        self.repo.git.reset("--hard", commit)

    def log(self, limit: int = 20) -> list[tuple[str, str]]:
        return [(c.hexsha, c.summary) for c in self.repo.iter_commits(self.branch, max_count=limit)]
