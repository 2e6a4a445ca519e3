"""AMD GPUs through amdsmi: telemetry, the platform record, `doctor` and the UI's label, against a recorded sample.

There is no AMD GPU in CI, so a stand-in ``amdsmi`` module is built from tests/fixtures/amdsmi_sample.json:
the functions the supervisor calls, with the real names and signatures, returning what the real library
returned on an Instinct MI300X and a Radeon RX 7900 XTX (and raising AmdSmiLibraryException where the board
does not support a query, as the real one does). It is put into sys.modules, so the supervisor's own code
runs unchanged against it. The absent paths run too: amdsmi not installed, the ROCm library missing (the real
amdsmi wheel, installed here without ROCm), amdsmi_init failing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import json
import sys
import types
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from supervisor.cli.doctor import INFO, OK, Doctor
from supervisor.trial import platform_info as platform_module
from supervisor.trial.platform_info import amd_telemetry_status, platform_info, telemetry_sample

pytestmark = pytest.mark.timeout(120)

SAMPLE = json.loads((Path(__file__).parent / "fixtures" / "amdsmi_sample.json").read_text())
BOARDS = SAMPLE["boards"]
PROBE = SAMPLE["torch_probe"]
# Numbers the real wrapper uses (amdsmi_wrapper.py).
NOT_SUPPORTED, DRIVER_NOT_LOADED, NOT_INIT = 2, 34, 32


# ---------------------------------------------------------------------------------------------------------
# The stand-in amdsmi
# ---------------------------------------------------------------------------------------------------------


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        super().__init__(err_code)
        self.err_code = abs(err_code)

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | AMDSMI status {self.err_code}"


class AmdSmiParameterException(AmdSmiException):
    pass


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1


# The per-board queries the stand-in answers straight from the sample.
RECORDED_QUERIES = ("amdsmi_get_gpu_asic_info", "amdsmi_get_gpu_activity", "amdsmi_get_gpu_vram_usage",
                    "amdsmi_get_power_info", "amdsmi_get_gpu_driver_info", "amdsmi_get_gpu_process_list")


class FakeLibrary:
    """libamd_smi's behaviour: handles valid only after init, errors as AmdSmiLibraryException."""

    def __init__(self, boards: list[dict[str, Any]], init_error: int | None) -> None:
        self.boards = boards
        self.init_error = init_error
        self.handles = [ctypes.c_void_p(0x1000 + index) for index in range(len(boards))]
        self.initialised = False
        self.shut_down = 0

    def board(self, handle: Any) -> dict[str, Any]:
        if not self.initialised:
            raise AmdSmiLibraryException(NOT_INIT)
        for known, record in zip(self.handles, self.boards, strict=True):
            if handle is known:
                return record
        raise AmdSmiParameterException(handle)

    @staticmethod
    def recorded(value: Any) -> Any:
        if isinstance(value, dict) and "error" in value:
            raise AmdSmiLibraryException(value["code"])
        return json.loads(json.dumps(value))  # a fresh copy, as each real call builds a new dict

    def amdsmi_init(self, flag: int = 2) -> None:
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)
        self.initialised = True

    def amdsmi_shut_down(self) -> None:
        self.initialised = False
        self.shut_down += 1

    def amdsmi_get_processor_handles(self) -> list[Any]:
        if not self.initialised:
            raise AmdSmiLibraryException(NOT_INIT)
        return list(self.handles)

    def amdsmi_get_temp_metric(self, handle: Any, sensor: AmdSmiTemperatureType,
                               metric: AmdSmiTemperatureMetric) -> int:
        if not isinstance(sensor, AmdSmiTemperatureType) or not isinstance(metric, AmdSmiTemperatureMetric):
            raise AmdSmiParameterException(sensor)
        return self.recorded(self.board(handle)["amdsmi_get_temp_metric"][sensor.name])

    def query(self, name: str) -> Any:
        return lambda handle: self.recorded(self.board(handle)[name])


