"""The OS sandbox a trial (and the evaluator) runs in: Linux namespaces through bubblewrap.

The agent's train.py is untrusted code. In the sandbox it:

* has its own PID namespace: it neither sees nor signals the supervisor, and a fresh /proc shows only its own
  processes (no /proc/<parent>/environ to read);
* has no network (an empty network namespace; loopback only);
* sees a read-only system (/usr, the Python it runs on, a few files of /etc) and only the folders it needs:
  the trainer's code, read-only; a training view of the data cache, read-only and without the validation
  tokens; an exchange folder for its metrics and the model it hands over; the run's compile cache; a
  private /tmp. The run folder, the ledger, the workspace's .git, the validation data and the home folder
  are not there at all;
* dies with the supervisor (``--die-with-parent``), and everything it starts dies with it: when the
  namespace's first process exits, the kernel kills the rest, double-forked or ``setsid`` or not;
* gets the GPU device nodes (NVIDIA, ROCm) and a read-only /sys where the machine has GPUs.

Where bubblewrap cannot run (macOS; a container without user namespaces) the run proceeds unsandboxed only
when the person allows it (``--sandbox auto`` says so at the start, ``--sandbox off`` asks for it), and
every trial is marked unsandboxed wherever it is shown.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.core.errors import UserError

# Files of /etc a Python training process reads: the dynamic loader's cache, names, time zone, locale.
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "passwd",
              "group", "nsswitch.conf", "hosts", "os-release", "locale.alias", "mime.types")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt/rocm")
# GPU device nodes: NVIDIA (CUDA) and AMD (ROCm: kfd for compute, dri render nodes).
_GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/kfd", "/dev/dri")


@dataclass(frozen=True)
class Mount:
    """One host path made visible inside the sandbox."""

    host: Path
    inside: str
    writable: bool = False
    device: bool = False
    optional: bool = False  # skipped when the host path does not exist


@dataclass(frozen=True)
class SandboxPlan:
    """What one sandboxed process sees, and where: the mounts, its working folder, the bwrap binary."""

    bwrap: str
    mounts: tuple[Mount, ...]
    cwd: str
    env_paths: dict[str, str] = field(default_factory=dict)  # variable -> path inside, set by the plan

    def inside(self, host: Path | str) -> str | None:
        """Where a host path is seen inside the sandbox (the longest mount that holds it), or None."""
        path = Path(os.path.abspath(host))
        best: Mount | None = None
        for mount in self.mounts:
            root = Path(os.path.abspath(mount.host))
            if (path == root or root in path.parents) and (best is None or len(str(root)) > len(str(best.host))):
                best = Mount(root, mount.inside, mount.writable, mount.device)
        if best is None:
            return None
        rest = path.relative_to(best.host)
        return best.inside if str(rest) == "." else f"{best.inside.rstrip('/')}/{rest.as_posix()}"

    def wrap(self, command: list[str]) -> list[str]:
        """The bwrap command line that runs ``command`` in this sandbox."""
        # --cap-drop ALL: run as root (CI, most GPU containers), bwrap would otherwise keep every capability for
        # the sandboxed process, which could then remount the read-only binds writable or trace its neighbours.
        argv = [self.bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--proc", "/proc",
                "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/tmp/home"]
        for mount in self.mounts:
            if mount.optional and not os.path.lexists(mount.host):
                continue
            flag = "--dev-bind" if mount.device else "--bind" if mount.writable else "--ro-bind"
            argv += [flag, str(mount.host), mount.inside]
        # The sandbox's own root (a tmpfs holding the mount points) read-only too: nothing to write but /tmp
        # and the writable mounts.
        argv += ["--remount-ro", "/", "--chdir", self.cwd, "--"]
        return argv + list(command)


def seen_from(sandbox: SandboxPlan | None, host: Path | str) -> str:
    """A host path as a process in ``sandbox`` sees it (unchanged without a sandbox); ValueError if it cannot."""
    if sandbox is None:
        return str(host)
    inside = sandbox.inside(host)
    if inside is None:
        raise ValueError(f"{host} is not visible in the sandbox")
    return inside


# ---------------------------------------------------------------------------------------------
# What every sandboxed process needs
# ---------------------------------------------------------------------------------------------


def gpu_device_paths() -> list[str]:
    """The machine's GPU device nodes (empty on a CPU-only machine)."""
    found: list[str] = []
    for pattern in _GPU_DEVICE_PATTERNS:
        found.extend(p for p in sorted(glob.glob(pattern)) if p not in found)
    return found


def _python_dirs() -> list[Path]:
    """The interpreter and its libraries: the base installation, the virtual environment, extra paths."""
    dirs = [Path(sys.base_prefix), Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent.parent]
    for entry in sys.path:
        if entry and os.path.isdir(entry) and "site-packages" in entry:
            dirs.append(Path(entry))
    unique: list[Path] = []
    for d in sorted(set(dirs), key=lambda p: len(str(p))):  # parents first: a folder inside one is covered
        if not any(d == u or u in d.parents for u in unique):
            unique.append(d)
    return unique


def system_mounts() -> list[Mount]:
    """Read-only system folders, the Python installation and, where there are GPUs, their devices and /sys."""
    mounts = [Mount(Path(d), d, optional=True) for d in _SYSTEM_DIRS if os.path.lexists(d)]
    mounts += [Mount(Path("/etc") / name, f"/etc/{name}", optional=True) for name in _ETC_FILES]
    mounts += [Mount(d, str(d)) for d in _python_dirs() if not str(d).startswith(_SYSTEM_DIRS[:1])]
    gpus = gpu_device_paths()
    mounts += [Mount(Path(dev), dev, device=True) for dev in gpus]
    if gpus:
        mounts.append(Mount(Path("/sys"), "/sys", optional=True))  # drivers read topology and PCI data there
    else:
        mounts.append(Mount(Path("/sys/devices/system/cpu"), "/sys/devices/system/cpu", optional=True))
    return mounts


