"""The stand-in harness: records the evaluation the way the real one does."""

import json
import os
import time


def evaluate(val_bpb):
    path = os.environ.get("AUTORESEARCH_EVAL_RECORD")
    if path:
        with open(path, "w") as fh:
            json.dump({"val_bpb": val_bpb, "time": time.time()}, fh)
    return val_bpb