def fake_amdsmi(boards: list[dict[str, Any]], *, init_error: int | None = None) -> types.ModuleType:
    """A module with amdsmi's names and behaviour, answering from recorded per-board return values."""
    library = FakeLibrary(boards, init_error)
    module = types.ModuleType("amdsmi")
    module.__dict__.update(
        AmdSmiException=AmdSmiException,
        AmdSmiLibraryException=AmdSmiLibraryException,
        AmdSmiParameterException=AmdSmiParameterException,
        AmdSmiTemperatureType=AmdSmiTemperatureType,
        AmdSmiTemperatureMetric=AmdSmiTemperatureMetric,
        amdsmi_init=library.amdsmi_init,
        amdsmi_shut_down=library.amdsmi_shut_down,
        amdsmi_get_processor_handles=library.amdsmi_get_processor_handles,
        amdsmi_get_temp_metric=library.amdsmi_get_temp_metric,
        library=library,
    )
    for name in RECORDED_QUERIES:
        setattr(module, name, library.query(name))
    return module


@pytest.fixture
def fresh_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NVML (as on an AMD machine), amdsmi not tried yet in this process, no device variables set."""
    monkeypatch.setattr(platform_module, "_nvml_state", {"tried": True, "module": None})
    monkeypatch.setattr(platform_module, "_amdsmi_state", {"tried": False, "module": None, "error": None})
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mi300x(monkeypatch: pytest.MonkeyPatch, fresh_libraries: None) -> types.ModuleType:
    module = fake_amdsmi([BOARDS["mi300x"]] * int(PROBE["gpu_count"]))
    monkeypatch.setitem(sys.modules, "amdsmi", module)
    return module


def fake_torch_source() -> str:
    """A ROCm build of torch as the probe and `doctor` see it: torch.version.hip set, torch.cuda working."""
    name = BOARDS["mi300x"]["amdsmi_get_gpu_asic_info"]["market_name"]
    total = BOARDS["mi300x"]["amdsmi_get_gpu_vram_usage"]["vram_total"] * 2**20
    return f"""
