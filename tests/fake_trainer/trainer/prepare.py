"""The stand-in harness: hands a "model" over and evaluates it the way the real harness does, without torch.

The stand-in model is a JSON file holding the number its trainer computed; the stand-in evaluator (run by the
supervisor from its pristine copy, as `python prepare.py --serve-evaluation`) reads it and writes the record.
The real harness (trainer/prepare.py) exports a torch model and computes val_bpb itself; this one lets the
loop's tests know the ground truth.
"""

import json
import os
import sys


def hand_over(val_bpb):
    path = os.environ.get("AUTORESEARCH_MODEL_OUT")
    if path:
        part = path + ".part"
        with open(part, "w") as fh:
            json.dump({"val_bpb": val_bpb}, fh)
        os.replace(part, path)
    return val_bpb


def serve_evaluation():
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    try:
        with open(job["model"], encoding="utf-8") as fh:
            record = {"ok": True, "val_bpb": float(json.load(fh)["val_bpb"]), "evaluator": "stand-in"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        record = {"ok": False, "error": f"the handed-over model could not be read: {exc}"}
    with open(job["record"] + ".part", "w") as fh:
        json.dump(record, fh)
    os.replace(job["record"] + ".part", job["record"])
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--serve-evaluation"]:
    sys.exit(serve_evaluation())
