"""The environment a process running the agent's code gets: an allowlist, minus anything credential-like."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from supervisor.core.secrets import SECRETS_FD_VARIABLE
from supervisor.trial.environment import (
    ALLOWED_NAMES,
    ALLOWED_PREFIXES,
    is_allowed_name,
    is_secret_name,
    is_secret_value,
    scrub_environment,
)

# What a real CUDA, ROCm or CPU PyTorch trainer gets to keep.
TRAINER_NEEDS = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/me",
    "USER": "me",
    "LOGNAME": "me",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "LC_CTYPE": "en_US.UTF-8",
    "TZ": "Europe/Paris",
    "TERM": "xterm-256color",
    "TMPDIR": "/tmp",
    "PWD": "/work",
    "OLDPWD": "/home/me",
    "VIRTUAL_ENV": "/work/.venv",
    "PYTHONPATH": "/src",
    "PYTHONUNBUFFERED": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64:/opt/rocm/lib",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "CUDA_HOME": "/usr/local/cuda",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NCCL_DEBUG": "WARN",
    "HIP_VISIBLE_DEVICES": "0",
    "ROCR_VISIBLE_DEVICES": "0",
    "ROCM_PATH": "/opt/rocm",
    "HSA_OVERRIDE_GFX_VERSION": "10.3.0",
    "MIOPEN_USER_DB_PATH": "/tmp/miopen",
    "GPU_DEVICE_ORDINAL": "0",
    "OMP_NUM_THREADS": "4",
    "MKL_NUM_THREADS": "4",
    "KMP_AFFINITY": "granularity=fine,compact,1,0",
    "OPENBLAS_NUM_THREADS": "4",
    "TORCH_HOME": "/home/me/.cache/torch",
    "TORCH_LOGS": "+dynamo,recompiles",
    "TORCHINDUCTOR_CACHE_DIR": "/runs/x/compile-cache/inductor",
    "TORCHDYNAMO_VERBOSE": "1",
    "TRITON_CACHE_DIR": "/runs/x/compile-cache/triton",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "AUTORESEARCH_CACHE": "/cache",
    "AUTORESEARCH_DEVICE": "cuda",
    "XDG_CACHE_HOME": "/home/me/.cache",
    "MPLCONFIGDIR": "/tmp/mpl",
    "CC": "gcc",
    "CONDA_PREFIX": "/opt/conda/envs/lm",
    "UV_CACHE_DIR": "/home/me/.cache/uv",
}

CREDENTIAL_NAMES = [
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN", "HF_TOKEN", "GITHUB_TOKEN", "GH_TOKEN",
    "AWS_SECRET_ACCESS_KEY", "aws_session_token", "DB_PASS", "MYPASS", "DB_PASSWORD", "MYSQL_PWD", "PGPASSWORD",
    "SERVICE_CREDS", "GOOGLE_APPLICATION_CREDENTIALS", "API_BEARER", "MY_BEARER_VALUE", "SOME_COOKIE_JAR",
    "FLASK_SESSION", "SSH_PRIVATE", "SENTRY_DSN", "GITLAB_PAT", "SLACK_WEBHOOK_URL", "SSH_AUTH_SOCK", "APIKEY",
    "OAUTH_CLIENT_ID", "JWT", "REQUEST_SIGNATURE", "SIGNING_MATERIAL", "DB_PW", "TWILIO_OTP", "AZURE_SAS",
    "WIFI_PSK", "NETRC", "KUBECONFIG", "DOCKER_CONFIG",
    # credential-looking names inside the allowlisted families
    "CUDA_API_KEY", "TORCH_HUB_TOKEN", "AUTORESEARCH_SECRET", "TRITON_PASSWORD", "NCCL_IB_PKEY",
    "UV_INDEX_PRIVATE_PASSWORD", "UV_PUBLISH_TOKEN", "CONDA_CREDS", "HIP_BEARER", "OMP_AUTH",
]

SECRET_VALUES = [
    "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123",
    "sk-proj-abcdefghijklmnopqrstuvwxyz",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "hf_abcdefghijklmnopqrstuvwxyz0123456789",
    "AKIAABCDEFGHIJKLMNOP",
    "xoxb-1234567890-abcdef",
    "glpat-abcdefghijklmnopqrst",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "https://user:s3cret@pypi.example.com/simple",
    "postgres://admin:pw@db:5432/x",
    "Bearer abcdefghijklmnop",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # 64 hex digits
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's example secret access key
    "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MEFCQ0RFRkdISUpLTE1O",  # base64
]

INNOCENT_VALUES = [
    "/usr/local/cuda/lib64:/opt/rocm/lib",
    "/home/me/.cache/torch/hub/checkpoints/abcdefabcdefabcdefabcdef0123456789",
    "GPU-8f2a1c34-5b6d-7e8f-9a0b-1c2d3e4f5a6b",
    "MIG-GPU-8f2a1c34-5b6d-7e8f-9a0b-1c2d3e4f5a6b/1/0",
    "expandable_segments:True,max_split_size_mb:512",
    "+dynamo,recompiles,graph_breaks",
    "max-autotune-no-cudagraphs",
    "TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE_AND_REDUCTION",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
    "0123456789012345678901234567890123456789",  # a long number, no letters
    "http://proxy.example.com:3128",
    "C.UTF-8",
    "",
]


def test_a_trainer_keeps_what_it_needs() -> None:
    assert scrub_environment(TRAINER_NEEDS) == TRAINER_NEEDS
    assert not [name for name in TRAINER_NEEDS if is_secret_name(name)]
    assert not [value for value in TRAINER_NEEDS.values() if is_secret_value(value)]


@pytest.mark.parametrize("name", CREDENTIAL_NAMES)
def test_credential_names_never_pass(name: str) -> None:
    assert is_secret_name(name)
    assert scrub_environment({name: "x", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.mark.parametrize("value", SECRET_VALUES)
def test_credential_values_never_pass_even_under_an_allowed_name(value: str) -> None:
    assert is_secret_value(value)
    for name in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "AUTORESEARCH_CACHE", "TORCH_LOGS", "HOME"):
        assert name not in scrub_environment({name: value})


@pytest.mark.parametrize("value", INNOCENT_VALUES)
def test_ordinary_values_are_not_taken_for_keys(value: str) -> None:
    assert not is_secret_value(value)


def test_names_that_contain_a_short_word_only_by_accident_pass() -> None:
    # PAT in PATH, PW in PWR, SAS in SASL, PWD as the working directory, TOKEN in TOKENIZERS.
    for name in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "CUDA_CACHE_PATH", "MIOPEN_USER_DB_PATH", "PWD",
                 "OLDPWD", "TOKENIZERS_PARALLELISM", "CUDA_PWR_LIMIT", "NCCL_SASL_MODE"):
        assert not is_secret_name(name), name


def test_everything_off_the_allowlist_is_dropped() -> None:
    dropped = {
        "http_proxy": "http://proxy.example.com:3128",  # the trial has no network
        "HTTPS_PROXY": "http://proxy:3128",
        "DISPLAY": ":0",
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "OPENAI_ORG_ID": "org-123",
        "AWS_PROFILE": "prod",
        "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com",
        "WANDB_PROJECT": "lm",
        "PIP_INDEX_URL": "https://pypi.example.com/simple",
        "GIT_DIR": "/elsewhere/.git",
        "GIT_CONFIG_PARAMETERS": "'core.hooksPath'='/tmp/evil'",
        "SOME_RANDOM_THING": "hello",
        "SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22",
        "MAIL": "/var/mail/me",
    }
    assert scrub_environment({**TRAINER_NEEDS, **dropped}) == TRAINER_NEEDS


def test_the_secrets_hand_over_variable_never_reaches_a_child() -> None:
    assert SECRETS_FD_VARIABLE.startswith("AUTORESEARCH_")  # the prefix is allowed; the name itself is not
    assert scrub_environment({SECRETS_FD_VARIABLE: "7", "AUTORESEARCH_SEED": "1"}) == {"AUTORESEARCH_SEED": "1"}


def test_allowlist_matching_is_by_exact_name_or_prefix() -> None:
    assert is_allowed_name("CUDA_LAUNCH_BLOCKING") and is_allowed_name("lc_all") and is_allowed_name("PATH")
    assert not is_allowed_name("PATHOLOGICAL") and not is_allowed_name("CUDAX") and not is_allowed_name("TORCHX")
    assert all(prefix.endswith("_") for prefix in ALLOWED_PREFIXES)
    assert all(name == name.upper() for name in ALLOWED_NAMES)


# ---- properties -------------------------------------------------------------------------------------------
WORDS = ["KEY", "TOKEN", "SECRET", "PASS", "PASSWD", "PASSWORD", "PWD", "CRED", "CREDS", "CREDENTIAL", "AUTH",
         "BEARER", "COOKIE", "SESSION", "PRIVATE", "WEBHOOK", "SIGNATURE", "SIGNING", "JWT"]
PARTS = ["PAT", "PW", "DSN", "OTP", "TOTP", "MFA", "SAS", "PSK", "SALT"]
ALLOWED_STARTS = sorted(ALLOWED_NAMES) + list(ALLOWED_PREFIXES) + [""]
alnum = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", max_size=8)
separators = st.sampled_from(["_", "-", ".", "__"])


def _any_case(word: str, flips: list[bool]) -> str:
    return "".join(c.lower() if flip else c for c, flip in zip(word, flips + [False] * len(word), strict=False))


@given(start=st.sampled_from(ALLOWED_STARTS), before=alnum, word=st.sampled_from(WORDS), after=alnum,
       flips=st.lists(st.booleans(), max_size=12), value=st.text(max_size=20))
def test_no_name_containing_a_credential_word_survives(start: str, before: str, word: str, after: str,
                                                       flips: list[bool], value: str) -> None:
    name = start + before + _any_case(word, flips) + after
    assume(name.upper() not in {"PWD", "OLDPWD", "TOKENIZERS_PARALLELISM"})
    assert is_secret_name(name)
    assert name not in scrub_environment({name: value})


@given(start=st.sampled_from(ALLOWED_STARTS), before=alnum, sep1=separators, word=st.sampled_from(PARTS),
       sep2=separators, after=alnum, lower=st.booleans(), value=st.text(max_size=20))
def test_no_name_with_a_short_credential_word_as_a_part_survives(start: str, before: str, sep1: str, word: str,
                                                                 sep2: str, after: str, lower: bool,
                                                                 value: str) -> None:
    name = f"{start}{before}{sep1}{word.lower() if lower else word}{sep2}{after}"
    assert is_secret_name(name)
    assert name not in scrub_environment({name: value})


@given(name=st.text(min_size=1, max_size=30), value=st.text(max_size=40))
def test_what_survives_is_allowed_and_clean(name: str, value: str) -> None:
    kept = scrub_environment({name: value})
    if kept:
        assert is_allowed_name(name) and not is_secret_name(name) and not is_secret_value(value)


@given(segments=st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+=",
                                 min_size=1, max_size=40), min_size=1, max_size=6))
def test_absolute_paths_are_never_taken_for_keys(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert not is_secret_value(path)
    assert not is_secret_value(path + ":" + path)  # a search path


def test_variables_set_on_purpose_lose_only_credentials() -> None:
    from supervisor.trial.environment import drop_credentials

    chosen = {"PROBE_FIXED": "same", "AUTORESEARCH_CACHE": "/cache", "LEAKED_API_KEY": "oops",
              "INNOCENT": "sk-abcdefghijklmnopqrstuvwxyz012345", SECRETS_FD_VARIABLE: "5"}
    assert drop_credentials(chosen) == {"PROBE_FIXED": "same", "AUTORESEARCH_CACHE": "/cache"}
