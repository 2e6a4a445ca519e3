"""What a trial's environment may hold: credentials are scrubbed out, whatever they are called.

Used for every process that runs the agent's code (trials, warm-started interpreters) and for the
platform probe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# ---------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------

# Substrings of variable names that mark credentials (matched case-insensitively).
_SECRET_SUBSTRINGS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
    "SESSION",
    "WEBHOOK",
)
# Whole ``_``-separated name parts that mark credentials but are too short to match as
# substrings without false positives (PAT would hit PATH).
_SECRET_NAME_PARTS = frozenset({"PAT", "PASS", "PASSPHRASE", "PRIVATE", "DSN", "PWD"})
# Prefixes of whole families of credential variables: LLM providers and clouds. The trainer
# has no network anyway, so losing a harmless one (AWS_REGION) costs nothing.
_SECRET_PREFIXES = (
    "ANTHROPIC_",
    "OPENAI_",
    "AZURE_",
    "AWS_",
    "GOOGLE_",
    "GCLOUD_",
    "CLOUDSDK_",
    "GEMINI_",
    "COHERE_",
    "MISTRAL_",
    "GROQ_",
    "TOGETHER_",
    "DEEPSEEK_",
    "OPENROUTER_",
    "XAI_",
    "HUGGING_FACE_",
    "WANDB_",
    "NEPTUNE_",
    "COMET_",
    "DIGITALOCEAN_",
    "CLOUDFLARE_",
)
_SECRET_NAMES = frozenset({"HF_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "NETRC", "KUBECONFIG", "DOCKER_CONFIG"})
# Names a trainer needs that would otherwise match a pattern above (TOKENIZERS_* contains
# TOKEN; PWD/OLDPWD contain the PWD part but are just directories).
_KEEP_NAMES = frozenset({"TOKENIZERS_PARALLELISM", "PWD", "OLDPWD"})
# Values that are credentials whatever the variable is called: well-known key formats and URLs
# with a password in them (proxies, package indexes, database URLs).
_SECRET_VALUE_RE = re.compile(
    r"""^\s*(?:
        sk-[A-Za-z0-9_\-]{20,}            # OpenAI / Anthropic style
      | gh[pousr]_[A-Za-z0-9]{30,}        # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | hf_[A-Za-z0-9]{30,}               # Hugging Face
      | (?:AKIA|ASIA)[0-9A-Z]{16}         # AWS access key ids
      | xox[abprs]-[A-Za-z0-9\-]{10,}     # Slack
      | [A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@.*   # scheme://user:password@host
    )""",
    re.VERBOSE,
)


def is_secret_name(name: str) -> bool:
    """True when an environment variable's name says it holds a credential."""
    upper = name.upper()
    if upper in _KEEP_NAMES:
        return False
    if upper in _SECRET_NAMES or upper.startswith(_SECRET_PREFIXES):
        return True
    if any(part in upper for part in _SECRET_SUBSTRINGS):
        return True
    return any(part in _SECRET_NAME_PARTS for part in upper.split("_"))


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``env`` without anything that looks like a credential.

    A variable is dropped when its name contains KEY, TOKEN, SECRET, PASSWORD, PASSWD,
    CREDENTIAL, AUTH, COOKIE or SESSION (any case), belongs to a provider or cloud family
    (``ANTHROPIC_*``, ``OPENAI_*``, ``AWS_*``, ``AZURE_*``, ``GOOGLE_*``, ...), is a known
    credential pointer (``HF_TOKEN``, ``GITHUB_TOKEN``, ``NETRC``, ...), or when its value has
    the shape of a key (``sk-...``, ``ghp_...``, ``hf_...``, ``AKIA...``) or of a URL with a
    password. ``PATH``, ``HOME``, ``LANG``, ``CUDA_VISIBLE_DEVICES``, ``PYTHONPATH``,
    ``TOKENIZERS_PARALLELISM`` and the like are kept.
    """
    return {
        name: value
        for name, value in env.items()
        if not is_secret_name(name) and not _SECRET_VALUE_RE.match(value)
    }
