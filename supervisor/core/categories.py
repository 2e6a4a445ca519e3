"""What a trial tried: the agent's own category, or one inferred from its description and diff.

The categories are the ones the agent chooses from in `run_trial` (CATEGORIES, below). A trial
that came without one (an agent that left it out, an upstream results.tsv row) gets one inferred here:
named constants first (`MATRIX_LR`, `WARMDOWN_FRACTION`: the strongest evidence, the same names the
trainer uses), then words and phrases of the description, then of the diff's changed lines. The result
says whether it was the agent's or inferred, so a reader knows how far to trust the grouping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# The categories the agent chooses from in `run_trial`; the graveyard groups failures by them.
CATEGORIES = (
    "learning_rate", "schedule", "optimizer", "architecture", "attention", "batch_size",
    "initialisation", "regularisation", "efficiency", "other",
)


LABELS: dict[str, str] = {
    "learning_rate": "learning rates",
    "schedule": "schedule",
    "optimizer": "optimizer",
    "architecture": "architecture",
    "attention": "attention",
    "batch_size": "batch size",
    "initialisation": "initialisation",
    "regularisation": "regularisation",
    "efficiency": "efficiency",
    "other": "other",
}

# What people type for a category (another tool's spelling, US English, short forms).
_ALIASES = {
    "lr": "learning_rate", "lrs": "learning_rate", "learning_rates": "learning_rate", "learning rate": "learning_rate",
    "learning rates": "learning_rate", "learningrate": "learning_rate",
    "sched": "schedule", "lr_schedule": "schedule", "scheduler": "schedule",
    "optim": "optimizer", "optimiser": "optimizer", "optimization": "optimizer", "optimisation": "optimizer",
    "arch": "architecture", "model": "architecture",
    "attn": "attention",
    "batch": "batch_size", "batch size": "batch_size", "batchsize": "batch_size",
    "init": "initialisation", "initialization": "initialisation", "initialisations": "initialisation",
    "regularization": "regularisation", "regularizer": "regularisation", "reg": "regularisation",
    "speed": "efficiency", "throughput": "efficiency", "perf": "efficiency", "performance": "efficiency",
    "misc": "other", "none": "other",
}

# Upper-case constant names of a training script -> category. Order matters: the first match wins
# (WARMDOWN_LR is a schedule, MUON_LR a learning rate, ATTN_INIT_STD an initialisation).
_CONSTANT_RULES: list[tuple[tuple[str, ...], str]] = [
    (("WARMUP", "WARMDOWN", "COOLDOWN", "FINAL_LR", "SCHEDULE", "DECAY_STEPS", "LR_DECAY"), "schedule"),
    (("INIT", "STD"), "initialisation"),
    (("LR", "LEARNING_RATE"), "learning_rate"),
    (("MOMENTUM", "BETA", "MUON", "ADAM", "EPS", "NS_STEPS", "NESTEROV"), "optimizer"),
    (("WINDOW", "HEAD", "ROPE", "ATTN", "ATTENTION", "KV", "GQA", "FLASH"), "attention"),
    (("BATCH", "TOKENS", "GRAD_ACCUM", "ACCUM"), "batch_size"),
    (("DECAY", "DROPOUT", "CLIP", "SOFTCAP", "Z_LOSS", "SMOOTH"), "regularisation"),
    (("COMPILE", "DTYPE", "BF16", "FP8", "AMP", "CHECKPOINT", "MEMORY"), "efficiency"),
    (("DEPTH", "DIM", "LAYER", "MLP", "RATIO", "VOCAB", "WIDTH", "EMBD", "EMBED", "HIDDEN", "EXPERT", "TIE"),
     "architecture"),
]

# Words and phrases of a description (or of changed code). Checked with word boundaries, case-insensitive.
_PHRASES: dict[str, tuple[str, ...]] = {
    "schedule": (
        "warmup", "warm-up", "warmdown", "warm-down", "cooldown", "cool-down", "cosine", "schedule", "scheduler",
        "lr decay", "decay to zero", "final lr", "wsd", "linear decay", "annealing", "anneal",
    ),
    "learning_rate": (
        "lr", "lrs", "learning rate", "learning rates", "learning-rate", "step size",
    ),
    "optimizer": (
        "optimizer", "optimiser", "muon", "adam", "adamw", "sgd", "lion", "momentum", "beta1", "beta2", "betas",
        "nesterov", "newton-schulz", "newton schulz", "ns steps", "ns iterations", "epsilon", "shampoo", "soap",
    ),
    "attention": (
        "attention", "attn", "window", "windows", "sliding window", "head", "heads", "head_dim", "head dim",
        "rope", "rotary", "qk-norm", "qk norm", "qknorm", "flash", "sdpa", "flex attention", "gqa", "mqa",
        "kv heads", "causal mask", "alibi",
    ),
    "batch_size": (
        "batch", "batch size", "batch-size", "grad accum", "gradient accumulation", "accumulation", "microbatch",
        "tokens per step",
    ),
    "initialisation": (
        "init", "initialisation", "initialization", "initialise", "initialize", "zero-init", "zero init",
        "init std", "std", "xavier", "kaiming", "orthogonal init",
    ),
    "regularisation": (
        "weight decay", "wd", "dropout", "grad clip", "gradient clipping", "clip", "clipping", "softcap",
        "soft cap", "logit cap", "z-loss", "z loss", "label smoothing", "regularisation", "regularization",
    ),
    "efficiency": (
        "compile", "torch.compile", "bf16", "bfloat16", "fp8", "mxfp8", "fp16", "mixed precision", "mfu",
        "throughput", "faster", "speed", "speedup", "kernel", "fused", "cuda graph", "cuda graphs",
        "memory", "oom", "activation checkpointing", "tf32", "tokens/s", "tok/s",
    ),
    "architecture": (
        "depth", "layer", "layers", "width", "wider", "deeper", "n_embd", "model dim", "dim", "mlp", "ffn",
        "swiglu", "geglu", "relu", "relu2", "relu²", "gelu", "silu", "activation", "embedding", "embeddings",
        "value embedding", "value embeddings", "tying", "weight tying", "tied", "norm", "rmsnorm", "layernorm",
        "residual", "skip", "skip connection", "u-net", "unet", "moe", "experts", "expert", "parallel block",
        "params", "parameters", "vocab", "conv", "mixer",
    ),
}

_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b(?:DEPTH|WIDTH|LR|BATCH|COMPILE|WINDOW)\b")
# Priority among equal scores: the more specific a category, the earlier.
_PRIORITY = ("schedule", "initialisation", "learning_rate", "optimizer", "attention", "batch_size",
             "regularisation", "efficiency", "architecture", "other")


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    escaped = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![\w.])(?:" + "|".join(escaped) + r")(?![\w])", re.IGNORECASE)


_PHRASE_PATTERNS = {cat: _phrase_pattern(words) for cat, words in _PHRASES.items()}


@dataclass(frozen=True)
class Category:
    """A trial's category and where it came from."""

    name: str  # one of CATEGORIES
    source: str  # "agent" (given to run_trial or in the source file) or "inferred"
    evidence: str = ""  # for an inferred one: what it was inferred from, e.g. "MATRIX_LR in the diff"

    @property
    def label(self) -> str:
        return LABELS[self.name]


