"""The run's own git repository: one commit per trial, keeps advance the branch, the rest is reset.

Made from the project's `trainer/` and `program.md` (or an existing upstream checkout), on a branch
`autoresearch/<tag>`. The project's own repository is never touched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import git

from supervisor.core.config import Layout
from supervisor.core.errors import UserError

IGNORED = "__pycache__/\n*.pyc\n.venv/\n"
AUTHOR = "autoresearch-supervisor"
AUTHOR_EMAIL = "supervisor@autoresearch.local"


class WorkspaceError(UserError, RuntimeError):
    """The workspace is not in a state the supervisor can work from; the message says why."""


class Workspace:
    def __init__(self, root: Path, layout: Layout, branch: str) -> None:
        self.root = Path(root)
        self.layout = layout
        self.branch = branch
        try:
            self.repo = git.Repo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise WorkspaceError(f"{self.root} is not a git repository") from exc

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
        repo = git.Repo.init(root, initial_branch=branch)
        cls._configure(repo)
        repo.index.add([*files, ".gitignore"])
        repo.index.commit("initial: trainer and program.md", author=cls._actor(), committer=cls._actor())
        return cls(root, layout, branch)

    @classmethod
    def adopt(cls, root: Path, layout: Layout, branch: str) -> Workspace:
        """Use an existing checkout (an upstream autoresearch repository) on a new branch of its own."""
        ws = cls(root, layout, branch)
        if ws.repo.is_dirty(untracked_files=False):
            raise WorkspaceError(f"{root} has uncommitted changes; commit or stash them before a run adopts it")
        cls._configure(ws.repo)
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
        return self.repo.git.diff("HEAD", "--", self.layout.editable)

    def diff(self, parent: str, commit: str) -> str:
        return self.repo.git.diff(parent, commit, "--", self.layout.editable)

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
