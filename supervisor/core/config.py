"""Where things live, and the settings of one run.

A run is identified by its tag. Everything it writes lives in its journal folder
(`journals/<tag>/` by default): the ledger, the human-readable journal files, the trial logs and the
run's own git workspace. The project's own repository is never touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.core.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # supervisor/core/config.py -> the checkout
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

POLICY_NAMES = ("greedy", "flag", "confirm", "strict", "sequential")
SANDBOX_SETTINGS = ("auto", "bwrap", "off")  # the same as supervisor.trial.sandbox's (core imports no trial code)


class ConfigError(UserError, ValueError):
    """A setting the person gave is wrong; the message says how to fix it."""


def default_journals_root() -> Path:
    env = os.environ.get("AUTORESEARCH_JOURNALS")
    # Absolute: trials run in their own folder, so a relative path would point somewhere else there.
    return Path(env).expanduser().absolute() if env else PROJECT_ROOT / "journals"


def default_cache_dir() -> Path:
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "autoresearch"


def _branch_name_problem(tag: str) -> str | None:
    """Why git would refuse `autoresearch/<tag>` as a branch (`git check-ref-format --branch`), or None.

    TAG_PATTERN already keeps out what git forbids anywhere in a name (spaces, control characters,
    `~^:?*[\\`, `@{`, `//`, a leading `-` or `.`); these are the rules left for its allowed characters.
    """
    if ".." in tag:
        return "'..' is not allowed in it"
    if tag.endswith(".lock"):
        return "it must not end in '.lock'"
    if tag.endswith("."):
        return "it must not end in '.'"
    return None


def validate_tag(tag: str) -> str:
    """The tag names the run's folder and its branch `autoresearch/<tag>`: both must accept it."""
    if not TAG_PATTERN.match(tag or ""):
        raise ConfigError(
            f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-' (at most 64 characters, starting with a "
            "letter or digit), for example --tag nov21"
        )
    problem = _branch_name_problem(tag)
    if problem:
        raise ConfigError(f"invalid tag {tag!r}: {problem} (git refuses the branch autoresearch/{tag}); "
                          "for example --tag nov21")
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


def check_writable_folder(path: Path, option: str) -> None:
    """`path` is a folder, or can be made one: its nearest existing ancestor is a folder we may write in."""
    existing = Path(path)
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a parent we may not even look into
        raise ConfigError(f"{option} {path}: cannot look into {existing} ({exc.strerror})") from None
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {existing} (read-only or permission denied); "
                          f"choose another {option}")


# ---- command-line values -----------------------------------------------------------------------------------
# argparse `type=` functions. A bad value ends in argparse's one-line error naming the option, before the
# command runs, so before anything is created. RunConfig checks the same ranges for settings made in code.
MIN_GRACE_S = 1.0  # startup, compile and the final evaluation happen after the budget: 0 kills every trial
MIN_MEMORY_LIMIT_MB = 256  # below this Python itself cannot start, and every trial would crash