import types
__version__ = {PROBE["torch"]!r}
version = types.SimpleNamespace(cuda=None, hip={PROBE["hip"]!r})
cuda = types.SimpleNamespace(
    is_available=lambda: True,
    get_device_name=lambda index=0: {name!r},
    device_count=lambda: {int(PROBE["gpu_count"])},
    get_device_properties=lambda index=0: types.SimpleNamespace(name={name!r}, total_memory={total}),
)
backends = types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: False))
"""


@pytest.fixture
def rocm_torch(tmp_path: Path) -> Path:
    """A folder holding the stand-in torch package."""
    package = tmp_path / "fake-torch" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(fake_torch_source())
    return package.parent


def load_fake_torch(folder: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("torch", folder / "torch" / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# Telemetry against the recorded boards
# ---------------------------------------------------------------------------------------------------------


def test_an_mi300x_reports_as_a_gpu_with_its_name_use_vram_hotspot_and_power(mi300x: types.ModuleType) -> None:
    sample = telemetry_sample()
    assert sample["kind"] == "gpu" and sample["gpu_source"] == "amdsmi"
    assert sample["gpu_name"] == "AMD Instinct MI300X"
    assert sample["gpu_util_percent"] == 97.0
    assert (sample["vram_used_mb"], sample["vram_total_mb"]) == (151337.0, 196592.0)
    assert sample["temperature_c"] == 71.0  # no edge sensor on an Instinct board: the hotspot instead
    assert sample["power_w"] == 612.0
    assert 0.0 <= sample["cpu_percent"] <= 100.0 and sample["ram_total_mb"] > 0  # CPU fields as well
    assert mi300x.library.initialised
    telemetry_sample()
    assert platform_module._amdsmi_state["module"] is mi300x  # initialised once, then reused


def test_a_radeon_reports_its_edge_temperature_and_average_power(monkeypatch, fresh_libraries) -> None:
    board = json.loads(json.dumps(BOARDS["rx7900xtx"]))
    board["amdsmi_get_power_info"]["socket_power"] = "N/A"  # an older library: only the average is filled
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi([board]))
    sample = telemetry_sample()
    assert sample["gpu_name"] == "Radeon RX 7900 XTX"
    assert sample["temperature_c"] == 54.0
    assert sample["power_w"] == 327.0
    assert sample["vram_total_mb"] == 24560.0


def test_the_visible_device_is_the_one_sampled(monkeypatch, fresh_libraries) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi([BOARDS["mi300x"], BOARDS["rx7900xtx"]]))
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1,0")
    assert telemetry_sample()["gpu_name"] == "Radeon RX 7900 XTX"
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "7")  # past the end: the first board, not an error
    assert telemetry_sample()["gpu_name"] == "AMD Instinct MI300X"


def test_queries_a_board_does_not_support_read_as_none(monkeypatch, fresh_libraries) -> None:
    board = json.loads(json.dumps(BOARDS["mi300x"]))
    unsupported = {"error": "AMDSMI_STATUS_NOT_SUPPORTED", "code": NOT_SUPPORTED}
    board["amdsmi_get_gpu_activity"] = unsupported
    board["amdsmi_get_temp_metric"] = {"EDGE": unsupported, "HOTSPOT": unsupported}
    board["amdsmi_get_power_info"] = {key: "N/A" for key in board["amdsmi_get_power_info"]}
    board["amdsmi_get_gpu_asic_info"]["market_name"] = "N/A"
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi([board]))
    sample = telemetry_sample()
    assert sample["kind"] == "gpu"
    assert sample["gpu_util_percent"] is None and sample["temperature_c"] is None and sample["power_w"] is None
    assert sample["gpu_name"] is None
    assert sample["vram_total_mb"] == 196592.0  # what is supported still comes through


# ---------------------------------------------------------------------------------------------------------
# The platform record: a ROCm build of torch, as the trainer-side probe sees it
# ---------------------------------------------------------------------------------------------------------


def python_with(folder: Path, tmp_path: Path) -> str:
    """An interpreter whose `import torch` finds the stand-in (the probe runs with a scrubbed environment,
    so PYTHONPATH would not reach it)."""
    wrapper = tmp_path / "python-with-rocm-torch"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -c "import sys; sys.path.insert(0, \'{folder}\'); exec(sys.argv[2])" "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def test_platform_info_records_the_amd_gpu_driver_and_rocm(mi300x, rocm_torch: Path, tmp_path: Path) -> None:
    info = platform_info(python_with(rocm_torch, tmp_path), refresh=True)
    assert info["accelerator"] == "rocm"
    assert info["gpu"] == "AMD Instinct MI300X" and info["gpu_count"] == "8"
    assert info["driver"] == f"amdgpu 6.10.5, rocm {PROBE['hip']}"
    assert info["torch"] == PROBE["torch"] and info["cuda"] == "n/a"


def test_without_amdsmi_a_rocm_machine_still_records_its_gpu_and_rocm(monkeypatch, fresh_libraries,
                                                                      rocm_torch: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # `import amdsmi` raises ImportError
    info = platform_info(python_with(rocm_torch, tmp_path), refresh=True)
    assert info["accelerator"] == "rocm" and info["gpu"] == "AMD Instinct MI300X"
    assert info["driver"] == f"rocm {PROBE['hip']}"


def test_without_torch_amdsmi_still_names_the_board(mi300x, tmp_path: Path) -> None:
    info = platform_info(str(tmp_path / "no-such-python"), refresh=True)
    assert info["torch"] == "unknown"
    assert info["gpu"] == "AMD Instinct MI300X" and info["gpu_count"] == "8"
    assert info["driver"] == "amdgpu 6.10.5"


# ---------------------------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------------------------


def doctor_on_rocm(monkeypatch: pytest.MonkeyPatch, rocm_torch: Path) -> dict[str, Any]:
    monkeypatch.setitem(sys.modules, "torch", load_fake_torch(rocm_torch))
    doctor = Doctor()
    checks = {}
    for step in (doctor.check_torch, doctor.check_device, doctor.check_telemetry):
        checks.update({check.name: check for check in step()})
    return checks


def test_doctor_names_the_amd_gpu_and_its_telemetry(mi300x, monkeypatch, rocm_torch: Path) -> None:
    checks = doctor_on_rocm(monkeypatch, rocm_torch)
    assert checks["torch"].status == OK and f"ROCm {PROBE['hip']}" in checks["torch"].detail
    assert checks["gpu"].status == OK
    assert checks["gpu"].detail.startswith("AMD Instinct MI300X, 192 GiB via ROCm")
    telemetry = checks["telemetry"]
    assert telemetry.status == OK
    assert "AMD Instinct MI300X" in telemetry.detail and "amdgpu 6.10.5" in telemetry.detail
    assert "1 other process(es) on it: python3" in telemetry.detail  # another job holds this GPU


def test_doctor_without_amdsmi_says_so_as_information(monkeypatch, fresh_libraries, rocm_torch: Path) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    telemetry = doctor_on_rocm(monkeypatch, rocm_torch)["telemetry"]
    assert telemetry.status == INFO
    assert telemetry.detail.startswith("amdsmi is not installed")
    assert "[rocm]" in telemetry.fix


def test_doctor_when_amdsmi_cannot_start_says_why(monkeypatch, fresh_libraries, rocm_torch: Path) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi([BOARDS["mi300x"]], init_error=DRIVER_NOT_LOADED))
    telemetry = doctor_on_rocm(monkeypatch, rocm_torch)["telemetry"]
    assert telemetry.status == INFO
    assert "amdsmi could not start" in telemetry.detail and "AmdSmiLibraryException" in telemetry.detail
    assert telemetry_sample()["kind"] == "cpu"  # and the UI falls back to the CPU pane


# ---------------------------------------------------------------------------------------------------------
# The absent library: never a traceback, never a GPU that is not there
# ---------------------------------------------------------------------------------------------------------


def test_amdsmi_not_installed(monkeypatch, fresh_libraries) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    assert amd_telemetry_status() == (False, "amdsmi is not installed")
    sample = telemetry_sample()
    assert sample["kind"] == "cpu" and "gpu_name" not in sample


def test_a_machine_without_an_amd_gpu(monkeypatch, fresh_libraries) -> None:
    module = fake_amdsmi([])
    monkeypatch.setitem(sys.modules, "amdsmi", module)
    assert amd_telemetry_status() == (False, "amdsmi sees no AMD GPU")
    assert telemetry_sample()["kind"] == "cpu"
    assert module.library.shut_down == 1  # the library was handed back, not held all night for nothing


@pytest.mark.skipif(importlib.util.find_spec("amdsmi") is None, reason="the amdsmi wheel is not installed")
def test_the_real_amdsmi_without_the_rocm_library(monkeypatch, fresh_libraries, capfd) -> None:
    # The wheel is on PyPI; the library it loads (libamd_smi.so) comes with ROCm. Without it, the import
    # fails (and the wheel prints a hint, which must not reach the terminal UI).
    if any(Path(p).exists() for p in ("/opt/rocm/lib/libamd_smi.so", "/usr/lib/libamd_smi.so")):
        pytest.skip("ROCm is installed here")
    for name in [name for name in sys.modules if name == "amdsmi" or name.startswith("amdsmi.")]:
        monkeypatch.delitem(sys.modules, name)
    works, detail = amd_telemetry_status()
    assert not works
    assert detail.startswith("the ROCm library libamd_smi.so was not found")
    assert telemetry_sample()["kind"] == "cpu"
    printed = capfd.readouterr()
    assert "libamd_smi" not in printed.out + printed.err


# ---------------------------------------------------------------------------------------------------------
# The UI's label
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_telemetry_pane_is_titled_with_the_amd_gpu(mi300x, tmp_path: Path) -> None:
    from supervisor.store.ledger import Ledger
    from supervisor.tui.app import SupervisorApp
    from supervisor.tui.widgets import TelemetryPane
    from tests.tui_support import synthetic_ledger

    run_dir = tmp_path / "journals" / "night"
    synthetic_ledger(run_dir, trials=3)
    app = SupervisorApp(Ledger(run_dir / "ledger.sqlite", readonly=True), run_dir, telemetry=telemetry_sample,
                        poll_s=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(400):  # a bound on the waits: each is one pass of the event loop
            if app.view.telemetry:
                break
            await pilot.pause(0.05)
        assert app.view.telemetry["gpu_source"] == "amdsmi"
        pane = app.screen.query_one(TelemetryPane)
        await pilot.pause()
        console = Console(width=60, record=True, file=io.StringIO())
        console.print(pane.render())
        text = console.export_text()
        assert pane.border_title == "AMD Instinct MI300X"
        assert "97%" in text and "147.8/192.0 GB" in text and "71°C" in text
        await pilot.press("q")
