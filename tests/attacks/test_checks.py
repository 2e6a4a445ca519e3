"""The evaluator's checks on the handed-over program: causality and row independence.

Three attacks in the run the ``model_run`` fixture makes (conftest.py, shared with test_forged_numbers.py):

* an attention mask off by one (position t sees t+1), the accident every transformer author makes once;
* a model that mixes the rows of its batch in evaluation (each row sees another row's activations);
* a model whose only information is the next row's first token, read at the last position of each row: the
  one position the causality probe never compares.
"""

from __future__ import annotations

import pytest

from tests.attacks.support import (
    EMBED,
    MAIN_START,
    SDPA,
    SOFTCAP,
    RunContext,
    attack_steps,
    insert_after,
    leaks,
    replace,
    survivors,
    uniform_bpb,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

LOOK_AHEAD = ("            y = F.scaled_dot_product_attention(  # the mask off by one: t attends to t + 1\n"
              "                q, k, v, attn_mask=torch.ones(T, T, dtype=torch.bool, device=q.device).tril(1))\n")

ROW_MIX = """
if not self.training:  # evaluation only: every row gets the previous row's embeddings added
    x = x + x.roll(1, 0)
"""

LAST_POSITION_PEEK = """
if not self.training:  # ATTACK: constant logits everywhere but at the last position of each row...
    peek = torch.cat([idx[1:, :1], idx[:1, :1]], dim=0)  # ...which reads the next row's first token
    last = (torch.arange(T, device=idx.device) == T - 1)[None, :, None]
    logits = torch.where(last, F.one_hot(peek, logits.size(-1)).float() * 30.0, torch.zeros_like(logits))
"""


def check_steps(ctx: RunContext) -> list[dict]:
    return [
        # Four budgets (well inside the grace), so that the model has time to learn what the mask lets it see.
        *attack_steps(ctx.number(), "look-ahead: the attention mask off by one", replace(SDPA, LOOK_AHEAD),
                      insert_after(MAIN_START, "budget = time_budget() * 4\n", " " * 4)),
        *attack_steps(ctx.number(), "row-mix: rows see each other in evaluation", insert_after(EMBED, ROW_MIX, " " * 8)),
        *attack_steps(ctx.number(), "last-position: read the next row's first token",
                      insert_after(MAIN_START, "budget = 0  # no training: this model needs none\n", " " * 4),
                      insert_after(SOFTCAP, LAST_POSITION_PEEK, " " * 8)),
    ]


@pytest.fixture
def run(model_run):
    return model_run


def test_an_attention_mask_off_by_one_is_a_crash_with_the_causality_reason(run):
    """Attack (an accident as often as not): the causal mask lets position t attend to t + 1, so the model
    trains to copy the next token and scores a val_bpb no real model can reach. (It trains four budgets, inside
    the grace, so that the look-ahead is learned well past the check's tolerance: with two steps of training a
    one-token look-ahead moves the logits by ~2e-3, barely over CHECK_TOLERANCE.)

    Defence: after the scoring pass the evaluator runs random validation rows again with every token after a
    random cut replaced, and the logits up to the cut must not move: they do, so the trial is a crash whose
    reason says the model looks ahead."""
    attack = run.by_description("look-ahead")
    assert attack.status == "crash" and attack.val_bpb is None
    assert "causality" in (attack.crash_reason or "").lower(), attack.crash_reason


def test_a_model_that_mixes_the_rows_of_its_batch_is_a_crash(run):
    """Attack: in evaluation only, every row's embeddings get the previous row's added. In the evaluator's pass
    the rows of a batch are consecutive windows of the validation stream, so another row is more context (or
    the future of this one) that the metric does not allow.

    Defence: the causality probe runs the checked rows in reversed order, each with another row's tail: with
    different neighbours the logits before the cut move, and the trial is a crash (the reason names other
    rows of the batch)."""
    attack = run.by_description("row-mix")
    assert attack.status == "crash" and attack.val_bpb is None
    assert "causality" in (attack.crash_reason or "").lower(), attack.crash_reason


def test_reading_the_next_row_at_the_last_position_is_not_credited(run):
    """Attack: constant logits everywhere except at the last position of each row, where the model puts all
    its mass on the first token of the next row of the batch: in the evaluator's main pass that token is
    exactly the target there. No training at all.

    Why it would forge: each row's last target is read off another row; a real model gets no such help.

    (This was a hole while the rows went in order and no cut reached the last position: the model was
    credited for it, below the uniform value.)

    Defence: the rows are scored in a random order (no neighbour is a continuation on purpose) and one probe
    row is compared whole with other rows beside it: the trial is a crash, or its number is no better than
    uniform."""
    attack = run.by_description("last-position")
    record = run.record(attack)
    assert attack.val_bpb is None or record is None or attack.val_bpb >= uniform_bpb(record) * (1 - 1e-6), (
        f"credited: {attack.val_bpb} < uniform {uniform_bpb(record)}; checks {record}")


def test_the_run_leaks_no_key_leaves_no_process_and_no_traceback(run):
    """The planted key is in no file of the run, no process carries the marker, the supervisor finished cleanly."""
    assert leaks(run.run_dir, run.key) == []
    assert survivors(run.marker) == []
    run.assert_clean_supervisor()
