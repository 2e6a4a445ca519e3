"""trainer/train.py: the model and optimizer pieces in-process, and real trials as subprocesses on the CPU."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TRAINER_DIR = Path(__file__).resolve().parent.parent / "trainer"
TRAIN = TRAINER_DIR / "train.py"
SUMMARY_KEYS = ["training_seconds", "total_seconds", "compile_seconds", "handover_seconds", "peak_vram_mb",
                "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth", "device", "device_name",
                "compiled", "tokens_per_s"]
METRIC_KEYS = {"step", "elapsed", "tokens", "loss", "lr", "tokens_per_s", "mfu", "vram_mb"}


def summary(stdout: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line."""
    lines = stdout.splitlines()
    assert "---" in lines, stdout[-2000:]
    start = len(lines) - 1 - lines[::-1].index("---")
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines[start + 1:] if ":" in line)}


def run_trial(env: dict, budget: float, script: Path = TRAIN, cwd: Path | None = None, **extra) -> subprocess.CompletedProcess:
    env = dict(env, AUTORESEARCH_TIME_BUDGET=str(budget), **extra)
    return subprocess.run([sys.executable, str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def train_module():
    """train.py imported as a module (its main() does not run on import)."""
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location("autoresearch_train_under_test", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path[:] = saved
    return module


# ---------------------------------------------------------------------------------------------
# the file format the agent and the search tool rely on
# ---------------------------------------------------------------------------------------------


def test_hyperparameters_are_one_line_literals():
    source = TRAIN.read_text()
    section = source[source.index("# Hyperparameters."):source.index("# Model: GPT")]
    names = []
    for line in section.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*) = (.+?)(  # .+)?", line)
        assert m, f"not a one-line hyperparameter: {line!r}"
        name, value, comment = m.groups()
        names.append(name)
        profile = re.fullmatch(r"(\{.*\})\[PROFILE\]", value)
        if profile:
            table = ast.literal_eval(profile.group(1))
            assert set(table) == {"full", "small"}, line
            assert all(type(v) in (int, float, str, bool) for v in table.values()), line
        else:
            assert type(ast.literal_eval(value)) in (int, float, str, bool), line
            assert comment, f"a literal hyperparameter needs a comment: {line!r}"
    for expected in ["DEPTH", "MODEL_DIM", "TOTAL_BATCH_TOKENS", "DEVICE_BATCH_SIZE", "MATRIX_LR", "WINDOW_PATTERN",
                     "WARMDOWN_FRACTION", "FINAL_LR_FRACTION", "COMPILE"]:
        assert expected in names


# ---------------------------------------------------------------------------------------------
# model and optimizer pieces, in-process
# ---------------------------------------------------------------------------------------------


def test_model_contract(train_module):
    tm = train_module
    torch.manual_seed(0)
    V, T = 300, 32
    model = tm.GPT(V, 64, 3, 32, 4, tm.layer_windows("SL", 3, 8), T)
    model.init_weights()
    idx = torch.randint(0, V, (2, T))
    targets = torch.randint(0, V, (2, T))
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (2, T) and per_token.dtype == torch.float32
    mean = model(idx, targets)
    assert mean.shape == () and torch.allclose(mean, per_token.mean())
    assert abs(mean.item() - math.log(V)) < 0.05  # near-uniform predictions at initialization
    assert model(idx).shape == (2, T, V)
    # zero-init output projections: every block starts as the identity on the residual stream
    assert all(not b.attn.c_proj.weight.detach().any() and not b.mlp.c_proj.weight.detach().any()
               for b in model.blocks)
    assert model.windows == [8, None, None]  # pattern repeated; the last layer is always full


def test_sliding_window_and_causality(train_module):
    tm = train_module
    torch.manual_seed(0)
    model = tm.GPT(100, 32, 1, 16, 2, [4], 40)
    model.init_weights()
    with torch.no_grad():
        model.blocks[0].attn.c_proj.weight.normal_(0, 0.2)
    x = torch.randint(0, 100, (1, 40))
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % 100
    changed = (model(x) - model(x2)).abs().amax(-1)[0] > 1e-6
    # with one layer of window 4, position 10 is seen by positions 10..13 only
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13]


def test_bf16_autocast_forward_backward(train_module):
    """The dtype path of CUDA's bf16 autocast, exercised on the CPU."""
    tm = train_module
    model = tm.GPT(200, 64, 2, 32, 4, tm.layer_windows("SL", 2, 8), 32)
    model.init_weights()
    optimizers = tm.build_optimizers(model, torch.device("cpu"))
    idx = torch.randint(0, 200, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            loss = model(idx, idx)
            loss.backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad()
        assert model(idx, idx, reduction="none").dtype == torch.float32
    assert math.isfinite(loss.item())


def test_newton_schulz_orthogonalizes(train_module):
    g = torch.randn(3, 64, 160)
    s = torch.linalg.svdvals(train_module.newton_schulz(g, 5))
    assert s.min() > 0.5 and s.max() < 1.5  # all singular values pulled near 1
    tall = torch.linalg.svdvals(train_module.newton_schulz(torch.randn(160, 64), 5))
    assert tall.min() > 0.5 and tall.max() < 1.5


def test_schedule_follows_elapsed_time(train_module, monkeypatch):
    tm = train_module
    monkeypatch.setattr(tm, "WARMUP_FRACTION", 0.1)
    monkeypatch.setattr(tm, "WARMDOWN_FRACTION", 0.5)
    monkeypatch.setattr(tm, "FINAL_LR_FRACTION", 0.1)
    assert tm.lr_multiplier(0.0) == 0.0 and tm.lr_multiplier(0.05) == pytest.approx(0.5)
    assert tm.lr_multiplier(0.3) == 1.0 and tm.lr_multiplier(0.5) == 1.0
    assert tm.lr_multiplier(0.75) == pytest.approx(0.55) and tm.lr_multiplier(1.0) == pytest.approx(0.1)


def test_peak_flops_table(train_module):
    peak = train_module.peak_flops
    assert peak("NVIDIA H100 80GB HBM3") == 989e12
    assert peak("NVIDIA H100 PCIe") == 756e12
    assert peak("NVIDIA H200") == 989e12
    assert peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak("NVIDIA A10G") == 70e12
    assert peak("NVIDIA L4") == 121e12 and peak("NVIDIA L40S") == 362e12
    assert peak("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak("AMD Instinct MI300X") == 1307e12
    assert peak("NVIDIA B200") == 2250e12
    assert peak("NVIDIA GeForce GTX 1080") is None and peak("Tesla T4") is None


def test_flops_per_token_formula(train_module):
    tm = train_module
    model = tm.GPT(1000, 64, 2, 32, 4, [None, None], 128)
    n_matmul = 2 * (4 * 64 * 64 + 2 * 4 * 64 * 64) + 64 * 1000
    assert model.flops_per_token(128) == 6 * n_matmul + 12 * 2 * 2 * 32 * 128


# ---------------------------------------------------------------------------------------------
# real trials (subprocesses on the CPU)
# ---------------------------------------------------------------------------------------------


def test_bad_time_budget_is_a_clear_error(trainer_env, tmp_path):
    proc = run_trial(trainer_env, "ten", cwd=tmp_path)
    assert proc.returncode == 1
    assert "FAIL: AUTORESEARCH_TIME_BUDGET must be a number of seconds >= 0, got 'ten'" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_cache_is_a_clear_error(trainer_env, tmp_path):
    proc = run_trial(trainer_env, 5, cwd=tmp_path, AUTORESEARCH_CACHE=str(tmp_path / "empty"))
    assert proc.returncode == 1
    assert "FAIL: no prepared data" in proc.stdout and "run `autoresearch prepare` first" in proc.stdout
    assert "Traceback" not in proc.stderr


def training_view(cache: Path, dest: Path) -> Path:
    """The cache as a sandboxed trial sees it: no validation tokens."""
    from trainer import prepare

    dest.mkdir()
    manifest = prepare.load_manifest(cache)
    for name in ("manifest.json", manifest["train_tokens"], manifest["tokenizer"], manifest["token_bytes"]):
        shutil.copy2(cache / name, dest / name)
    return dest


def evaluation_inputs(cache: Path) -> tuple[dict, bytes, bytes]:
    """What the supervisor sends its evaluator: the manifest and the bytes of the two evaluation files."""
    manifest = json.loads((cache / "manifest.json").read_text())
    return manifest, (cache / manifest["val_tokens"]).read_bytes(), (cache / manifest["token_bytes"]).read_bytes()


def serve_evaluation(env: dict, model: Path, record: Path, cache: Path, expected: dict | None) -> dict:
    """The supervisor's evaluator, as it runs it: `python prepare.py --serve-evaluation`, one job on stdin
    (the job line, then the validation tokens and the byte table), in an environment without the cache."""
    manifest, val, table = evaluation_inputs(cache)
    job = {"model": str(model), "record": str(record), "expected": expected, "device": "cpu", "manifest": manifest,
           "val_size": len(val), "token_bytes_size": len(table)}
    env = {k: v for k, v in env.items() if k != "AUTORESEARCH_CACHE"}
    proc = subprocess.run([sys.executable, "-E", "-s", "-B", str(TRAINER_DIR / "prepare.py"), "--serve-evaluation"],
                          env=env, input=(json.dumps(job) + "\n").encode() + val + table, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(record.read_text())


def test_trial_learns_streams_metrics_hands_over_and_respects_the_budget(trainer_env, tmp_path):
    from trainer import prepare

    cache = Path(trainer_env["AUTORESEARCH_CACHE"])
    manifest = prepare.load_manifest(cache)
    expected = {name: manifest["files"][name]["sha256"] for name in (manifest["val_tokens"], manifest["token_bytes"])}

    # the untrained model: a budget of 0 hands over the freshly initialised weights; a trial trains on a
    # training view of the cache, without the validation tokens
    view = training_view(cache, tmp_path / "view")
    untrained_model = tmp_path / "untrained.pt2"
    untrained = run_trial(trainer_env, 0, cwd=tmp_path, AUTORESEARCH_CACHE=str(view),
                          AUTORESEARCH_MODEL_OUT=str(untrained_model))
    assert untrained.returncode == 0, untrained.stderr[-2000:]
    s0 = summary(untrained.stdout)
    assert s0["num_steps"] == "0" and s0["training_seconds"] == "0.0"
    assert "val_bpb" not in s0 and float(s0["handover_seconds"]) >= 0
    untrained_bpb = prepare.evaluate_handed_over(untrained_model, "cpu", expected, *evaluation_inputs(cache))["val_bpb"]
    assert 2.5 < untrained_bpb < 5  # about log2(vocab) bits per token over ~3.5 bytes per token

    budget = 10
    metrics, model = tmp_path / "metrics.jsonl", tmp_path / "model.pt2"
    env = dict(trainer_env, AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_METRICS=str(metrics),
               AUTORESEARCH_MODEL_OUT=str(model), AUTORESEARCH_SEED="7")
    proc = subprocess.Popen([sys.executable, str(TRAIN)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []  # complete metrics lines seen while the trial was running
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists():
            lines = [ln for ln in metrics.read_text().split("\n")[:-1]]
            for ln in lines:
                json.loads(ln)  # every complete line parses, even mid-run
            seen.append(len(lines))
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    growth = sorted(set(n for n in seen if n > 0))
    assert len(growth) >= 3, f"the metrics stream did not grow while the trial ran: {seen}"

    s = summary(stdout)
    assert set(SUMMARY_KEYS) <= set(s), s
    assert "val_bpb" not in s and not re.search(r"^val_bpb", stdout, flags=re.M)  # measured elsewhere, never printed
    # The budget is checked after each step, so it may overrun by one step (long on a loaded machine).
    elapsed = [json.loads(ln)["elapsed"] for ln in metrics.read_text().splitlines()]
    longest_step = max((b - a for a, b in zip(elapsed, elapsed[1:], strict=False)), default=0.0)
    assert budget <= float(s["training_seconds"]) <= budget + max(3.0, 1.5 * longest_step)
    assert float(s["total_seconds"]) >= float(s["training_seconds"]) + float(s["compile_seconds"])
    assert float(s["handover_seconds"]) >= 0
    assert s["device"] == "cpu" and s["compiled"] == "false"
    assert s["mfu_percent"] == "unknown" and s["peak_vram_mb"] == "unknown"
    assert int(s["depth"]) > 0 and float(s["num_params_M"]) > 0 and float(s["tokens_per_s"]) > 0

    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, int(s["num_steps"]) + 1))
    assert all(set(r) == METRIC_KEYS for r in rows)
    assert all(r["mfu"] is None and r["vram_mb"] is None for r in rows)
    elapsed = [r["elapsed"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] == 0.0  # the first step is warm-up, not budget
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert rows[-1]["lr"] < rows[0]["lr"]  # warmdown by elapsed time
    assert "device: cpu" in stderr and "compile: off (" in stderr

    # the supervisor's evaluator measures the handed-over model: it learned
    assert model.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    record = serve_evaluation(trainer_env, model, tmp_path / "eval.json", cache, expected)
    assert record["ok"] is True, record
    val_bpb = record["val_bpb"]
    assert math.isfinite(val_bpb) and val_bpb < untrained_bpb - 0.5, (untrained_bpb, val_bpb)
    assert record["rows_checked"] > 0 and record["causality_deviation"] <= prepare.CHECK_TOLERANCE
    assert record["tokens"] == manifest["eval_tokens"]


def test_nan_loss_fails_fast(trainer_env, trainer_copy, tmp_path):
    script = trainer_copy / "train.py"
    source = script.read_text()
    for name in ["MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR"]:
        source, n = re.subn(rf"^{name} = .*$", f"{name} = 1e30  # far too large", source, flags=re.M)
        assert n == 1
    script.write_text(source)
    metrics, model = tmp_path / "m.jsonl", tmp_path / "model.pt2"
    t0 = time.time()
    proc = run_trial(trainer_env, 60, script=script, cwd=tmp_path, AUTORESEARCH_METRICS=str(metrics),
                     AUTORESEARCH_MODEL_OUT=str(model))
    assert proc.returncode == 1
    assert re.search(r"^FAIL: loss is nan at step \d+$", proc.stdout, flags=re.M), proc.stdout[-1000:]
    assert "---" not in proc.stdout.splitlines()
    assert not model.exists()  # nothing handed over
    assert time.time() - t0 < 40  # stopped at once, not at the end of the 60 s budget


# ---------------------------------------------------------------------------------------------
# the benchmark scripts (the GPU one cannot run here: its CPU-free parts must be sane)
# ---------------------------------------------------------------------------------------------


def load_benchmark(name: str):
    bench_dir = TRAINER_DIR.parent / "benchmarks"
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", bench_dir / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def test_benchmark_helpers(train_module, capsys):
    common = load_benchmark("trainer_common")
    gpu = load_benchmark("trainer_gpu")
    load_benchmark("trainer_cpu")
    assert common.parse_summary("noise\n---\nval_bpb: 1.5\ndevice: cpu\n") == {"val_bpb": "1.5", "device": "cpu"}
    assert common.parse_summary("no summary") == {}
    edited = common.edit_constant(TRAIN.read_text(), "COMPILE", "True")
    assert re.search(r"^COMPILE = True  # ", edited, flags=re.M)
    with pytest.raises(ValueError):
        common.edit_constant("X = 1\n", "COMPILE", "True")
    for name in ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A10G", "NVIDIA L4", "AMD Instinct MI300X",
                 "NVIDIA GeForce RTX 3090", "Some Future GPU"]:
        assert gpu.datasheet_peak(name) == train_module.peak_flops(name)
    if not torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "needs a CUDA or ROCm GPU" in capsys.readouterr().err
