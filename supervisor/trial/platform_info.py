"""What machine a trial ran on, and how busy it is right now.

:func:`platform_info` is recorded with every trial, because results are only comparable on the
same GPU, driver and torch. :func:`telemetry_sample` feeds the live GPU/CPU pane.

Neither imports torch into the supervisor: torch facts are read by a short-lived probe
subprocess (using the trainer's interpreter), so the supervisor stays light, never opens a CUDA
context that would hold VRAM all night, and cannot be hung by a wedged driver. GPU telemetry
comes from NVML (``nvidia-ml-py``, imported as ``pynvml``) on NVIDIA GPUs and from ``amdsmi``
(the ``rocm`` extra; it needs the ROCm library ``libamd_smi.so``) on AMD GPUs, when either is
installed and sees a GPU. CPU and RAM come from ``psutil`` on every OS, with the load average as a
last resort. Both functions never raise.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

__all__ = ["platform_info", "telemetry_sample", "amd_telemetry_status", "UNKNOWN"]

UNKNOWN = "unknown"
# Every platform_info() result has exactly these keys.
_KEYS = ("gpu", "gpu_count", "accelerator", "driver", "cuda", "torch", "python", "os", "cpu", "cpu_count")
# Importing torch can take tens of seconds on a cold network filesystem; past this the probe
# is abandoned and the torch fields say "unknown".
PROBE_TIMEOUT_S = 120.0

# Runs in the trainer's interpreter; prints one JSON line.
_TORCH_PROBE = r"""
import json, platform
out = {"python": platform.python_version()}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda or "n/a"
    out["hip"] = getattr(torch.version, "hip", None) or "n/a"
    if torch.cuda.is_available():
        out["accelerator"] = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_count"] = str(torch.cuda.device_count())
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out["accelerator"] = "mps"
        out["gpu"] = "Apple MPS (" + platform.machine() + ")"
        out["gpu_count"] = "1"
    else:
        out["accelerator"] = "cpu"
        out["gpu_count"] = "0"
except Exception as exc:
    out["torch_error"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""

_cache: dict[str, dict[str, str]] = {}
_cache_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# NVML
# ---------------------------------------------------------------------------------------------

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"tried": False, "module": None}


