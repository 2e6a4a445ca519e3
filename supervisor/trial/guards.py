"""Reward-hacking guards: an agent optimising val_bpb is an adversary of the metric too.

Two kinds of evidence, both for the person to judge (nothing here blocks a trial on a guess):

- the evaluation's inputs (validation tokens, their byte lengths, the tokenizer) are fingerprinted when
  the run starts and checked before and after every trial; a change is a hard fault;
- every trial's diff is scanned for lines that reach for what a training recipe has no business touching:
  the evaluation, the validation data, the environment, files outside the workspace, the network,
  subprocesses. A hit flags the trial as suspicious, with the line that did it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

# Manifest keys of the cache files that decide val_bpb. Training data is not here on purpose: a trial
# may read train.bin however it likes.
EVAL_MANIFEST_KEYS = ("val_tokens", "token_bytes", "tokenizer")


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    why: str


def _rule(name: str, pattern: str, why: str) -> Rule:
    return Rule(name, re.compile(pattern), why)


RULES: tuple[Rule, ...] = (
    _rule("evaluation", r"\bevaluate_bpb\b|\bEVAL_TOKENS\b|AUTORESEARCH_EVAL_RECORD|\bprepare\s*\.\s*\w+\s*=(?!=)",
          "touches the evaluation (val_bpb must come from the harness as it is)"),
    _rule("validation data", r"""\bval(?:_tokens)?\.bin\b|['"]val['"]|\bsplit\s*=\s*['"]val|token_bytes|val_\d+\.parquet""",
          "reads or writes the validation data"),
    _rule("environment", r"\bos\.environ\b|\bos\.putenv\b|\bos\.getenv\b|\bsetenv\b",
          "reads or changes the environment (the budget and the seed come from it)"),
    _rule("files outside", r"""\bopen\s*\(|\.write_(?:text|bytes)\s*\(|\bshutil\.|\bos\.(?:remove|unlink|rename|replace|chdir|system)\b|(?:['"])(?:/|~|\.\./)""",
          "opens, writes or names files (the workspace and the cache are not the recipe's to change)"),
    _rule("network", r"\b(?:socket|urllib|requests|httpx|http\.client|aiohttp|ftplib|smtplib)\b",
          "uses the network"),
    _rule("subprocess", r"\b(?:subprocess|multiprocessing|os\.fork|os\.exec\w*|os\.spawn\w*|os\.popen|pty)\b",
          "starts other processes"),
    _rule("timing", r"\btime\s*\.\s*\w+\s*=(?!=)|\btime_budget\s*=(?!=)|\bTIME_BUDGET\b",
          "changes how the time budget is measured"),
    _rule("dynamic code", r"\b(?:exec|eval|compile)\s*\(\s*['\"a-z_]|__import__|importlib|\bsys\.modules\b|\bbuiltins\b",
          "runs or imports code dynamically"),
)


def scan_diff(diff: str) -> list[str]:
    """Findings for the added lines of a unified diff, one sentence each (empty: nothing suspicious)."""
    findings: list[str] = []
    seen: set[str] = set()
    for line in diff.splitlines():
        if not line.startswith("+") or line.startswith("+++"):
            continue
        code = line[1:].split("#", 1)[0]  # comments may talk about anything
        if not code.strip():
            continue
        for rule in RULES:
            if rule.name in seen:
                continue
            if rule.name == "dynamic code" and re.search(r"\btorch\.compile\s*\(", code):
                continue  # torch.compile is a legitimate speed change
            if rule.pattern.search(code):
                seen.add(rule.name)
                findings.append(f"{rule.name}: {rule.why}: `{code.strip()[:160]}`")
    return findings


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def eval_fingerprint(cache_dir: Path) -> dict[str, str] | None:
    """sha256 of each evaluation input of a prepared cache; None when there is no manifest (upstream)."""
    manifest_path = Path(cache_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    out = {}
    for key in EVAL_MANIFEST_KEYS:
        name = manifest.get(key)
        if not isinstance(name, str):
            continue
        path = Path(cache_dir) / name
        out[name] = _sha256(path) if path.is_file() else "<missing>"
    return out or None


def fingerprint_changes(expected: dict[str, str], cache_dir: Path) -> list[str]:
    """Which evaluation inputs differ from the fingerprint taken when the run started."""
    changed = []
    for name, sha in expected.items():
        path = Path(cache_dir) / name
        actual = _sha256(path) if path.is_file() else "<missing>"
        if actual != sha:
            changed.append(name)
    return changed