def plan(bwrap: str, mounts: Iterable[Mount], cwd: str, env_paths: dict[str, str] | None = None) -> SandboxPlan:
    return SandboxPlan(bwrap, tuple([*system_mounts(), *mounts]), cwd, dict(env_paths or {}))


# ---------------------------------------------------------------------------------------------
# Can this machine sandbox?
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxChoice:
    """The sandbox a run uses: bwrap (with its path), or none, and why not."""

    bwrap: str | None
    why_not: str = ""

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    @property
    def label(self) -> str:
        return "bwrap" if self.active else f"none: {self.why_not}"


@functools.lru_cache(maxsize=4)
def probe(bwrap: str | None = None) -> SandboxChoice:
    """Whether bubblewrap can build a sandbox here (it is installed and user namespaces work)."""
    if sys.platform != "linux":
        return SandboxChoice(None, f"no sandbox on {sys.platform}: bubblewrap needs Linux namespaces")
    path = bwrap or shutil.which("bwrap")
    if path is None:
        return SandboxChoice(None, "bubblewrap (bwrap) is not installed: apt install bubblewrap, or dnf install bubblewrap")
    test = plan(path, [], "/").wrap(["/bin/sh", "-c", "exit 0"]) if os.path.exists("/bin/sh") else [path, "--version"]
    try:
        result = subprocess.run(test, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxChoice(None, f"bubblewrap could not start: {exc}")
    if result.returncode != 0:
        detail = (result.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return SandboxChoice(None, f"bubblewrap cannot create namespaces here ({detail[:200]}); "
                                   "user namespaces may be disabled (a container, or kernel.unprivileged_userns_clone=0)")
    return SandboxChoice(path)


class SandboxUnavailableError(UserError):
    """--sandbox bwrap was asked for and this machine cannot provide it."""


def choose(setting: str) -> SandboxChoice:
    """The sandbox for a run: ``auto`` takes bwrap when it works, else none (said loudly at the start);
    ``bwrap`` requires it; ``off`` runs unsandboxed on purpose."""
    if setting == "off":
        return SandboxChoice(None, "turned off with --sandbox off")
    choice = probe(os.environ.get("AUTORESEARCH_BWRAP") or None)
    if setting == "bwrap" and not choice.active:
        raise SandboxUnavailableError(f"--sandbox bwrap: {choice.why_not}")
    return choice


# ---------------------------------------------------------------------------------------------
# The GPU check's probe (benchmarks/gpu_check.py, step 5)
# ---------------------------------------------------------------------------------------------

_SELF_CHECK_SCRIPT = r"""
import contextlib, io, json, sys, time
import torch
sys.path.insert(0, "/trainer")
import prepare

out = {"cuda": torch.cuda.is_available(), "pid": __import__("os").getpid(), "proc": len(__import__("os").listdir("/proc"))}
dev = "cuda" if out["cuda"] else "cpu"
if out["cuda"]:
    out["device_name"] = torch.cuda.get_device_name(0)
    x = torch.randn(2048, 2048, device=dev)
    out["matmul_ok"] = bool(torch.isfinite(x @ x).all())


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(64, 64), torch.nn.Linear(64, 64)

    def forward(self, idx):
        x = self.emb(idx)[:, None]
        y = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)[:, 0]
        return self.head(y).float()


model = Tiny().to(dev).eval()
idx = torch.randint(0, 64, (8, 128), device=dev)
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev == "cuda" else contextlib.nullcontext()
started = time.time()
with torch.no_grad(), autocast:
    program = torch.export.export(prepare._Logits(model), (idx,), strict=False)
buffer = io.BytesIO()
torch.export.save(program, buffer)
out["export_s"] = round(time.time() - started, 3)
loaded = prepare._load_without_pickle(buffer.getvalue()).module()
with torch.no_grad():
    a, b = loaded(idx), loaded(idx)
    changed = idx.clone()
    changed[:, 64:] = torch.randint(0, 64, (8, 64), device=dev)
    c = loaded(changed)
out["repeat_deviation"] = float((a - b).abs().max())
out["causal_deviation"] = float((a[:, :64] - c[:, :64]).abs().max())
out["graph_ops"] = sorted({str(n.target) for n in program.graph.nodes if n.op == "call_function"})[:30]
print(json.dumps(out))
"""


def self_check(device: str = "cuda") -> dict:
    """Can a sandboxed process here use the GPU, and does the hand-over hold on it (export under bf16 autocast,
    a load with pickle closed, the same logits twice, none moved by later tokens)? For benchmarks/gpu_check.py.

    ``AUTORESEARCH_BWRAP`` may name a bwrap binary (the GPU machine has no package registry: one is carried)."""
    choice = probe(os.environ.get("AUTORESEARCH_BWRAP") or None)
    result: dict = {"sandbox": choice.label, "gpu_devices": gpu_device_paths(), "requested_device": device}
    if not choice.active:
        return result
    trainer = Path(__file__).resolve().parents[2] / "trainer"
    assert choice.bwrap is not None
    argv = plan(choice.bwrap, [Mount(trainer, "/trainer")], "/tmp").wrap([sys.executable, "-c", _SELF_CHECK_SCRIPT])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {**result, "error": "the sandboxed check took longer than 300 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {**result, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {**result, **json.loads(lines[-1])}
