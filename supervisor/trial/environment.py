"""What a process that runs the agent's code may see of the environment: an allowlist, minus credentials.

Used for every process that runs the agent's code (trials, warm-started interpreters), for the platform
probe and for the git commands the supervisor runs in the workspace.

A denylist of credential names always misses one (``DB_PASS``, ``*_CREDS``, ``*_BEARER``, a vendor's new
variable), so the trial gets only what training needs: the variables named in ``ALLOWED_NAMES`` or starting
with one of ``ALLOWED_PREFIXES`` (paths, locale, the CUDA / ROCm / CPU runtimes, torch and its compilers,
the trainer contract's ``AUTORESEARCH_*``). Even an allowed variable is dropped when its name says it is a
credential (:func:`is_secret_name`) or its value has the shape of one (:func:`is_secret_value`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping

from supervisor.core.secrets import SECRETS_FD_VARIABLE

# ---------------------------------------------------------------------------------------------
# What training needs
# ---------------------------------------------------------------------------------------------

ALLOWED_NAMES = frozenset({
    # the process itself: where programs and home are, who runs it, the terminal, the time zone
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TMPDIR", "TEMP", "TMP",
    "LANG", "LANGUAGE", "TZ", "TZDIR", "TERM", "COLUMNS", "LINES", "NO_COLOR",
    # Python and its environments
    "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONNOUSERSITE", "PYTHONSAFEPATH",
    "PYTHONFAULTHANDLER", "PYTHONPYCACHEPREFIX", "PYTHONDEVMODE", "PYTHONMALLOC",
    # shared libraries (CUDA, ROCm and allocators such as tcmalloc are often found or preloaded this way)
    "LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_LIBRARY_PATH", "DYLD_FALLBACK_LIBRARY_PATH", "GLIBC_TUNABLES",
    # the C compiler torch.compile (inductor, triton) builds its kernels and helpers with
    "CC", "CXX", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "CUDAHOSTCXX",
    "SDKROOT", "DEVELOPER_DIR", "MACOSX_DEPLOYMENT_TARGET",
    # caches and configuration folders of the libraries a trainer imports
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "MPLBACKEND",
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
    # GPU selection outside the vendor families below
    "GPU_DEVICE_ORDINAL", "ONEAPI_DEVICE_SELECTOR", "VECLIB_MAXIMUM_THREADS",
    # torch.distributed, when a trial's command is torchrun on several GPUs
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
    "GROUP_RANK", "ROLE_RANK",
    # Windows: Python cannot start its sockets or random source without these
    "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "LOCALAPPDATA", "APPDATA",
    "PROGRAMDATA", "NUMBER_OF_PROCESSORS", "PROCESSOR_ARCHITECTURE", "USERNAME", "HOMEDRIVE", "HOMEPATH",
})

ALLOWED_PREFIXES = (
    "LC_",                                   # the locale
    "AUTORESEARCH_",                         # the trainer contract (docs/architecture.md)
    # NVIDIA
    "CUDA_", "NVIDIA_", "CUBLAS_", "CUBLASLT_", "CUDNN_", "CUFFT_", "CUSPARSE_", "NCCL_", "NVCC_",
    # AMD
    "ROCM_", "ROCR_", "HIP_", "HIPBLAS_", "HIPBLASLT_", "ROCBLAS_", "HSA_", "HCC_", "MIOPEN_", "AMD_", "GPU_",
    "RCCL_",
    # Intel and Apple GPUs
    "ZE_", "SYCL_", "MTL_",
    # CPU threading and math libraries
    "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "BLIS_", "NUMEXPR_", "DNNL_", "ONEDNN_", "MALLOC_",
    "TCMALLOC_", "RAYON_", "ARROW_",
    # torch, its compiler stack and its launcher
    "TORCH_", "TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCHELASTIC_", "TRITON_", "PYTORCH_",
    # environment managers a trial's command may be run through (`uv run train.py` upstream)
    "UV_", "CONDA_",
)

# ---------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------

# Words that mark a credential wherever they appear in a name, glued or not (DB_PASS, MYPASS, APIKEY,
# OAUTH_CLIENT, *_CREDS, *_BEARER). Matched on the upper-cased name.
_SECRET_WORDS = (
    "KEY", "TOKEN", "SECRET", "PASS", "PWD", "CRED", "AUTH", "BEARER", "COOKIE", "SESSION", "PRIVATE",
    "WEBHOOK", "SIGNATURE", "SIGNING", "JWT",
)
# Not CERT: SSL_CERT_FILE and the like name public CA bundles, which the supervisor's own HTTPS client may
# need; a private key in a value is caught by its PEM header.
# Short words that would hit innocent names as substrings (PAT in PATH, PW in PWR, SAS in SASL...): they
# count only as a whole part of the name, between separators.
_SECRET_PARTS = frozenset({"PAT", "PW", "DSN", "OTP", "TOTP", "MFA", "SAS", "PSK", "SALT"})
# Prefixes of whole families of provider and cloud variables: a base URL or an org id of a provider says
# where the keys go and belongs with them (the CLI moves all of these out of its own environment).
_SECRET_PREFIXES = (
    "ANTHROPIC_", "OPENAI_", "AZURE_", "AWS_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "GEMINI_", "VERTEX_",
    "COHERE_", "MISTRAL_", "GROQ_", "TOGETHER_", "DEEPSEEK_", "OPENROUTER_", "XAI_", "FIREWORKS_",
    "HUGGING_FACE_", "WANDB_", "NEPTUNE_", "COMET_", "DIGITALOCEAN_", "CLOUDFLARE_",
)
# Pointers to credential files.
_SECRET_NAMES = frozenset({"NETRC", "KUBECONFIG", "DOCKER_CONFIG", "GNUPGHOME", "BOTO_CONFIG"})
# Names a trainer needs that contain a word above but hold none (TOKENIZERS_* contains TOKEN; PWD and
# OLDPWD are the working directory).
_NOT_SECRET_NAMES = frozenset({"TOKENIZERS_PARALLELISM", "PWD", "OLDPWD"})
_NAME_PARTS = re.compile(r"[^A-Z0-9]+")

# Values that are credentials whatever the variable is called: well-known key formats, bearer and basic
# authorization values, JSON web tokens, and URLs with a password in them (proxies, indexes, databases).
_SECRET_VALUE_RE = re.compile(
    r"""^\s*(?:
        sk-[A-Za-z0-9_\-]{20,}                       # OpenAI / Anthropic style
      | gh[pousr]_[A-Za-z0-9]{30,}                   # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | glpat-[A-Za-z0-9_\-]{20,}                    # GitLab
      | hf_[A-Za-z0-9]{30,}                          # Hugging Face
      | (?:AKIA|ASIA)[0-9A-Z]{16}                    # AWS access key ids
      | AIza[0-9A-Za-z_\-]{35}                       # Google API keys
      | xox[abprs]-[A-Za-z0-9\-]{10,}                # Slack
      | eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*   # a JWT: base64 of '{"' . payload . sig
      | (?:Bearer|Basic|Token)\s+\S{8,}              # an Authorization header's value
    )""",
    re.VERBOSE | re.IGNORECASE,
)
_URL_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@")
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")

# A long random-looking blob (a bare hex or base64 key): one run of key characters, no path or list syntax.
_BLOB_RE = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
_BLOB_RUN_RE = re.compile(r"[A-Za-z0-9+/=]+")  # base64's alphabet; - and _ separate words (and UUID groups)
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
# A run of at least this many letters and digits without a separator: a UUID (CUDA_VISIBLE_DEVICES=GPU-...)
# has runs of 12 at most, words joined by _ or - are short runs too.
_BLOB_MIN_RUN = 20
# Shannon entropy (bits per character) above which such a run is taken for random: English-like identifiers
# and repeated characters stay under it, 32 random hex digits are ~3.7, random base64 ~5.
_HEX_MIN_ENTROPY = 3.0
_BASE64_MIN_ENTROPY = 4.0


def is_secret_name(name: str) -> bool:
    """True when an environment variable's name says it holds a credential (or where one goes).

    Case does not matter. A credential word (KEY, TOKEN, SECRET, PASS, PWD, CRED, AUTH, BEARER, COOKIE,
    SESSION, PRIVATE, WEBHOOK, SIGNATURE, SIGNING, JWT) counts anywhere in the name; a short one
    (PAT, PW, DSN, OTP, TOTP, MFA, SAS, PSK, SALT) only as a whole ``_``-separated part, so that PATH is
    not hit. Provider and cloud families (``ANTHROPIC_*``, ``OPENAI_*``, ``AWS_*``, ...) and pointers to
    credential files (``NETRC``, ``KUBECONFIG``, ...) count too. ``PWD``, ``OLDPWD`` and
    ``TOKENIZERS_PARALLELISM`` do not.
    """
    upper = name.upper()
    if upper in _NOT_SECRET_NAMES:
        return False
    if upper in _SECRET_NAMES or upper.startswith(_SECRET_PREFIXES):
        return True
    if any(word in upper for word in _SECRET_WORDS):
        return True
    return any(part in _SECRET_PARTS for part in _NAME_PARTS.split(upper))


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _looks_random(value: str) -> bool:
    """A bare key: 32+ key characters in one piece, with a long run that is hex or mixed-case base64 and
    has the entropy of random bytes. Paths (a leading / . ~), lists, URLs and UUIDs are not."""
    if not _BLOB_RE.fullmatch(value) or value[0] in "/.~":
        return False
    run = max(_BLOB_RUN_RE.findall(value), key=len, default="")
    if len(run) < _BLOB_MIN_RUN or not any(c.isdigit() for c in run):
        return False
    if _HEX_RE.fullmatch(run):
        return any(c.isalpha() for c in run) and _entropy(run) >= _HEX_MIN_ENTROPY
    has_both_cases = any(c.islower() for c in run) and any(c.isupper() for c in run)
    return has_both_cases and _entropy(run) >= _BASE64_MIN_ENTROPY


def is_secret_value(value: str) -> bool:
    """True when a value has the shape of a credential, whatever its variable is called."""
    stripped = value.strip()
    if not stripped:
        return False
    return bool(_SECRET_VALUE_RE.match(stripped) or _URL_PASSWORD_RE.search(stripped)
                or _PEM_RE.search(stripped) or _looks_random(stripped))


def is_allowed_name(name: str) -> bool:
    """True when a trainer may need this variable (``ALLOWED_NAMES`` / ``ALLOWED_PREFIXES``, any case)."""
    upper = name.upper()
    return upper in ALLOWED_NAMES or upper.startswith(ALLOWED_PREFIXES)


def drop_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without credential names or values, but not limited to the allowlist: for variables the
    supervisor sets on purpose (a trial spec's ``extra_env``), which must still never carry a key."""
    return {
        name: value
        for name, value in env.items()
        if name.upper() != SECRETS_FD_VARIABLE and not is_secret_name(name) and not is_secret_value(value)
    }


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return the part of ``env`` a process running the agent's code may see.

    A variable is kept only when it is on the allowlist (``ALLOWED_NAMES``, ``ALLOWED_PREFIXES``: paths,
    locale, the GPU and CPU runtimes, torch and its compilers, ``AUTORESEARCH_*``), its name does not say
    it is a credential (:func:`is_secret_name`) and its value does not look like one
    (:func:`is_secret_value`). The CLI's own secrets hand-over variable never passes.
    """
    return {
        name: value
        for name, value in env.items()
        if is_allowed_name(name)
        and name.upper() != SECRETS_FD_VARIABLE
        and not is_secret_name(name)
        and not is_secret_value(value)
    }
