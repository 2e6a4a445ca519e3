"""The GPU A/B benchmark's candidates still apply to the current train.py (it runs only where a GPU is lent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_ab():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("trainer_gpu_ab", ROOT / "benchmarks" / "trainer_gpu_ab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["trainer_gpu_ab"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["batch32", "batch64", "compiled-muon", "max-autotune", "no-step-sync"])
def test_each_candidate_changes_train_py_and_still_compiles(name: str) -> None:
    ab = load_ab()
    from trainer_common import edit_constant

    source = (ROOT / "trainer" / "train.py").read_text()
    candidate = ab.BY_NAME[name]
    changed = source
    for constant, value in (candidate.overrides or {}).items():
        changed = edit_constant(changed, constant, value)
    if candidate.patch is not None:
        changed = candidate.patch(changed)
    assert changed != source
    compile(changed, "train.py", "exec")
    assert candidate.prediction


def test_a_patch_that_no_longer_applies_says_so() -> None:
    ab = load_ab()
    with pytest.raises(ValueError, match="update the benchmark's patch"):
        ab._max_autotune("print('a train.py without torch.compile')\n")