def normalize_category(text: str | None) -> str | None:
    """A category name from a person, an agent or a file, or None when it is not one."""
    if not text:
        return None
    key = " ".join(str(text).strip().lower().replace("-", "_").split())
    if key in CATEGORIES:
        return key
    key = _ALIASES.get(key) or _ALIASES.get(key.replace("_", " ")) or key.replace(" ", "_")
    return key if key in CATEGORIES else None


def _name_has(parts: list[str], key: str) -> bool:
    """Whether a constant's name holds `key` as whole words: NS_STEPS has STEPS but STEPS has no EPS.

    A word may carry a plural or a digit (HEADS, BETA2, LAYERS); a key of several words must appear in
    order (FINAL_LR in FINAL_LR_FRACTION).
    """
    words = key.strip("_").split("_")
    for i in range(len(parts) - len(words) + 1):
        window = parts[i:i + len(words)]
        if window[:-1] == words[:-1] and re.fullmatch(re.escape(words[-1]) + r"(S|ES|\d+)?", window[-1]):
            return True
    return False


def category_for_constant(name: str) -> str | None:
    """The category of a training-script constant by its name (`EMBEDDING_LR` -> learning_rate)."""
    parts = [p for p in name.upper().split("_") if p]
    for keys, category in _CONSTANT_RULES:
        if any(_name_has(parts, k) for k in keys):
            return category
    return None


