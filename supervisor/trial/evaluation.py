"""The trusted evaluation: the number that decides a keep comes from a process the agent's code cannot touch.

A trial ends by handing over its model: the harness exports ``forward(idx) -> logits`` with torch.export and
leaves the file in the trial's exchange folder (``AUTORESEARCH_MODEL_OUT``). :class:`HandOverWatch` takes the
first complete file that appears there, copies it where the trial cannot reach, and notes the time: that
time, on the supervisor's clock, is what the budget is checked against.

A separate, fresh process then computes val_bpb: the supervisor's pristine copy of the harness, started as
``python prepare.py --serve-evaluation`` while the trial trains (so its imports cost nothing on the critical
path), in its own sandbox with the validation data (which the trial never sees). It verifies the validation
tokens and byte table by sha256 in memory just before use, loads the exported program (refusing any operator
that is not PyTorch's own), computes the logits, the cross-entropy and the byte counts itself, and checks
causality, row independence and repeatability on random rows (trainer/prepare.py, section 5). No code the
agent wrote runs in that process: torch.export turned the model into data.

A keep's model is scored once more, on the audit split (:func:`score_audit`): validation documents that no
validation row reads, never used for a decision and never shown to the agent, so that the person can see whether
a night of keeps has overfitted the validation split. Same evaluator, same checks; only the tokens sent differ.

Why export rather than serving the agent's model from a second sandboxed process: the evaluator then owns
the whole computation, the checks see a pure function rather than a process that can tell probes apart
over time, and the logits never cross a process boundary (for the full profile they would be ~170 GB).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.trial.guards import file_sha256
from supervisor.trial.sandbox import SandboxPlan, seen_from

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt2"
RECORD_FILE = "eval.json"
# A handed-over model larger than this is refused rather than copied (the full profile's is ~0.1 GB).
MAX_MODEL_BYTES = 16 * 2**30
SPARSE_CHECK_BYTES = 64 * 2**20  # above this, a file with fewer blocks than half its size is refused
AUDIT_JOB_DIR = "audit"  # in a kept trial's folder: the audit scoring's job (its copy of the model, its record)
PREPARE_COMMAND = "autoresearch prepare"


@dataclass
class EvaluatorSpec:
    """How to start the evaluator for one trial and where its job lives.

    ``command`` runs the pristine harness's evaluator; ``job_dir`` (host) receives the supervisor's copy of the
    handed-over model and the evaluator's record; ``sandbox`` (or None where there is none) shows the evaluator
    the harness and ``job_dir``, nothing else. The validation tokens and byte table of ``cache_dir`` are sent
    over its stdin, so no file it can see holds them. ``expected`` is the sha256 of each evaluation input
    recorded when the run started; the evaluator checks the bytes against it.
    """

    command: list[str]
    env: dict[str, str]
    cwd: Path
    job_dir: Path
    expected: dict[str, str] | None
    cache_dir: Path
    device: str = "auto"
    sandbox: SandboxPlan | None = None
    timeout_s: float = 600.0
    split: str = "val"  # or "audit": the kept model's score on the audit split (never for a decision)

    @property
    def model_path(self) -> Path:
        return self.job_dir / MODEL_FILE

    @property
    def record_path(self) -> Path:
        return self.job_dir / RECORD_FILE

    def _inside(self, path: Path) -> str:
        return seen_from(self.sandbox, path)


class Evaluator:
    """One evaluator process: started ahead, given one job, then gone."""

    def __init__(self, spec: EvaluatorSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.error = ""

    def start(self) -> None:
        """Start the process now (its imports overlap the trial). Never raises: a failure is kept for later."""
        spec = self.spec
        spec.job_dir.mkdir(parents=True, exist_ok=True)
        for path in (spec.model_path, spec.record_path):
            path.unlink(missing_ok=True)
        argv = spec.sandbox.wrap(spec.command) if spec.sandbox is not None else list(spec.command)
        try:
            with open(spec.job_dir / "evaluator.log", "wb") as log_file:
                self.proc = subprocess.Popen(argv, cwd=spec.cwd, env=spec.env, stdin=subprocess.PIPE, stdout=log_file,
                                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            self.error = f"the evaluator could not start: {exc}"

    def evaluate(self, stop_requested=lambda: False) -> dict:
        """Send the job and wait for the record: {"ok": True, "val_bpb": ...} or {"ok": False, "error": ...}."""
        spec = self.spec
        if self.proc is None:
            return {"ok": False, "error": self.error or "the evaluator was not started"}
        try:
            manifest, val_data, table_data = _evaluation_inputs(spec.cache_dir, spec.split)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.close()
            return {"ok": False, "error": f"the cache's evaluation files could not be read: {exc}"}
        job = {"model": spec._inside(spec.model_path), "record": spec._inside(spec.record_path),
               "expected": spec.expected, "device": spec.device, "manifest": manifest,
               "val_size": len(val_data), "token_bytes_size": len(table_data)}
        # Written from a thread: an evaluator that stops reading must not block past the deadline below.
        writer = threading.Thread(target=self._send, args=((json.dumps(job) + "\n").encode(), val_data, table_data),
                                  daemon=True, name="evaluator-job")
        writer.start()
        deadline = time.monotonic() + spec.timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.close()
                return {"ok": False, "error": f"the evaluation took longer than {spec.timeout_s:g} s"}
            if stop_requested():
                self.close()
                return {"ok": False, "error": "stopped by the person"}
            time.sleep(0.05)
        return self._record()

    def _send(self, *parts: bytes) -> None:
        proc = self.proc
        try:
            assert proc is not None and proc.stdin is not None
            for part in parts:
                proc.stdin.write(part)
            proc.stdin.close()
        except (OSError, ValueError):
            pass  # it died (or was killed) first: its exit and log tell why

    def _record(self) -> dict:
        try:
            record = json.loads(self.spec.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("ok"), bool):
            return record
        tail = _tail(self.spec.job_dir / "evaluator.log")
        return {"ok": False, "error": f"the evaluator wrote no record (exit {self.proc.returncode if self.proc else None})"
                                      + (f": {tail}" if tail else "")}

    def close(self) -> None:
        """Kill the process if it still runs (a waiting or stuck evaluator); then nothing of it is left."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("evaluator %s did not exit after SIGKILL", proc.pid)
        # Only now: a writer thread blocked on a full pipe holds the stream's lock until the reader is gone.
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except (OSError, ValueError):
            pass


