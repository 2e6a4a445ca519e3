"""platform_info and telemetry_sample on the machine the tests run on (a CPU box in CI)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.trial.platform_info import platform_info, telemetry_sample

pytestmark = pytest.mark.timeout(180)

KEYS = {"gpu", "gpu_count", "accelerator", "driver", "cuda", "torch", "python", "os", "cpu", "cpu_count"}
REPO = Path(__file__).resolve().parent.parent


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


def test_platform_info_describes_this_machine() -> None:
    info = platform_info()
    assert set(info) == KEYS
    assert all(isinstance(value, str) and value for value in info.values())
    assert info["torch"] == importlib.metadata.version("torch")
    assert info["python"] == platform.python_version()
    assert int(info["cpu_count"]) >= 1
    assert info["cpu"] != "unknown"
    assert info["os"] not in ("", "unknown")
    if not _has_nvidia_gpu() and info["accelerator"] == "cpu":
        assert info["gpu"] == "cpu"
        assert info["gpu_count"] == "0"
        assert info["driver"] == "n/a"


def test_platform_info_is_cached_and_returns_copies() -> None:
    first = platform_info()
    started = time.monotonic()
    second = platform_info()
    assert time.monotonic() - started < 0.05  # no second torch import
    assert first == second
    second["gpu"] = "changed by a caller"
    assert platform_info()["gpu"] == first["gpu"]


def test_platform_info_without_torch_says_unknown(tmp_path: Path) -> None:
    # An interpreter that cannot import torch (here: none at all) must not make it raise.
    info = platform_info(str(tmp_path / "no-such-python"))
    assert set(info) == KEYS
    assert info["torch"] == "unknown"
    assert info["cpu_count"] != "unknown"

    # A real interpreter with torch hidden: the probe reports the ImportError, fields say so.
    fake = tmp_path / "python-without-torch"
    fake.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -c "import sys; sys.modules[\'torch\'] = None; '
        'exec(sys.argv[2])" "$@"\n'
    )
    fake.chmod(0o755)
    info = platform_info(str(fake))
    assert info["torch"] == "unknown"
    assert info["python"] == platform.python_version()


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import supervisor.trial.platform_info as p\n"
        "assert 'torch' not in sys.modules\n"
        "info = p.platform_info()\n"
        "assert 'torch' not in sys.modules, 'platform_info imported torch into the supervisor'\n"
        "p.telemetry_sample()\n"
        "assert 'torch' not in sys.modules\n"
        "print(info['torch'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == importlib.metadata.version("torch")


def test_telemetry_sample_is_sane() -> None:
    first = telemetry_sample()
    time.sleep(0.05)
    second = telemetry_sample()
    for sample in (first, second):
        assert sample["kind"] in ("gpu", "cpu")
        assert abs(sample["time"] - time.time()) < 5
        if sample["kind"] == "gpu":
            assert sample["vram_total_mb"] is None or sample["vram_total_mb"] > 0
        assert sample["cpu_percent"] is not None
        assert 0.0 <= sample["cpu_percent"] <= 100.0
        if Path("/proc/meminfo").exists():
            assert 0 < sample["ram_used_mb"] <= sample["ram_total_mb"]
    if not _has_nvidia_gpu():
        assert first["kind"] == "cpu"
        assert first["cpu_source"] in ("proc", "loadavg")


def test_telemetry_sees_a_busy_cpu() -> None:
    telemetry_sample()  # baseline
    # Burn one core for a while in a child; with 1-2 cores that is well above idle noise.
    burner = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"]
    )
    try:
        burner.wait(timeout=30)
    finally:
        if burner.poll() is None:
            burner.kill()
    sample = telemetry_sample()
    if sample.get("cpu_source") == "proc":
        cpus = os.cpu_count() or 1
        assert sample["cpu_percent"] >= min(50.0, 80.0 / cpus)