def _parse_number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _whole_number(text: str, minimum: int, *, zero_allowed: bool = False, unit: str = "") -> int:
    value = int(_parse_number(text, int))
    if value < minimum and not (zero_allowed and value == 0):
        zero = "0 or " if zero_allowed else ""
        raise argparse.ArgumentTypeError(f"must be {zero}at least {minimum}{unit}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1 (trials, seeds, a reflection interval)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """A count that may be 0 (lines of a diff)."""
    return _whole_number(text, 0)


def repeat_count(text: str) -> int:
    """Seeds of a noise measurement: a standard deviation needs at least two."""
    return _whole_number(text, 2)


def noise_repeat_count(text: str) -> int:
    """Seeds measured before the first trial: 0 (not now) or at least 2."""
    return _whole_number(text, 2, zero_allowed=True)


def memory_limit_mb(text: str) -> int:
    """A trial's memory cap in MB: 0 turns it off; a tiny cap would crash every trial."""
    return _whole_number(text, MIN_MEMORY_LIMIT_MB, zero_allowed=True, unit=" MB")


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = _whole_number(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {value}")
    return value


def finite_positive_float(text: str) -> float:
    """A finite number > 0 (seconds of budget, a floor factor, dollars)."""
    value = float(_parse_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (seconds of an outage, a standard deviation)."""
    value = float(_parse_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def grace_seconds(text: str) -> float:
    """Seconds past the budget before a trial is killed."""
    value = float(_parse_number(text, float))
    if value < MIN_GRACE_S:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_GRACE_S:g} second (startup and the final "
                                         f"evaluation happen after the budget), got {text}")
    return value


def finite_float_list(text: str) -> list[float]:
    """`V1,V2,...`: finite numbers separated by commas."""
    parts = [part for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return [float(_parse_number(part, float)) for part in parts]


def python_name(text: str) -> str:
    """A Python identifier (a constant of the training script)."""
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python name")
    return text


def constant_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE: a constant of the training script and a Python literal for it (see transfer.parse_override)."""
    from supervisor.core.transfer import ScaleError, parse_override

    try:
        return parse_override(text)
    except ScaleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tag_name(text: str) -> str:
    """A run's tag (see validate_tag)."""
    try:
        return validate_tag(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def base_url(text: str) -> str:
    """An API base URL without credentials (see check_base_url)."""
    try:
        check_base_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--base-url ")) from None
    return text


def absolute_path(text: str) -> Path:
    """A path made absolute now: trials and the UI's loop process run in other folders."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a path is needed, got an empty string")
    # abspath, not resolve: a symlinked journals folder keeps the name the person gave.
    return Path(os.path.abspath(os.path.expanduser(text)))


def existing_folder(text: str) -> Path:
    """An absolute path to a folder that exists."""
    path = absolute_path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder" if path.exists() else f"no folder {path}")
    return path


def existing_file(text: str) -> Path:
    """An absolute path to a file that exists."""
    path = absolute_path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file" if path.exists() else f"no file {path}")
    return path


def command_line(text: str) -> str:
    """A shell-style command (split with shlex), as `--train-command` takes it."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the command {text!r}: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("the command is empty")
    return text


@dataclass
class Layout:
    """What the agent may edit, what must never change, and how a trial is started.

    Our own trainer uses the defaults; an upstream autoresearch checkout keeps its files at the top level
    and runs with its own command (`uv run train.py`).
    """

    editable: str = "trainer/train.py"
    harness: list[str] = field(default_factory=lambda: ["trainer/prepare.py", "trainer/corpus.py"])
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
    budget_tokens: int | None = None  # train on this many tokens per trial; budget_s is then a wall-clock cap
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
    warm_start: bool = True  # start the next trial's interpreter while the agent writes (supervisor/trial/warm_start.py)
    transfer_at_end: bool = False  # when the night finishes, run the scale-transfer check (supervisor/run/transfer.py)
    sandbox: str = "auto"  # auto | bwrap | off: the OS sandbox of every trial (supervisor/trial/sandbox.py)
    agent: str = "offline"
    model: str | None = None
    base_url: str | None = None
    max_cost: float | None = None      # dollars; the run stops cleanly once the agent's API spend reaches it
    max_tokens: int | None = None      # tokens (prompt + output); the limit for a model whose price is unknown
    spend_limit: bool = True           # a night has a default spend limit (DEFAULT_MAX_COST / DEFAULT_MAX_TOKENS)
    price: list[float] | None = None   # $ per million tokens IN,OUT[,CACHE_READ,CACHE_WRITE] for an unlisted model
    outage_s: float = 600.0            # API failing this long (after retries) pauses the run
    probe_every_s: float = 60.0        # while paused by an outage, how often a cheap request checks the API
    stall_replies: int = 25            # replies in a row without progress that pause the run (0: never)
    repeat_limit: int = 5              # the same failing call this often since the last progress pauses it (0: never)
    source_dir: Path = PROJECT_ROOT  # where trainer/ and program.md are copied from
    upstream_repo: Path | None = None  # drive an existing upstream checkout instead of our trainer
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:
        validate_tag(self.tag)
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown keep policy {self.policy!r}: choose one of {', '.join(POLICY_NAMES)}")
        self._check_numbers()
        if self.base_url:
            check_base_url(self.base_url)
        if self.price is not None:
            from supervisor.core.pricing import PriceError, price_from_values

            if not all(isinstance(v, int | float) and math.isfinite(v) for v in self.price):
                raise ConfigError(f"--price must be finite numbers, got {self.price}")
            try:
                price_from_values(self.price)
            except PriceError as exc:
                raise ConfigError(f"--price: {exc}") from None

    def _check_numbers(self) -> None:
        """Every number in range and finite: a NaN compares false with everything and would slip through."""
        def fails(value: float | None, ok: bool) -> bool:
            return value is not None and not (math.isfinite(value) and ok)

        problems = [
            (fails(self.budget_s, self.budget_s > 0), f"--budget must be a positive number of seconds, got "
                                                      f"{self.budget_s}"),
            (fails(self.grace_s, (self.grace_s or 0) >= 0), f"--grace must be >= 0 seconds, got {self.grace_s}"),
            (self.budget_tokens is not None and (type(self.budget_tokens) is not int or self.budget_tokens < 1),
             f"--budget-tokens must be a whole number of tokens, at least 1, got {self.budget_tokens!r}"),
            (self.budget_tokens is not None and self.upstream_repo is not None,
             "--budget-tokens needs this project's trainer: an upstream train.py trains for a fixed time"),
            (self.max_trials is not None and self.max_trials < 1, "--max-trials must be at least 1"),
            (self.sandbox not in SANDBOX_SETTINGS, f"--sandbox must be one of {', '.join(SANDBOX_SETTINGS)}, "
                                                   f"got {self.sandbox!r}"),
            (self.reflect_every < 1, "--reflect-every must be at least 1"),
            (self.plateau_trials < 1, "--plateau must be at least 1"),
            (self.crash_streak < 1, "the crash streak must be at least 1"),
            (self.confirm_seeds < 1, "--confirm-seeds must be at least 1"),
            (self.noise_repeats == 1 or self.noise_repeats < 0, "--noise-repeats must be 0 or at least 2"),
            (self.memory_limit_mb is not None and self.memory_limit_mb < 0, "--memory-limit-mb must be >= 0"),
            (fails(self.floor_factor, self.floor_factor > 0), "--floor-factor must be a positive finite number"),
            (fails(self.max_cost, (self.max_cost or 0) > 0), f"--max-cost must be a positive number of dollars, "
                                                             f"got {self.max_cost}"),
            (fails(self.outage_s, self.outage_s >= 0) or fails(self.probe_every_s, self.probe_every_s > 0),
             "--outage-pause must be a number of seconds >= 0"),
            (self.stall_replies < 0, f"--stall-replies must be 0 (off) or more, got {self.stall_replies}"),
            (self.max_tokens is not None and self.max_tokens < 1, f"--max-tokens must be at least 1, got "
                                                                  f"{self.max_tokens}"),
            (self.repeat_limit < 0, f"--repeat-limit must be 0 (off) or more, got {self.repeat_limit}"),
        ]
        for failed, message in problems:
            if failed:
                raise ConfigError(message)

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
        # The warm-up allowance: start-up, torch.compile and the hand-over (export) are outside the training
        # budget; the evaluation is the supervisor's and not counted. A hand-over after budget + this is void.
        return max(30.0, 0.25 * self.budget_s)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, overrides: dict[str, Any] | None = None) -> RunConfig:
        """The stored settings, with `overrides` (field: value) put in before they are checked, so that a
        new value can replace a stored one that is no longer accepted."""
        data = {**json.loads(text), **(overrides or {})}
        layout = Layout(**data.pop("layout"))
        for key in ("journals_root", "cache_dir", "source_dir"):
            data[key] = Path(data[key])
        if data.get("upstream_repo"):
            data["upstream_repo"] = Path(data["upstream_repo"])
        known = set(cls.__dataclass_fields__)
        return cls(layout=layout, **{k: v for k, v in data.items() if k in known})


# A night's default spend limit: a looping or verbose model must not cost hundreds of dollars unseen. About five
# times what a careful 100-trial night costs at ~10k prompt tokens a turn with the prompt cache.
DEFAULT_MAX_COST = 50.0
DEFAULT_MAX_TOKENS = 50_000_000  # for a model without a known price: about 5,000 turns of 10k tokens


def resolve_spend_limits(config: RunConfig, prices_known: bool) -> tuple[float | None, int | None, str]:
    """The run's limits in dollars and tokens, and a line that says them and where they come from.

    What the person gave wins; otherwise a default applies (in dollars when the model's price is known, in
    tokens when it is not), unless --no-spend-limit lifts it.
    """
    max_cost, max_tokens = config.max_cost, config.max_tokens
    given = [f"${max_cost:.2f}" if max_cost is not None else "", f"{max_tokens:,} tokens" if max_tokens else ""]
    if max_cost is not None or max_tokens is not None:
        return max_cost, max_tokens, f"spend limit: {' and '.join(g for g in given if g)} (as given)"
    if not config.spend_limit:
        return None, None, "no spend limit (--no-spend-limit): the agent's API spend is not capped"
    if prices_known:
        return DEFAULT_MAX_COST, None, (f"spend limit: ${DEFAULT_MAX_COST:.2f} (the default; --max-cost to change "
                                        "it, --no-spend-limit to lift it)")
    return None, DEFAULT_MAX_TOKENS, (f"spend limit: {DEFAULT_MAX_TOKENS:,} tokens (the default for a model without "
                                      "a known price; --max-tokens to change it, --price to count dollars, "
                                      "--no-spend-limit to lift it)")