def _evaluation_inputs(cache_dir: Path, split: str = "val") -> tuple[dict, bytes, bytes]:
    """The manifest and the bytes of the validation tokens and the byte table, as the cache holds them now
    (the evaluator checks them against the run's fingerprint: an unsandboxed trial may have changed them).

    For the audit split, the manifest sent names the audit tokens as the ones to score (and how many): the
    evaluator then checks and scores them exactly as it does the validation tokens."""
    path = cache_dir / "manifest.json"
    if not path.exists():
        return {}, b"", b""  # no prepared cache (a stand-in harness needs none; the real one says what is wrong)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if split == "audit":
        manifest = audit_manifest(manifest)
    if not isinstance(manifest, dict) or "val_tokens" not in manifest or "token_bytes" not in manifest:
        return manifest if isinstance(manifest, dict) else {}, b"", b""  # the evaluator says what is missing
    names = (manifest["val_tokens"], manifest["token_bytes"])
    if not all(isinstance(n, str) and n and "/" not in n and n not in (".", "..") for n in names):
        raise ValueError("the manifest names its evaluation files oddly")
    return manifest, (cache_dir / names[0]).read_bytes(), (cache_dir / names[1]).read_bytes()


def audit_manifest(manifest: dict) -> dict:
    """The manifest as the evaluator gets it for an audit job: the audit tokens in the validation tokens' place.
    Raises ValueError when the cache has no audit split."""
    name, rows = (manifest.get("audit_tokens"), manifest.get("audit_eval_tokens")) if isinstance(manifest, dict) \
        else (None, None)
    if not isinstance(name, str) or not isinstance(rows, int) or rows <= 0:
        raise ValueError("the cache has no audit split")
    return {**manifest, "val_tokens": name, "eval_tokens": rows}


# ---- the audit split ----------------------------------------------------------------------------------------
@dataclass
class AuditScore:
    """A kept model's val_bpb on the audit split, or the note saying why it has none."""

    value: float | None
    note: str | None
    seconds: float = 0.0