def _nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None (not installed, no driver, no GPU).

    Initialised once per process: nvmlInit is not free, and retrying a failure every telemetry
    tick would only repeat the failure.
    """
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                if pynvml.nvmlDeviceGetCount() > 0:
                    _nvml_state["module"] = pynvml
            except Exception:
                _nvml_state["module"] = None
        return _nvml_state["module"]


def _text(value: Any) -> str:
    # Older nvidia-ml-py versions return bytes, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_handle(nvml: Any) -> Any:
    """The NVML handle of the GPU a trial will use: the first one in CUDA_VISIBLE_DEVICES.

    NVML ignores CUDA_VISIBLE_DEVICES and enumerates in PCI order; with an index or a UUID in
    the variable we can still pick the right board (CUDA's own default order can differ from
    PCI order unless CUDA_DEVICE_ORDER=PCI_BUS_ID; an index then is a best guess).
    """
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.isdigit():
        try:
            return nvml.nvmlDeviceGetHandleByIndex(int(first))
        except Exception:
            pass
    elif first.startswith(("GPU-", "MIG-")):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(first)
        except Exception:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(0)


# ---------------------------------------------------------------------------------------------
# amdsmi (AMD GPUs under ROCm)
# ---------------------------------------------------------------------------------------------

_amdsmi_lock = threading.Lock()
# "error" says why amdsmi is unusable, for `doctor`; None while untried or when it works.
_amdsmi_state: dict[str, Any] = {"tried": False, "module": None, "error": None}
# amdsmi fills a counter the board does not have with all ones (or the text "N/A").
_AMDSMI_NOT_SUPPORTED = frozenset({0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})
# The variables ROCm reads to pick GPUs, in the order they are consulted here.
_AMD_VISIBLE_DEVICES = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def _amdsmi() -> Any | None:
    """The initialised ``amdsmi`` module, or None (not installed, no ROCm library, no AMD GPU).

    Initialised once per process, as NVML is; the reason for a failure stays in ``_amdsmi_state``.
    """
    with _amdsmi_lock:
        if not _amdsmi_state["tried"]:
            _amdsmi_state["tried"] = True
            _amdsmi_state["module"], _amdsmi_state["error"] = _start_amdsmi()
        return _amdsmi_state["module"]


def _start_amdsmi() -> tuple[Any | None, str | None]:
    """(module, None) when amdsmi works and sees a GPU, else (None, why not)."""
    printed = io.StringIO()
    try:
        # The wheel loads libamd_smi.so at import; without ROCm it prints a hint to stdout (which
        # would scribble over the terminal UI) and then fails with whatever ctypes raised.
        with contextlib.redirect_stdout(printed):
            import amdsmi
    except ImportError:
        return None, "amdsmi is not installed"
    except Exception as exc:
        hint = " ".join(printed.getvalue().split())[:200]
        return None, f"the ROCm library libamd_smi.so was not found ({hint or _first_line(exc)})"
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:
        return None, f"amdsmi could not start (is the amdgpu driver loaded?): {_first_line(exc)}"
    try:
        handles = amdsmi.amdsmi_get_processor_handles()
        error = "amdsmi sees no AMD GPU"
    except Exception as exc:
        handles, error = [], f"amdsmi cannot list the GPUs: {_first_line(exc)}"
    if not handles:
        _shut_down_amdsmi(amdsmi)
        return None, error
    # The library holds driver handles open; give them back when the supervisor exits.
    atexit.register(_shut_down_amdsmi, amdsmi)
    return amdsmi, None


def _shut_down_amdsmi(amdsmi: Any) -> None:
    try:
        amdsmi.amdsmi_shut_down()
    except Exception:
        pass


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' '.join(lines[:2]).strip()}"[:200]


def _amd_handle(amdsmi: Any) -> Any:
    """The amdsmi handle of the GPU a trial will use: the first visible one.

    amdsmi lists every GPU in PCI order whatever the variables say; an index in them is a best guess
    (it is exact when nothing reorders the devices, the usual case on one machine).
    """
    handles = amdsmi.amdsmi_get_processor_handles()
    for name in _AMD_VISIBLE_DEVICES:
        first = os.environ.get(name, "").split(",")[0].strip()
        if first.isdigit() and int(first) < len(handles):
            return handles[int(first)]
    return handles[0]


def _amd_number(value: Any) -> float | None:
    """A counter as amdsmi returns it, or None where the board does not have it ("N/A", all ones)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value in _AMDSMI_NOT_SUPPORTED:
        return None
    return float(value)


def _amd_text(value: Any) -> str | None:
    text = _text(value).strip() if value is not None else ""
    return text if text and text != "N/A" else None


def _query(read: Any) -> Any:
    """``read()``, or None when this board, driver or library version does not support it."""
    try:
        return read()
    except Exception:
        return None


def _amd_gpu_sample(amdsmi: Any) -> dict[str, Any] | None:
    try:
        handle = _amd_handle(amdsmi)
    except Exception:
        return None
    sample: dict[str, Any] = {"kind": "gpu", "gpu_source": "amdsmi"}
    sample["gpu_name"] = _query(lambda: _amd_text(amdsmi.amdsmi_get_gpu_asic_info(handle)["market_name"]))
    sample["gpu_util_percent"] = _query(
        lambda: _amd_number(amdsmi.amdsmi_get_gpu_activity(handle)["gfx_activity"])
    )
    vram = _query(lambda: amdsmi.amdsmi_get_gpu_vram_usage(handle)) or {}
    # amdsmi counts VRAM in MB (2**20 bytes) already.
    sample["vram_used_mb"] = _amd_number(vram.get("vram_used"))
    sample["vram_total_mb"] = _amd_number(vram.get("vram_total"))
    sample["temperature_c"] = _amd_temperature(amdsmi, handle)
    sample["power_w"] = _amd_power(amdsmi, handle)
    return sample


def _amd_temperature(amdsmi: Any, handle: Any) -> float | None:
    # Radeon cards report the edge sensor, as NVML's GPU temperature is; Instinct boards (MI200/MI300)
    # have no edge sensor and report the hotspot only.
    for sensor in ("EDGE", "HOTSPOT"):
        value = _query(
            lambda sensor=sensor: _amd_number(
                amdsmi.amdsmi_get_temp_metric(
                    handle,
                    getattr(amdsmi.AmdSmiTemperatureType, sensor),
                    amdsmi.AmdSmiTemperatureMetric.CURRENT,
                )
            )
        )
        if value is not None and value > 0:
            return value
    return None


