"""`autoresearch doctor`: will a night on this machine work, and work fast? Checked before it is wasted.

On a fixed budget, speed is quality: a run without torch.compile, bf16 or a fast attention kernel loses
to itself. Each check says what it found and, when something is wrong, what to do about it. Nothing here is
assumed from the device name: compile, bf16 and each attention kernel are actually run.

torch is imported inside the checks, never at module level (the supervisor does not hold it all night).
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supervisor.core.config import PROJECT_ROOT, absolute_path
from supervisor.core.secrets import credential

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
MIN_FREE_GB = 5.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str
    fix: str = ""
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Doctor:
    def __init__(self, device: str = "auto", cache_dir: Path | None = None, journals: Path | None = None,
                 compile_check: bool = True, autotune: bool = False) -> None:
        self.want = device
        self.cache_dir = cache_dir
        self.journals = journals
        self.compile_check = compile_check
        self.autotune = autotune
        self.torch: Any = None
        self.device = "cpu"
        self.device_name = "cpu"

    def run(self) -> list[Check]:
        checks: list[Check] = []
        steps: list[Callable[[], list[Check]]] = [
            self.check_python, self.check_torch, self.check_device, self.check_telemetry, self.check_bf16,
            self.check_compile, self.check_attention, self.check_peak_flops, self.check_cache, self.check_disk,
            self.check_git, self.check_keys,
        ]
        for step in steps:
            try:
                checks.extend(step())
            except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
                checks.append(Check(step.__name__.removeprefix("check_"), FAIL, _first_line(exc)))
            if self.torch is None and step == self.check_torch:
                break
        return checks

    # ---- the checks ---------------------------------------------------------------------------------------
    def check_python(self) -> list[Check]:
        v = sys.version_info
        if v < (3, 11):
            return [Check("python", FAIL, f"Python {v.major}.{v.minor}", "use Python 3.11 or newer")]
        return [Check("python", OK, f"Python {v.major}.{v.minor}.{v.micro}")]

    def check_torch(self) -> list[Check]:
        try:
            self.torch = importlib.import_module("torch")
        except ImportError as exc:
            return [Check("torch", FAIL, _first_line(exc), "pip install torch (see the README for the GPU build)")]
        t = self.torch
        build = f"CUDA {t.version.cuda}" if t.version.cuda else f"ROCm {t.version.hip}" if getattr(
            t.version, "hip", None) else "CPU build"
        return [Check("torch", OK, f"torch {t.__version__} ({build})")]

    def check_device(self) -> list[Check]:
        t = self.torch
        if self.want in ("auto", "cuda") and t.cuda.is_available():
            self.device = "cuda"
            self.device_name = t.cuda.get_device_name(0)
            props = t.cuda.get_device_properties(0)
            count = t.cuda.device_count()
            # A ROCm build of torch answers through torch.cuda too; say which stack it is.
            stack = f" via ROCm {t.version.hip}" if getattr(t.version, "hip", None) else ""
            detail = f"{self.device_name}, {props.total_memory / 2**30:.0f} GiB{stack}" + (
                f" (and {count - 1} more; trials use the first)" if count > 1 else "")
            return [Check("gpu", OK, detail)]
        if self.want == "cuda":
            return [Check("gpu", FAIL, "torch sees no CUDA/ROCm GPU",
                          "check `nvidia-smi`, and that torch is a CUDA build (torch.version.cuda is set)")]
        if self.want in ("auto", "mps") and t.backends.mps.is_available():
            self.device, self.device_name = "mps", "Apple MPS"
            return [Check("gpu", OK, "Apple MPS (no torch.compile, no MFU table)")]
        build_hint = "" if t.version.cuda else " (this torch is a CPU build)"
        return [Check("gpu", WARN, f"no GPU: trials run on the CPU with the small profile{build_hint}",
                      "for a GPU, install torch's CUDA or ROCm build (README: Installing for a GPU)")]

    def check_telemetry(self) -> list[Check]:
        if self.device != "cuda":
            return [Check("telemetry", INFO, "no GPU in use: the UI shows CPU and RAM instead")]
        if getattr(self.torch.version, "hip", None):
            return self._check_amd_telemetry()
        try:
            pynvml = importlib.import_module("pynvml")
            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            return [Check("telemetry", OK, f"NVML works (driver {driver})")]
        except ImportError:
            return [Check("telemetry", WARN, "nvidia-ml-py is not installed: no GPU utilisation, VRAM or "
                                             "temperature on screen", "pip install -e '.[gpu]'")]
        except Exception as exc:  # noqa: BLE001
            return [Check("telemetry", WARN, f"NVML failed: {_first_line(exc)}", "ROCm cards have no NVML")]

    def _check_amd_telemetry(self) -> list[Check]:
        from supervisor.trial.platform_info import amd_telemetry_status

        works, detail = amd_telemetry_status()
        if works:
            return [Check("telemetry", OK, detail)]
        # Trials run as well without it; only the GPU pane is poorer. Hence info, not a warning.
        return [Check("telemetry", INFO, f"{detail}: the UI shows CPU and RAM instead of GPU utilisation, "
                                         "VRAM and temperature",
                      "pip install -e '.[rocm]' (needs ROCm's libamd_smi.so: apt install amd-smi-lib)")]

    def check_bf16(self) -> list[Check]:
        t = self.torch
        start = time.perf_counter()
        a = t.randn(256, 256, device=self.device)
        b = t.randn(256, 256, device=self.device)
        exact = a @ b
        got = (a.bfloat16() @ b.bfloat16()).float()
        err = ((got - exact).abs().max() / exact.abs().max()).item()
        seconds = time.perf_counter() - start
        if err > 0.05:
            return [Check("bf16", FAIL, f"bf16 matmul is wrong (relative error {err:.3f})",
                          "update the driver / torch build", seconds)]
        if self.device == "cuda" and not t.cuda.is_bf16_supported():
            return [Check("bf16", WARN, "bf16 runs but is emulated on this GPU (slow)",
                          "fp16 autocast with a grad scaler would be faster on this card", seconds)]
        note = "" if self.device == "cuda" else " (CPU trials train in fp32)"
        return [Check("bf16", OK, f"bf16 matmul works, relative error {err:.4f}{note}", seconds=seconds)]

    def _compile_once(self, mode: str | None) -> float:
        t = self.torch
        t._dynamo.reset()

        def block(x, w1, w2):
            return (t.relu(x @ w1).square() @ w2).sum()

        compiled = t.compile(block, mode=mode) if mode else t.compile(block)
        x = t.randn(64, 128, device=self.device)
        w1 = t.randn(128, 512, device=self.device, requires_grad=True)
        w2 = t.randn(512, 128, device=self.device, requires_grad=True)
        start = time.perf_counter()
        compiled(x, w1, w2).backward()
        if self.device == "cuda":
            t.cuda.synchronize()
        return time.perf_counter() - start

    def check_compile(self) -> list[Check]:
        if not self.compile_check:
            return [Check("torch.compile", INFO, "not checked (--no-compile)")]
        if self.device == "mps":
            return [Check("torch.compile", INFO, "not used on MPS")]
        out = []
        if self.device == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
            return [Check("torch.compile", FAIL, "no C compiler: inductor cannot build CPU kernels",
                          "install gcc (apt-get install build-essential), or leave COMPILE off on the CPU")]
        try:
            seconds = self._compile_once(None)
            use = "on by default" if self.device == "cuda" else "off by default on the CPU (COMPILE = True to try)"
            out.append(Check("torch.compile", OK, f"works: first call {seconds:.1f}s; {use}", seconds=seconds))
        except Exception as exc:  # noqa: BLE001
            fix = ("install triton for this torch build (pip install triton)" if self.device == "cuda"
                   else "trials fall back to eager mode; install gcc/python3-dev for inductor")
            out.append(Check("torch.compile", FAIL, _first_line(exc), fix))
            return out
        if self.autotune:
            try:
                seconds = self._compile_once("max-autotune")
                out.append(Check("max-autotune", OK, f"works: first call {seconds:.1f}s", seconds=seconds))
            except Exception as exc:  # noqa: BLE001
                out.append(Check("max-autotune", WARN, _first_line(exc), "stay with the default compile mode"))
        return out

    def check_attention(self) -> list[Check]:
        t = self.torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        dtype = t.bfloat16 if self.device == "cuda" else t.float32
        q = t.randn(2, 4, 128, 64, device=self.device, dtype=dtype)
        working = []
        for label, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)),
                               ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
            if backend is None:
                continue
            try:
                with sdpa_kernel([backend]):
                    sdpa(q, q, q, is_causal=True)
                working.append(label)
            except Exception:  # noqa: BLE001 - not available on this device: that is the answer
                continue
        flex = "no"
        try:
            from torch.nn.attention.flex_attention import flex_attention

            with warnings.catch_warnings():  # the unfused fallback warns; running at all is the question
                warnings.simplefilter("ignore")
                flex_attention(q, q, q)
            flex = "yes"
        except Exception:  # noqa: BLE001
            pass
        fast = [w for w in working if w != "math"]
        detail = f"SDPA kernels that run here: {', '.join(working) or 'none'}; FlexAttention: {flex}"
        if self.device == "cuda" and not fast:
            return [Check("attention", WARN, detail, "only the slow math kernel runs: check the torch build")]
        return [Check("attention", OK if fast else INFO, detail)]

    def check_peak_flops(self) -> list[Check]:
        if self.device != "cuda":
            return [Check("mfu", INFO, "MFU is reported only on CUDA/ROCm GPUs with a known peak")]
        sys.path.insert(0, str(PROJECT_ROOT / "trainer"))
        try:
            from prepare import peak_flops  # the harness's table, the one every trial uses
        finally:
            sys.path.pop(0)
        peak = peak_flops(self.device_name)
        if peak is None:
            return [Check("mfu", WARN, f"no peak bf16 FLOP/s known for {self.device_name}: MFU will read 'unknown'",
                          "add the card's dense bf16 peak to PEAK_BF16_FLOPS in trainer/prepare.py")]
        return [Check("mfu", OK, f"peak {peak / 1e12:.0f} TFLOP/s bf16 for {self.device_name}")]

    def check_cache(self) -> list[Check]:
        import json

        from supervisor.core.config import default_cache_dir

        cache = Path(self.cache_dir or default_cache_dir())
        manifest = cache / "manifest.json"
        if not manifest.is_file():
            return [Check("data", FAIL, f"no prepared data in {cache}",
                          "autoresearch prepare (the embedded corpus needs no network)")]
        m = json.loads(manifest.read_text())
        profile = m.get("profile", "?")
        source = m.get("source", "?")
        if isinstance(source, dict):
            source = source.get("kind", "?")
        detail = f"{cache}: profile {profile}, vocab {m.get('vocab_size', '?')}, source {source}"
        if profile == "full" and self.device == "cpu":
            return [Check("data", WARN, detail, "the full profile is far too big for a CPU: "
                                                "autoresearch prepare --profile small")]
        if profile == "small" and self.device == "cuda":
            return [Check("data", INFO, detail + " (a large GPU can take --profile full)")]
        return [Check("data", OK, detail)]

    def check_disk(self) -> list[Check]:
        from supervisor.core.config import default_cache_dir, default_journals_root

        out = []
        for label, path in (("journals", Path(self.journals or default_journals_root())),
                            ("cache", Path(self.cache_dir or default_cache_dir()))):
            probe = path
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            free = shutil.disk_usage(probe).free / 2**30
            status = OK if free >= MIN_FREE_GB else WARN
            out.append(Check(f"disk ({label})", status, f"{free:.1f} GiB free at {probe}",
                             "" if status == OK else "a night writes logs and checkpoints: free some space"))
        return out

    def check_git(self) -> list[Check]:
        git = shutil.which("git")
        if not git:
            return [Check("git", FAIL, "git is not installed", "install git: every trial is a commit")]
        return [Check("git", OK, git)]

    def check_keys(self) -> list[Check]:
        # Only whether a key is set; its value is never read out, printed or stored.
        # The store, then the environment: an entry point that moved them out keeps them in the store.
        names = [n for n in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY") if credential(n)]
        detail = ("set: " + ", ".join(names)) if names else "none set: --agent offline works without one"
        return [Check("api keys", INFO, detail)]


def run_doctor(**kwargs: Any) -> list[Check]:
    return Doctor(**kwargs).run()


# ---- the command ----------------------------------------------------------------------------------------
def _cmd_doctor(args: Any) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    checks = run_doctor(device=args.device, cache_dir=Path(args.cache) if args.cache else None,
                        journals=Path(args.journals) if args.journals else None,
                        compile_check=not args.no_compile, autotune=args.autotune)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
        return 1 if failed else 0
    colors = {OK: "green", WARN: "yellow", FAIL: "red", INFO: "blue"}
    table = Table(title="autoresearch doctor", show_lines=False)
    for column in ("check", "", "found", "what to do"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, f"[{colors[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console()
    console.print(table)
    console.print("[red]some checks failed[/]" if failed else "[green]ready for a night[/]")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check this machine before a night: GPU, bf16, compile, attention, data")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--cache", type=absolute_path, help="prepared data cache (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")
    p.add_argument("--journals", type=absolute_path, help="journals folder (for the disk-space check)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile check (it takes seconds)")
    p.add_argument("--autotune", action="store_true", help="also time torch.compile(mode='max-autotune')")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_doctor)