def audit_unavailable(cache_dir: Path, expected: dict[str, str] | None) -> str | None:
    """Why this run's keeps cannot be scored on an audit split (a note for the ledger), or None when they can."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "the data cache has no readable manifest.json"
    if not isinstance(manifest, dict) or "audit_eval_tokens" not in manifest:
        return (f"the data cache was prepared before it had an audit split: `{PREPARE_COMMAND}` adds it (and "
                "changes no other file); runs started after that are audited")
    name = manifest.get("audit_tokens")
    if not isinstance(name, str) or not name:
        return ("the corpus has no validation text left over for an audit split (evaluation scores all of it): "
                f"`{PREPARE_COMMAND}` with more text (a larger --max-mb, or more shards) makes one")
    if not expected or name not in expected:
        return (f"this run began before the cache had its audit split ({name} is not among the files it "
                "fingerprinted then): runs started now are audited")
    return None


def kept_model(trial_dir: Path, artifact_sha256: str | None) -> Path | None:
    """The model the evaluator scored for a trial's recorded val_bpb, as the supervisor kept it: the trial's
    own folder, or a sub-folder of it (a drifted first run's second run decides); by its sha256 when known."""
    candidates = [trial_dir / MODEL_FILE, *sorted(p for p in trial_dir.glob(f"*/{MODEL_FILE}")
                                                   if p.parent.name != AUDIT_JOB_DIR)]
    present = [p for p in candidates if p.is_file() and not p.is_symlink()]
    if not artifact_sha256:
        return present[0] if present else None
    return next((p for p in present if file_sha256(p) == artifact_sha256), None)


def score_audit(spec: EvaluatorSpec, model: Path, artifact_sha256: str | None) -> AuditScore:
    """Run the evaluator once on ``model`` with the audit split (``spec.split`` is "audit"): its val_bpb there,
    or a note. Never raises for what the evaluator does; the model's copy is removed afterwards."""
    began = time.monotonic()
    evaluator = Evaluator(spec)
    evaluator.start()  # clears the job folder's model and record first
    try:
        shutil.copyfile(model, spec.model_path)  # a copy: the job folder is the evaluator's to write
        record = evaluator.evaluate()
    except OSError as exc:
        record = {"ok": False, "error": f"the kept model could not be copied for the audit: {exc.strerror}"}
    finally:
        evaluator.close()
        spec.model_path.unlink(missing_ok=True)
    seconds = time.monotonic() - began
    note = _audit_record_problem(record, _audit_sha256(spec), artifact_sha256)
    return AuditScore(None if note else float(record["val_bpb"]), note, seconds)


def _audit_sha256(spec: EvaluatorSpec) -> str | None:
    """The audit file's sha256 as the run fingerprinted it when it began."""
    try:
        name = audit_manifest(json.loads((spec.cache_dir / "manifest.json").read_text(encoding="utf-8")))["val_tokens"]
    except (OSError, ValueError, TypeError):
        return None
    return (spec.expected or {}).get(name)


def _audit_record_problem(record: dict, audit_sha256: str | None, artifact_sha256: str | None) -> str | None:
    """What makes an audit record unusable: an error, no finite number, another split or another model scored."""
    if record.get("ok") is not True:
        return f"the audit scoring failed: {str(record.get('error'))[:300]}"
    value = record.get("val_bpb")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"the audit scoring gave no number (val_bpb {value!r})"
    # The record names the bytes it scored: proof that the audit split, not the validation split, was scored
    # (also by a run's older copy of the harness, which knows nothing of audits).
    if not audit_sha256 or record.get("val_tokens_sha256") != audit_sha256:
        return "the audit scoring scored other tokens than the audit split the run fingerprinted"
    if artifact_sha256 and record.get("artifact_sha256") != artifact_sha256:
        return "the audit scoring scored another model than the one kept"
    return None


def _tail(path: Path, limit: int = 300) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


class HandOverWatch:
    """Takes the first model a trial hands over, on the supervisor's clock.

    The harness writes the file under another name and renames it into place, so a file that appears is
    complete. It is copied at once to where the trial cannot reach (a trial holding the file open could
    otherwise keep writing into it after the hand-over); later hand-overs are ignored.
    """

    def __init__(self, offered: Path, kept: Path, started: float) -> None:
        self.offered, self.kept, self.started = offered, kept, started
        self.seconds: float | None = None  # from the trial's start to the hand-over
        self.problem = ""

    @property
    def done(self) -> bool:
        return self.seconds is not None or bool(self.problem)

    def poll(self) -> bool:
        """Look once; True when the model was just taken."""
        if self.done:
            return False
        try:
            info = os.lstat(self.offered)
        except OSError:
            return False
        now = time.monotonic()
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            self.problem = "the handed-over model is not a regular file"
            return False
        if info.st_size > MAX_MODEL_BYTES:
            self.problem = f"the handed-over model is larger than {MAX_MODEL_BYTES / 2**30:g} GB"
            return False
        try:
            self._copy()
        except _NotAModel as exc:
            self.problem = str(exc)
            return False
        except OSError as exc:
            self.problem = f"the handed-over model could not be read: {exc.strerror}"
            return False
        self.seconds = now - self.started
        return True

    def _copy(self) -> None:
        """Copy what the opened file held when it was checked: no FIFO swapped in after the lstat, no more bytes
        than its size then (a trial appending through an open handle cannot stretch the copy)."""
        fd = os.open(self.offered, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise _NotAModel("the handed-over model is not a regular file")
            if info.st_size > MAX_MODEL_BYTES:
                raise _NotAModel(f"the handed-over model is larger than {MAX_MODEL_BYTES / 2**30:g} GB")
            if info.st_size > SPARSE_CHECK_BYTES and info.st_blocks * 512 < info.st_size // 2:
                raise _NotAModel("the handed-over model is a sparse file (mostly holes): not a saved model")
            left, offset = info.st_size, 0
            with open(self.kept, "wb") as target:
                while left > 0:
                    chunk = os.pread(fd, min(left, 1 << 20), offset)
                    if not chunk:
                        break
                    target.write(chunk)
                    offset += len(chunk)
                    left -= len(chunk)
        finally:
            os.close(fd)


class _NotAModel(Exception):
    """What a trial left at the hand-over path cannot be a model."""