def _amd_power(amdsmi: Any, handle: Any) -> float | None:
    power = _query(lambda: amdsmi.amdsmi_get_power_info(handle)) or {}
    # Watts. Which key is filled depends on the board: MI300 reports the current draw, Radeon cards
    # an average; newer libraries copy whichever exists into socket_power.
    for key in ("socket_power", "current_socket_power", "average_socket_power"):
        value = _amd_number(power.get(key))
        if value is not None and value > 0:
            return value
    return None


def _amd_driver(amdsmi: Any) -> str | None:
    def read() -> str | None:
        driver = amdsmi.amdsmi_get_gpu_driver_info(_amd_handle(amdsmi))
        name, version = _amd_text(driver.get("driver_name")), _amd_text(driver.get("driver_version"))
        return " ".join(part for part in (name, version) if part) or None

    return _query(read)


def amd_telemetry_status() -> tuple[bool, str]:
    """Whether AMD GPU telemetry works on this machine, and in words what it sees or why not (for `doctor`).

    Never raises. The words for a failure name the cause: amdsmi not installed, the ROCm library not
    found, the driver not answering, or no AMD GPU.
    """
    amdsmi = _amdsmi()
    if amdsmi is None:
        return False, _amdsmi_state["error"] or "amdsmi is unavailable"
    sample = _amd_gpu_sample(amdsmi) or {}
    parts = [sample.get("gpu_name") or "an AMD GPU", f"driver {_amd_driver(amdsmi) or UNKNOWN}"]
    others = _query(
        lambda: [
            p for p in amdsmi.amdsmi_get_gpu_process_list(_amd_handle(amdsmi)) if p.get("pid") != os.getpid()
        ]
    )
    if others:
        # Another job on the GPU takes compute and VRAM from every trial: worth knowing before a night.
        parts.append(
            f"{len(others)} other process(es) on it: {', '.join(str(p.get('name')) for p in others[:3])}"
        )
    return True, "amdsmi works: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# platform_info
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    return _linux_cpu_model() or _macos_cpu_model() or platform.processor() or platform.machine() or UNKNOWN


