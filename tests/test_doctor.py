"""`autoresearch doctor` on this CPU machine: every check runs for real (compile, bf16, attention kernels)."""

from __future__ import annotations

import json

from supervisor.cli.doctor import FAIL, INFO, OK, WARN, run_doctor
from tests.loop_support import cli


def test_doctor_checks_this_machine(prepared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor-secret")
    checks = {c.name: c for c in run_doctor(cache_dir=prepared_cache, journals=tmp_path)}
    assert checks["torch"].status == OK and "torch 2." in checks["torch"].detail
    assert checks["gpu"].status == WARN and "CPU" in checks["gpu"].detail and checks["gpu"].fix
    assert checks["bf16"].status == OK
    assert checks["telemetry"].status == INFO and "CPU and RAM" in checks["telemetry"].detail
    assert checks["torch.compile"].status == OK and checks["torch.compile"].seconds > 0
    assert "math" in checks["attention"].detail
    assert checks["data"].status == OK and "profile small" in checks["data"].detail
    assert "ANTHROPIC_API_KEY" in checks["api keys"].detail
    assert "doctor-secret" not in json.dumps([c.as_dict() for c in checks.values()])


def test_doctor_cli_reports_missing_data_with_the_fix(tmp_path):
    result = cli("doctor", "--json", "--no-compile", "--cache", str(tmp_path / "empty"), "--journals",
                 str(tmp_path))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    data_check = next(c for c in data["checks"] if c["name"] == "data")
    assert data_check["status"] == FAIL and "autoresearch prepare" in data_check["fix"]
    assert not data["ok"]
