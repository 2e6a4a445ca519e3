"""platform_info and telemetry_sample on the machine the tests run on (a CPU box in CI)."""

from __future__ import annotations

import builtins
import collections
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from supervisor.trial import platform_info as platform_module
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
        assert 0 < sample["ram_used_mb"] <= sample["ram_total_mb"]  # psutil reads RAM on every OS
    if not _has_nvidia_gpu():
        assert first["kind"] == "cpu"
        assert first["cpu_source"] in ("psutil", "loadavg")


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
    if sample.get("cpu_source") == "psutil":
        cpus = os.cpu_count() or 1
        assert sample["cpu_percent"] >= min(50.0, 80.0 / cpus)


@pytest.fixture
def no_gpu_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry as on a machine without NVML or amdsmi, with a fresh CPU baseline."""
    monkeypatch.setattr(platform_module, "_nvml_state", {"tried": True, "module": None})
    monkeypatch.setattr(platform_module, "_amdsmi_state", {"tried": True, "module": None, "error": "absent"})
    monkeypatch.setattr(platform_module, "_cpu_state", {"times": None, "percent": None})


def test_ram_is_read_through_psutil(no_gpu_libraries: None) -> None:
    sample = telemetry_sample()
    memory = psutil.virtual_memory()
    assert sample["ram_total_mb"] == round(memory.total / 2**20, 1)
    # used = total - available; both move between the two readings, by far less than 5% of the total.
    assert abs(sample["ram_used_mb"] - (memory.total - memory.available) / 2**20) < 0.05 * sample["ram_total_mb"]
    assert sample["cpu_source"] == "psutil" and 0.0 <= sample["cpu_percent"] <= 100.0


class FakeMacOS:
    """What psutil returns on macOS (its field names there: no iowait, no guest), with a clock of CPU seconds
    that the test advances: 4 CPUs, 1 busy and 3 idle per second."""

    Times = collections.namedtuple("scputimes", "user nice system idle")
    Memory = collections.namedtuple("svmem", "total available percent used free active inactive wired")

    def __init__(self) -> None:
        self.seconds = 1000.0

    def cpu_times(self) -> tuple:
        self.seconds += 1.0
        return self.Times(user=0.8 * self.seconds, nice=0.0, system=0.2 * self.seconds, idle=3.0 * self.seconds)

    @staticmethod
    def virtual_memory() -> tuple:
        gib = 2**30
        return FakeMacOS.Memory(total=16 * gib, available=6 * gib, percent=62.5, used=9 * gib, free=1 * gib,
                                active=5 * gib, inactive=5 * gib, wired=2 * gib)


def test_a_mac_without_proc_still_gets_cpu_and_ram(monkeypatch: pytest.MonkeyPatch, no_gpu_libraries: None) -> None:
    macos = FakeMacOS()
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(psutil, "cpu_times", macos.cpu_times)
    monkeypatch.setattr(psutil, "virtual_memory", macos.virtual_memory)
    real_open = builtins.open

    def no_proc(file, *args, **kwargs):  # there is no /proc on a Mac
        if str(file).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    sample = telemetry_sample()
    assert sample["kind"] == "cpu"
    assert (sample["ram_used_mb"], sample["ram_total_mb"]) == (10 * 1024.0, 16 * 1024.0)  # not "unknown"
    assert sample["cpu_source"] == "psutil" and sample["cpu_percent"] == 25.0


def test_when_psutil_cannot_read_the_cpu_the_load_average_stands_in(
    monkeypatch: pytest.MonkeyPatch, no_gpu_libraries: None
) -> None:
    def refused() -> None:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "cpu_times", refused)
    monkeypatch.setattr(psutil, "virtual_memory", refused)
    sample = telemetry_sample()  # no traceback
    assert sample["cpu_source"] in ("loadavg", None)
    if sample["cpu_source"] == "loadavg":
        assert 0.0 <= sample["cpu_percent"] <= 100.0
    assert sample["ram_used_mb"] is None and sample["ram_total_mb"] is None
