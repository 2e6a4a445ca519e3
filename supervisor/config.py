"""Where things live, and the settings of one run.

A run is identified by its tag. Everything it writes lives in its journal folder
(`journals/<tag>/` by default): the ledger, the human-readable journal files, the trial logs and the
run's own git workspace. The project's own repository is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from supervisor.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

POLICY_NAMES = ("greedy", "flag", "confirm", "strict")


class ConfigError(UserError, ValueError):
    """A setting the person gave is wrong; the message says how to fix it."""


def default_journals_root() -> Path:
    env = os.environ.get("AUTORESEARCH_JOURNALS")
    return Path(env).expanduser() if env else PROJECT_ROOT / "journals"


def default_cache_dir() -> Path:
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag or ""):
        raise ConfigError(
            f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-' (at most 64 characters), "
            "for example --tag nov21"
        )
    return tag


def check_base_url(url: str) -> None:
    """A base URL is stored with the run; credentials in it would be written to disk, so refuse them."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url must be an http(s) URL such as http://localhost:8000/v1, got {url!r}")
    secret_query = [k for k in parse_qs(parts.query) if re.search(r"key|token|secret|auth|pass", k, re.I)]
    if parts.username or parts.password or secret_query:
        raise ConfigError("--base-url must not carry credentials (they would be stored with the run): "
                          "put the key in OPENAI_API_KEY or ANTHROPIC_API_KEY instead")


@dataclass
class Layout:
    """What the agent may edit, what must never change, and how a trial is started.

    Our own trainer uses the defaults; an upstream autoresearch checkout keeps its files at the top level
    and runs with its own command (`uv run train.py`).
    """

    editable: str = "trainer/train.py"
    harness: list[str] = field(default_factory=lambda: ["trainer/prepare.py"])
    command: list[str] = field(default_factory=lambda: [sys.executable, "trainer/train.py"])
    program: str = "program.md"

    @classmethod
    def upstream(cls, command: str = "uv run train.py") -> Layout:
        return cls(editable="train.py", harness=["prepare.py"], command=shlex.split(command))


@dataclass
class RunConfig:
    tag: str
    journals_root: Path = field(default_factory=default_journals_root)
    cache_dir: Path = field(default_factory=default_cache_dir)
    budget_s: float = 300.0
    grace_s: float | None = None  # None: derived from the budget (startup, compile and evaluation)
    max_trials: int | None = None
    policy: str = "flag"
    floor_factor: float = 2.0
    confirm_seeds: int = 2
    reflect_every: int = 10
    plateau_trials: int = 8
    crash_streak: int = 3
    noise_repeats: int = 0  # >0: measure the noise floor at the start of the run
    device: str = "auto"
    memory_limit_mb: int | None = None
    warm_start: bool = True  # start the next trial's interpreter while the agent writes (supervisor/warm_start.py)
    agent: str = "offline"
    model: str | None = None
    base_url: str | None = None
    max_cost: float | None = None      # dollars; the run stops cleanly once the agent's API spend reaches it
    price: list[float] | None = None   # $ per million tokens IN,OUT[,CACHE_READ,CACHE_WRITE] for an unlisted model
    outage_s: float = 600.0            # API failing this long (after retries) pauses the run
    probe_every_s: float = 60.0        # while paused by an outage, how often a cheap request checks the API
    source_dir: Path = PROJECT_ROOT  # where trainer/ and program.md are copied from
    upstream_repo: Path | None = None  # drive an existing upstream checkout instead of our trainer
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:
        validate_tag(self.tag)
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown keep policy {self.policy!r}: choose one of {', '.join(POLICY_NAMES)}")
        if not (self.budget_s > 0):
            raise ConfigError(f"--budget must be a positive number of seconds, got {self.budget_s}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigError("--max-trials must be at least 1")
        if self.reflect_every < 1:
            raise ConfigError("--reflect-every must be at least 1")
        if self.floor_factor <= 0:
            raise ConfigError("--floor-factor must be positive")
        if self.base_url:
            check_base_url(self.base_url)
        if self.max_cost is not None and not self.max_cost > 0:
            raise ConfigError(f"--max-cost must be a positive number of dollars, got {self.max_cost}")
        if not self.outage_s >= 0 or not self.probe_every_s > 0:
            raise ConfigError("--outage-pause must be a number of seconds >= 0")
        if self.price is not None:
            from supervisor.agents.pricing import PriceError, price_from_values

            try:
                price_from_values(self.price)
            except PriceError as exc:
                raise ConfigError(f"--price: {exc}") from None

    @property
    def run_dir(self) -> Path:
        return Path(self.journals_root) / self.tag

    @property
    def workspace(self) -> Path:
        return Path(self.upstream_repo) if self.upstream_repo else self.run_dir / "workspace"

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.tag}"

    @property
    def effective_grace_s(self) -> float:
        if self.grace_s is not None:
            return self.grace_s
        # Startup, torch.compile and the final evaluation are outside the training budget.
        return max(60.0, 0.5 * self.budget_s)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        data = json.loads(text)
        layout = Layout(**data.pop("layout"))
        for key in ("journals_root", "cache_dir", "source_dir"):
            data[key] = Path(data[key])
        if data.get("upstream_repo"):
            data["upstream_repo"] = Path(data["upstream_repo"])
        known = set(cls.__dataclass_fields__)
        return cls(layout=layout, **{k: v for k, v in data.items() if k in known})