def _changed_lines(diff: str) -> list[str]:
    """The added and removed code lines of a unified diff (no headers, no context)."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line[:1] in "+-" and line[1:].strip():
            out.append(line[1:])
    return out


def _assigned_constants(lines: list[str]) -> list[str]:
    """Constants assigned on changed lines: `MATRIX_LR = 0.04` -> MATRIX_LR."""
    names = []
    for line in lines:
        m = re.match(r"\s*([A-Z][A-Z0-9_]*)\s*(?::[^=]*)?=(?!=)", line)
        if m:
            names.append(m.group(1))
    return names


class _Scores:
    """Evidence for each category: a summed weight, and the first thing that pointed to it."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.evidence: dict[str, str] = {}

    def add(self, category: str, weight: float, why: str) -> None:
        self.scores[category] = self.scores.get(category, 0.0) + weight
        self.evidence.setdefault(category, why)

    def winner(self) -> Category:
        if not self.scores:
            return Category("other", "inferred", "nothing in the description or diff named a known kind of change")
        best = max(self.scores.values())
        winner = next(c for c in _PRIORITY if self.scores.get(c) == best)
        return Category(winner, "inferred", self.evidence[winner])


def infer_category(description: str, diff: str = "") -> Category:
    """Infer what a trial tried from its one-line description and its diff."""
    description = description or ""
    changed = _changed_lines(diff)
    scores = _Scores()
    # Constants: in the description (the agent named what it changed) and assigned in the diff.
    _score_constants(scores, _CONSTANT.findall(description), "in the description")
    _score_constants(scores, dict.fromkeys(_assigned_constants(changed)), "in the diff")
    _score_description_words(scores, description)
    if changed:
        _score_code_words(scores, "\n".join(changed))
    return scores.winner()


def _score_constants(scores: _Scores, names: Iterable[str], where: str) -> None:
    for name in names:
        category = category_for_constant(name)
        if category:
            scores.add(category, 3.0, f"{name} {where}")


def _score_description_words(scores: _Scores, description: str) -> None:
    first: tuple[int, str] | None = None  # (position, category) of the earliest phrase
    for category, pattern in _PHRASE_PATTERNS.items():
        found = list(pattern.finditer(description))
        if found:
            scores.add(category, 2.0 * len({m.group(0).lower() for m in found}),
                       f"'{found[0].group(0)}' in the description")
            if first is None or found[0].start() < first[0]:
                first = (found[0].start(), category)
    if first is not None:
        # What a description names first is usually the change; later words are often its reason.
        scores.add(first[1], 0.5, "")


def _score_code_words(scores: _Scores, code: str) -> None:
    for category, pattern in _PHRASE_PATTERNS.items():
        hits = pattern.findall(code)
        if hits:
            # Code words are weak evidence: capped so a long diff cannot outvote the description.
            scores.add(category, min(1.5, 0.5 * len(set(h.lower() for h in hits))), f"'{hits[0]}' in the diff")


def trial_category(category: str | None, description: str, diff: str = "") -> Category:
    """The agent's own category when it gave a valid one, else one inferred from the description and diff."""
    own = normalize_category(category)
    if own:
        return Category(own, "agent")
    return infer_category(description, diff)
