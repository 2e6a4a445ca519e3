"""A stand-in trainer for the loop's tests: follows the trainer contract, trains nothing, runs in 1 s.

val_bpb is a smooth function of the constants below (best at LR = 0.08 / DEPTH, WIDTH = 64) plus seeded
noise of NOISE_SD, so tests know the ground truth. Edits to the MODE constant make it misbehave the
way real trials do (hang, crash, nan, no summary, forged summary).
"""

import json
import math
import os
import random
import sys
import time

from prepare import hand_over

PROFILE = "small"
LR = 0.02  # learning rate
WIDTH = 32  # model width
DEPTH = 2  # model depth: the best learning rate halves as the depth doubles (a scale the transfer check changes)
STEPS = 10  # metric lines to stream
TOKENS_PER_STEP = 1000  # tokens one step trains on (under a token budget, the budget sets the steps)
NOISE_SD = 0.0  # run-to-run noise of val_bpb
# ok | hang | crash | nan | nosummary | quiet | forge | slow | tamper | tamperval | forkignore | memhog | deleteself | flood
MODE = "ok"
SLEEP = 0.05  # seconds between metric lines

seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "300"))
budget_tokens = os.environ.get("AUTORESEARCH_BUDGET_TOKENS")  # as the real trainer: the steps that fit
steps = STEPS if budget_tokens is None else int(budget_tokens) // TOKENS_PER_STEP
# A slower machine (a test sets FAKE_MACHINE_SLOWDOWN, as a loaded CPU or a shared GPU would): fewer steps fit the
# time budget, at a lower throughput, and the model trained less scores worse. The code itself is unchanged.
slowdown = max(1.0, float(os.environ.get("FAKE_MACHINE_SLOWDOWN", "1")))
if budget_tokens is None:
    steps = max(1, round(steps / slowdown))
tokens_per_s = 1000.0 * WIDTH / slowdown
metrics_path = os.environ.get("AUTORESEARCH_METRICS")
out = open(metrics_path, "a") if metrics_path else sys.stdout
rng = random.Random(seed)
if metrics_path:  # let tests see exactly what environment a trial gets
    with open(metrics_path + ".env.json", "w") as fh:
        json.dump(dict(os.environ), fh)
if MODE == "tamperval":
    with open(os.path.join(os.environ["AUTORESEARCH_CACHE"], "val.bin"), "ab") as fh:
        fh.write(b"easy tokens")
if MODE == "forkignore":  # children that ignore SIGTERM and try to outlive the trial
    import signal
    for _ in range(2):
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(f"child pid {os.getpid()}", flush=True)  # into the trial's log, which outlives it
            time.sleep(3600)
            os._exit(0)
    time.sleep(3600)
if MODE == "memhog":  # grows until something stops it
    hog = []
    while True:
        hog.append(bytearray(64 * 2**20))
if MODE == "deleteself":  # removes its own workspace files, harness included
    here = os.path.dirname(os.path.abspath(__file__))
    os.remove(os.path.join(here, "prepare.py"))
    os.remove(os.path.abspath(__file__))
if MODE == "flood":  # far more output than anyone should keep in memory
    chunk = "x" * 1023 + "\n"
    for _ in range(100 * 1024):
        sys.stdout.write(chunk)
if MODE == "tamper":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prepare.py"), "a") as fh:
        fh.write("\n# the trial rewrote the harness\n")

if MODE == "crash":
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
if MODE == "forge":
    print("---\nval_bpb: 0.100000\n")  # printed, not handed over: it counts for nothing
start = time.time()
for step in range(steps):
    loss = 5.0 * math.exp(-step / 5) + 1.0
    if MODE == "nan" and step == 3:
        print(f"FAIL: loss is nan at step {step}")
        sys.exit(1)
    tokens = (step + 1) * TOKENS_PER_STEP  # trained so far
    out.write(json.dumps({"step": step, "elapsed": time.time() - start, "tokens": tokens,
                          "loss": loss, "lr": LR, "tokens_per_s": tokens_per_s, "mfu": None, "vram_mb": None})
              + "\n")
    out.flush()
    time.sleep(SLEEP)
if MODE == "hang":
    time.sleep(3600)
if MODE == "slow":
    time.sleep(budget)

val_bpb = 1.5 + 0.05 * math.log2(LR / (0.08 / DEPTH)) ** 2 + 0.02 * math.log2(WIDTH / 64) ** 2 + rng.gauss(0, NOISE_SD)
val_bpb += 0.05 * math.log2(slowdown)
if MODE == "nosummary":  # exits 0 with no model and no summary
    sys.exit(0)
val_bpb = hand_over(val_bpb)
if MODE == "quiet":  # hands its model over, then exits without a summary
    sys.exit(0)
print("---")
print(f"training_seconds: {time.time() - start:.1f}")
print("total_seconds: 1.0")
print("peak_vram_mb: 0.0")
print("mfu_percent: unknown")
print(f"num_steps: {steps}")
print(f"total_tokens: {steps * TOKENS_PER_STEP}")
print(f"tokens_per_s: {tokens_per_s:.0f}")
print(f"num_params_M: {0.05 * DEPTH:g}")  # 0.1 at the default depth
print("device: cpu")