def _linux_cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                # x86 says "model name"; ARM boards say "Hardware", "Model" or "Processor".
                if key.strip() in ("model name", "Hardware", "Model", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def _macos_cpu_model() -> str | None:
    if sys.platform != "darwin":
        return None
    try:
        result = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    return None


def _cpu_count() -> str:
    # The CPUs this process may use (containers and taskset restrict it), not the host's.
    try:
        return str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        count = os.cpu_count()
        return str(count) if count else UNKNOWN


def _probe_torch(python: str) -> dict[str, str]:
    from supervisor.trial.environment import scrub_environment

    try:
        result = subprocess.run(
            [python, "-c", _TORCH_PROBE],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=scrub_environment(os.environ),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    for line in reversed(result.stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return {str(key): str(value) for key, value in data.items()}
    return {}


def _compute_platform_info(python: str) -> dict[str, str]:
    probe = _probe_torch(python)
    info = {
        "gpu": "cpu",
        "gpu_count": "0",
        "accelerator": "cpu",
        "driver": "n/a",
        "cuda": probe.get("cuda", UNKNOWN),
        "torch": probe.get("torch", UNKNOWN),
        "python": probe.get("python", platform.python_version()),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": _cpu_count(),
    }
    _add_accelerator(info, probe)
    nvml = _nvml()
    amdsmi = _amdsmi() if nvml is None else None
    if nvml is not None:
        _add_nvml_facts(info, nvml)
    elif amdsmi is not None:
        _add_amd_facts(info, amdsmi, probe.get("hip", "n/a"))
    elif info["accelerator"] == "rocm":
        info["driver"] = f"rocm {probe.get('hip', UNKNOWN)}"
    elif info["accelerator"] == "cuda":
        # No NVML: the CUDA runtime torch was built with is the nearest thing to a driver version.
        info["driver"] = f"cuda {info['cuda']}"
    return info


def _add_accelerator(info: dict[str, str], probe: dict[str, str]) -> None:
    """The accelerator and device the trainer's torch sees, as the probe reported them."""
    if "accelerator" in probe:
        info["accelerator"] = probe["accelerator"]
        info["gpu_count"] = probe.get("gpu_count", "0")
        if probe["accelerator"] != "cpu":
            info["gpu"] = probe.get("gpu", UNKNOWN)
    elif not probe:
        # The probe failed outright: we do not know what the trainer would see.
        for key in ("gpu", "gpu_count", "accelerator"):
            info[key] = UNKNOWN


def _add_nvml_facts(info: dict[str, str], nvml: Any) -> None:
    try:
        info["driver"] = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception:
        info["driver"] = UNKNOWN
    if info["torch"] == UNKNOWN:
        # No torch to ask; NVML still knows the board, which is the best record we have.
        try:
            info["gpu"] = _text(nvml.nvmlDeviceGetName(_nvml_handle(nvml)))
            info["gpu_count"] = str(nvml.nvmlDeviceGetCount())
        except Exception:
            pass


def _add_amd_facts(info: dict[str, str], amdsmi: Any, hip: str) -> None:
    driver = _amd_driver(amdsmi) or UNKNOWN
    # The kernel driver and the ROCm runtime torch was built with both decide speed and correctness.
    info["driver"] = f"{driver}, rocm {hip}" if hip not in ("n/a", UNKNOWN) else driver
    if info["torch"] == UNKNOWN:
        # No torch to ask; amdsmi still knows the board, which is the best record we have.
        name = _query(lambda: _amd_text(amdsmi.amdsmi_get_gpu_asic_info(_amd_handle(amdsmi))["market_name"]))
        count = _query(lambda: len(amdsmi.amdsmi_get_processor_handles()))
        if name and count:
            info["gpu"], info["gpu_count"] = name, str(count)


def platform_info(python: str | None = None, *, refresh: bool = False) -> dict[str, str]:
    """Describe the platform trials run on, as strings (all keys always present).

    Keys: ``gpu`` (the device name torch sees, ``"cpu"`` without an accelerator), ``gpu_count``,
    ``accelerator`` (``cuda``, ``rocm``, ``mps`` or ``cpu``), ``driver`` (NVML's driver version; on AMD,
    amdsmi's kernel driver and torch's ROCm version; without either library the CUDA/ROCm runtime
    version, else ``"n/a"``), ``cuda`` (torch's CUDA build or
    ``"n/a"``), ``torch``, ``python``, ``os``, ``cpu`` (model name), ``cpu_count`` (usable
    CPUs). Anything that cannot be found out is ``"unknown"``; this never raises.

    ``python`` is the interpreter the trainer runs with (default: this one); torch facts are
    read by running it once. The result is cached per interpreter (the first call costs an
    ``import torch``, a second or two); ``refresh=True`` recomputes. A copy is returned.
    """
    python = python or sys.executable
    with _cache_lock:
        cached = _cache.get(python)
        if cached is None or refresh:
            try:
                cached = _compute_platform_info(python)
            except Exception:
                # Belt and braces: recording a trial must never fail because of this.
                cached = dict.fromkeys(_KEYS, UNKNOWN)
            _cache[python] = cached
        return dict(cached)


# ---------------------------------------------------------------------------------------------
# telemetry_sample
# ---------------------------------------------------------------------------------------------

_cpu_lock = threading.Lock()
# (idle, total) CPU seconds at the previous sample, and the percentage computed then. Kept here rather
# than in psutil.cpu_percent(interval=None), whose baseline is shared with every other caller.
_cpu_state: dict[str, Any] = {"times": None, "percent": None}


def _read_cpu_times() -> tuple[float, float] | None:
    try:
        times = psutil.cpu_times()._asdict()
    except Exception:  # psutil raises OSError or RuntimeError where the OS will not say
        return None
    # Linux counts guest time inside user time already; adding it again would dilute idle.
    total = sum(value for key, value in times.items() if key not in ("guest", "guest_nice"))
    idle = times.get("idle", 0.0) + times.get("iowait", 0.0)
    return idle, total


def _cpu_percent() -> float | None:
    """Busy share of all CPUs since the previous call (the first call measures 100 ms)."""
    with _cpu_lock:
        previous = _cpu_state["times"]
        if previous is None:
            previous = _read_cpu_times()
            if previous is None:
                return None
            time.sleep(0.1)
        current = _read_cpu_times()
        if current is None:
            return None
        idle = current[0] - previous[0]
        total = current[1] - previous[1]
        if total <= 0:
            # Called again within one clock tick: no new information, repeat the last answer
            # and keep the old baseline so the next interval is a real one.
            _cpu_state["times"] = previous
            return _cpu_state["percent"]
        percent = round(max(0.0, min(100.0, 100.0 * (1.0 - idle / total))), 1)
        _cpu_state["times"], _cpu_state["percent"] = current, percent
        return percent


def _memory_mb() -> tuple[float | None, float | None]:
    """(used, total) RAM in MB; used = total - available (what a new allocation cannot have).

    psutil's own ``used`` leaves out caches differently on each OS; total - available means the same
    everywhere.
    """
    try:
        memory = psutil.virtual_memory()
    except Exception:
        return None, None
    return round((memory.total - memory.available) / 2**20, 1), round(memory.total / 2**20, 1)


def _cpu_sample() -> dict[str, Any]:
    sample: dict[str, Any] = {"cpu_percent": _cpu_percent(), "cpu_source": "psutil"}
    try:
        sample["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        sample["load_avg_1m"] = None
    if sample["cpu_percent"] is None:
        # psutil could not read the CPU times: the load average per CPU is a fair stand-in.
        sample["cpu_source"] = "loadavg"
        if sample["load_avg_1m"] is not None:
            cpus = os.cpu_count() or 1
            sample["cpu_percent"] = round(min(100.0, 100.0 * sample["load_avg_1m"] / cpus), 1)
        else:
            sample["cpu_source"] = None
    sample["ram_used_mb"], sample["ram_total_mb"] = _memory_mb()
    return sample


def _gpu_sample(nvml: Any) -> dict[str, Any] | None:
    try:
        handle = _nvml_handle(nvml)
    except Exception:
        return None
    sample: dict[str, Any] = {"kind": "gpu", "gpu_source": "nvml"}
    # Each query may be unsupported on its own (MIG slices have no utilisation counter).
    try:
        sample["gpu_name"] = _text(nvml.nvmlDeviceGetName(handle))
    except Exception:
        sample["gpu_name"] = None
    try:
        sample["gpu_util_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        sample["gpu_util_percent"] = None
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        sample["vram_used_mb"] = round(memory.used / 2**20, 1)
        sample["vram_total_mb"] = round(memory.total / 2**20, 1)
    except Exception:
        sample["vram_used_mb"] = sample["vram_total_mb"] = None
    try:
        sample["temperature_c"] = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    except Exception:
        sample["temperature_c"] = None
    try:
        sample["power_w"] = round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1)
    except Exception:
        sample["power_w"] = None
    return sample


def telemetry_sample() -> dict[str, Any]:
    """One reading of how busy the machine is. Cheap; meant to be polled about once a second.

    With NVML or amdsmi and a GPU: ``{"kind": "gpu", "gpu_source" ("nvml" or "amdsmi"), "gpu_name",
    "gpu_util_percent", "vram_used_mb", "vram_total_mb", "temperature_c", "power_w", ...}`` plus the
    CPU fields below (a starved dataloader shows up there). Otherwise ``{"kind": "cpu",
    "cpu_percent", "cpu_source", "load_avg_1m", "ram_used_mb", "ram_total_mb"}``. ``cpu_percent`` is
    over all CPUs since the previous call (psutil's CPU times; the first call blocks 100 ms to have
    an interval), or the 1-minute load average per CPU where psutil cannot read them. Every sample
    has ``"time"`` (epoch seconds). A value that cannot be read is ``None``; this never raises.
    """
    sample: dict[str, Any] = {}
    try:
        nvml = _nvml()
        amdsmi = _amdsmi() if nvml is None else None
        if nvml is not None:
            gpu = _gpu_sample(nvml)
        else:
            gpu = _amd_gpu_sample(amdsmi) if amdsmi is not None else None
        sample = dict(gpu) if gpu is not None else {"kind": "cpu"}
        sample.update(_cpu_sample())
    except Exception:
        sample.setdefault("kind", "cpu")
    sample["time"] = time.time()
    return sample
