"""The agent-side loop shared by every language-model provider.

Each turn is built fresh from the durable state in the TurnContext, never from an ever-growing chat, so a
night of a hundred trials costs about as much per turn as the first hour, and a restarted supervisor
loses nothing. A turn's prompt has four parts, ordered so the provider's prompt cache sees a stable prefix:

1. the system prompt and the tool schemas (never change), then program.md (changes when the person edits
   it) and the machine (the device, its memory, the data's sequence length and vocabulary, the MFU peak:
   fixed for the run): the cached prefix;
2. the training script as it is now (changes only when an edit is made or kept);
3. the previous reply with the results of its tool calls (one turn back only; that is how the model sees
   what its calls did), in the protocol's tool-call form where replaying it is safe (OpenAI), as text where
   it is not (Anthropic, whose thinking blocks are bound to the exact conversation that produced them);
4. the state of the run: its header (budget, policy, the noise floor with each seed's val_bpb and steps,
   tokens per step), a compact results table (every keep and the last trials), the last journal entries,
   the latest reflection, the plan queue, the person's messages, and what must happen now.

The provider adapters (anthropic_agent.py, openai_agent.py) only translate a `Prompt` into their wire
format and a response back into a `ModelReply`. Everything else lives here: reading tool calls, turning
unreadable ones into errors the model can fix, counting tokens and dollars, and sorting API failures
into the typed errors of supervisor.agents.base.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.agents.base import (
    AgentAuthError,
    AgentConfigError,
    AgentError,
    AgentRequestError,
    AgentTurn,
    AgentUnavailable,
    Machine,
    NoiseView,
    TextListener,
    ToolCall,
    ToolOutcome,
    TurnContext,
)
from supervisor.core import prompts
from supervisor.core.pricing import Price, price_source
from supervisor.core.prompts import PROGRAM_INTRO, SYSTEM_PROMPT
from supervisor.core.types import JournalEntry, Plan, PlanStatus, Reflection

MAX_RESULT_CHARS = 6000
RESULT_ROWS_RECENT = 15
FIELD_CHARS = 900              # a journal field in the prompt: the agent's own words, cut at a sentence
REFLECTION_FIELD_CHARS = 1800
ECHO_CHARS = 4000              # a previous call's arguments, echoed exactly (an edit's search text is copied back)
PLANS_SHOWN = 5
CRASH_TAIL_CHARS = 1500
STEPS_SPREAD = 1.2             # noise seeds whose step counts differ by this factor ran at different speeds
PLACEHOLDER_KEY = "not-needed"  # what the SDKs get for a local server that wants no key; never a secret


# ---- the provider-neutral request and reply ------------------------------------------------------------
@dataclass
class PriorTurn:
    """The previous reply and what each of its calls got: replayed as tool calls, or shown as text."""

    text: str
    calls: list[ToolCall]
    results: list[ToolOutcome]


@dataclass
class Prompt:
    system: str
    program: str
    tools: list[dict[str, Any]]
    code: str
    state: str
    previous: PriorTurn | None = None
    machine: str = ""  # what trials run on: fixed for the run, so it ends the cached prefix

    @property
    def program_block(self) -> str:
        """program.md and then the machine: the last part of the cached prefix."""
        block = PROGRAM_INTRO + (self.program.strip() or prompts.PROGRAM_EMPTY)
        return f"{block}\n\n{self.machine}" if self.machine else block

    def sections(self) -> dict[str, str]:
        """The prompt's text by part, for measuring its size."""
        previous = ""
        if self.previous:
            previous = self.previous.text + "".join(
                json.dumps(c.input) + r.content for c, r in zip(self.previous.calls, self.previous.results,
                                                                strict=False))
        return {
            "system": self.system,
            "tools": json.dumps(self.tools),
            "program": PROGRAM_INTRO + (self.program.strip() or prompts.PROGRAM_EMPTY),
            "machine": self.machine,
            "code": self.code,
            "previous": previous,
            "state": self.state,
        }


@dataclass
class ModelCall:
    """One tool call as the model sent it. `arguments` is None when they could not be read."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw: str = ""
    problem: str | None = None


@dataclass
class ModelReply:
    text: str
    calls: list[ModelCall]
    stop_reason: str | None  # end_turn | tool_use | max_tokens | another provider reason
    usage: dict[str, Any] = field(default_factory=dict)  # normalised token counts (see pricing.py)
    model: str | None = None


class ProviderAdapter(Protocol):
    """Translates a Prompt to one provider's wire format and its response back. Nothing else."""

    provider: str        # "anthropic" | "openai": the --agent name
    label: str           # how messages name it: "Anthropic", "OpenAI", "the OpenAI-compatible server at URL"
    model: str

    def complete(self, prompt: Prompt, on_text: TextListener | None) -> ModelReply: ...

    def probe(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


# ---- reading tool calls --------------------------------------------------------------------------------
def read_arguments(raw: Any, *, cut_off: bool = False, max_tokens: int | None = None
                   ) -> tuple[dict[str, Any] | None, str | None]:
    """A tool call's arguments as a dict, or None and a problem the model can act on."""
    if isinstance(raw, dict):
        return raw, None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    if not isinstance(raw, str):
        return None, prompts.ARGS_NOT_OBJECT.format(kind=type(raw).__name__)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if cut_off:
            return None, prompts.ARGS_CUT_OFF.format(max_tokens=max_tokens)
        snippet = raw if len(raw) <= 160 else raw[:160] + "..."
        return None, prompts.ARGS_NOT_JSON.format(msg=exc.msg, pos=exc.pos, snippet=snippet)
    if not isinstance(value, dict):
        return None, prompts.ARGS_NOT_NAMED.format(kind=type(value).__name__)
    return value, None


# ---- building a turn -----------------------------------------------------------------------------------
def build_prompt(ctx: TurnContext, previous: PriorTurn | None = None) -> Prompt:
    """A turn's whole prompt, from durable state only (and the previous reply, when it is known)."""
    return Prompt(
        system=SYSTEM_PROMPT,
        program=ctx.program,
        tools=ctx.tools,
        code=render_code(ctx),
        state=render_state(ctx, previous),
        previous=previous,
        machine=render_machine(ctx.machine) if ctx.machine is not None else "",
    )


def render_code(ctx: TurnContext) -> str:
    return prompts.CODE.format(editable=ctx.editable, code=ctx.train_py.rstrip())


def tool_result_text(call: ToolCall, outcome: ToolOutcome, editable: str) -> str:
    """What the model sees of one result: long results are cut, and a whole-script read is not repeated."""
    content = outcome.content
    if call.name == "read_file" and outcome.ok and _is_editable(call.input.get("path"), editable) \
            and call.input.get("start_line") is None and call.input.get("end_line") is None:
        return prompts.WHOLE_SCRIPT_SHOWN.format(editable=editable)
    if len(content) > MAX_RESULT_CHARS:
        left = len(content) - MAX_RESULT_CHARS
        content = content[:MAX_RESULT_CHARS] + prompts.RESULT_CUT.format(left=left)
    return content


def _is_editable(path: Any, editable: str) -> bool:
    if not isinstance(path, str):
        return False
    p = path.strip().removeprefix("./")
    return p == editable or p == editable.rsplit("/", 1)[-1]


def render_state(ctx: TurnContext, previous: PriorTurn | None = None) -> str:
    parts = [_run_header(ctx)]
    if ctx.steering:
        numbers = ctx.steering_ids or [None] * len(ctx.steering)
        parts.append(prompts.STEERING_HEAD + "\n" + "\n".join(
            f"- #{n}: {m}" if n is not None else f"- {m}" for n, m in zip(numbers, ctx.steering, strict=False)))
    parts.append(compact_results(ctx.results))
    if ctx.recent_journal:
        parts.append(_journal(ctx.recent_journal))
    if ctx.latest_reflection:
        parts.append(_reflection(ctx.latest_reflection))
    parts.append(_plans(ctx.plans))
    if ctx.last_outcomes and previous is None:
        parts.append(_outcomes(ctx.last_outcomes))
    parts.append(_task(ctx, previous))
    return "\n\n".join(p for p in parts if p)


def _fmt(value: float | None, digits: int = 6) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cut(text: Any, limit: int) -> str:
    """One line of at most `limit` characters (for descriptions and reasons in tables)."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SENTENCE_END = re.compile(r"[.!?;:](?=\s)|\n")


def _excerpt(text: Any, limit: int) -> str:
    """The agent's own prose, whole when it fits; else cut after the last sentence that fits (never
    mid-thought), saying how much was left out. Runs of blank space are folded, sentences are not."""
    text = " ".join(str(text or "").split())
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, limit)]
    cut = ends[-1] if ends and ends[-1] >= limit // 3 else text.rfind(" ", 0, limit)
    cut = cut if cut > 0 else limit
    return f"{text[:cut].rstrip()} [... {len(text) - cut:,} more characters]"


def _echo(call_input: Any) -> str:
    """A previous call's arguments exactly as sent (spaces and newlines kept, in JSON), so that text copied
    back from it, an edit's search string above all, matches the file."""
    text = json.dumps(call_input, ensure_ascii=False)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]} [... {len(text) - ECHO_CHARS:,} more characters]"


def _run_header(ctx: TurnContext) -> str:
    done = f"{ctx.trials_done} trials done" + (f" of {ctx.max_trials}" if ctx.max_trials else "")
    floor = (f"noise floor {ctx.noise_floor:.6f} (a smaller gain is probably luck)" if ctx.noise_floor is not None
             else "noise floor not measured yet")
    budget = (prompts.RUN_TOKEN_BUDGET.format(tokens=ctx.budget_tokens, seconds=ctx.budget_s)
              if ctx.budget_tokens else f"{ctx.budget_s:g} s of training per trial")
    lines = [f"## The run\n{done}; {budget}; keep policy {ctx.policy}; {floor}"
             + (f"; data profile {ctx.profile}" if ctx.profile and ctx.machine is None else "") + "."]
    if ctx.noise is not None:
        lines.append(_noise_seeds(ctx.noise))
    if ctx.step_sizes:
        lines.append(prompts.RUN_STEP_SIZE.format(items="; ".join(
            prompts.RUN_STEP_SIZE_ITEM.format(tokens=s.tokens, trial_id=s.trial_id, role=s.role)
            for s in ctx.step_sizes)))
    if ctx.best:
        b = ctx.best
        lines.append(f"Best so far: trial {b['id']}, val_bpb {_fmt(b.get('val_bpb'))}: {_cut(b.get('description'), 120)}")
    return "\n".join(lines)


def _noise_seeds(noise: NoiseView) -> str:
    """Each seed behind the floor with its val_bpb and steps: steps that differ show a throughput spread."""
    seeds = ", ".join((prompts.RUN_NOISE_SEED.format(seed=s.seed) if s.seed is not None else "")
                      + prompts.RUN_NOISE_VALUE.format(val_bpb=_fmt(s.val_bpb))
                      + (prompts.RUN_NOISE_STEPS.format(steps=s.num_steps) if s.num_steps is not None else "")
                      for s in noise.seeds)
    what = (prompts.RUN_NOISE_TRIAL.format(trial_id=noise.trial_id) if noise.trial_id is not None
            else prompts.RUN_NOISE_COMMIT.format(commit=noise.commit[:7]))
    line = prompts.RUN_NOISE.format(n=len(noise.seeds), what=what, budget=noise.budget_s, seeds=seeds,
                                    factor=noise.factor, sd=_fmt(noise.sd))
    steps = [s.num_steps for s in noise.seeds if s.num_steps is not None]
    if len(steps) >= 2 and len(steps) == len(noise.seeds) and max(steps) >= STEPS_SPREAD * max(1, min(steps)):
        line += " " + prompts.RUN_NOISE_STEPS_VARY.format(low=min(steps), high=max(steps))
    return line


def render_machine(m: Machine) -> str:
    """The machine and data every trial uses, in a few lines: the device (what 'MFU n/a' meant had to be
    guessed before), its memory, the sequence length and vocabulary, and what MFU is measured against."""
    memory = _gigabytes(m.memory_mb)
    if m.accelerator in ("cuda", "rocm"):
        device = prompts.MACHINE_GPU.format(device=m.device, memory=memory, accelerator=m.accelerator.upper(),
                                            torch=m.torch, cpu=m.cpu)
    elif m.accelerator == "mps":
        device = prompts.MACHINE_MPS.format(device=m.device, memory=memory, torch=m.torch)
    elif m.accelerator == "cpu":
        device = prompts.MACHINE_CPU.format(cpu=m.cpu, threads=m.cpu_threads, memory=memory, torch=m.torch)
    else:
        device = prompts.MACHINE_UNKNOWN.format(torch=m.torch, cpu=m.cpu, threads=m.cpu_threads)
    if m.seq_len is None or m.vocab_size is None:
        data = prompts.MACHINE_NO_DATA
    else:
        data = prompts.MACHINE_DATA.format(profile=m.profile or "unknown", seq_len=m.seq_len,
                                           vocab=f"{m.vocab_size:,}", train=_count(m.train_tokens),
                                           eval=_count(m.eval_tokens))
    peak = (prompts.MACHINE_PEAK.format(tflops=round(m.peak_flops / 1e12, 1), device=m.device)
            if m.peak_flops is not None else prompts.MACHINE_NO_PEAK.format(why=m.no_peak_reason))
    return "\n".join([prompts.MACHINE_HEAD, device, data, peak])


def _gigabytes(mb: float | None) -> str:
    if mb is None:
        return "an unknown amount"  # NVML or amdsmi missing: the GPU is named, its memory is not
    gb = mb / 1024
    return f"{gb:.0f} GB" if gb >= 10 else f"{gb:.1f} GB"


def _count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def compact_results(results: list[dict[str, Any]], recent: int = RESULT_ROWS_RECENT) -> str:
    """Every keep (the lineage of the current script) and the last `recent` trials, one line each."""
    if not results:
        return "## Results\n(no finished trials yet)"
    shown = [r for i, r in enumerate(results) if r["status"] == "keep" or i >= len(results) - recent]
    counts = {s: sum(r["status"] == s for r in results) for s in ("keep", "discard", "crash", "held")}
    flagged = sum(bool(r.get("flagged")) for r in results)
    head = (f"## Results ({len(results)} trials: {counts['keep']} keep, {counts['discard']} discard, "
            f"{counts['crash']} crash, " + (f"{counts['held']} held for review, " if counts["held"] else "")
            + f"{flagged} flagged under the noise floor"
            + (f"; shown: every keep and the last {recent}" if len(shown) < len(results) else "") + ")")
    lines = [head, "id   status  val_bpb   delta     steps  tok/s    MFU%  category        description"]
    for r in shown:
        status = r["status"] + ("*" if r.get("flagged") else "")
        delta = f"{r['delta']:+.5f}" if r.get("delta") is not None else ""
        steps = str(r["num_steps"]) if r.get("num_steps") is not None else ""
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") is not None else ""
        mfu = f"{r['mfu_percent']:.1f}" if r.get("mfu_percent") is not None else ""
        desc = _cut(r.get("description"), 90)
        if r["status"] == "crash" and r.get("crash_reason"):
            desc += f" [crash: {_cut(r['crash_reason'], 70)}]"
        lines.append(f"{r['id']:<4} {status:<7} {_fmt(r.get('val_bpb')):<9} {delta:<9} {steps:<6} {tps:<8} {mfu:<5} "
                     f"{(r.get('category') or ''):<15} {desc}")
    if flagged:
        lines.append("(* flagged: kept, but the gain is under the noise floor)")
    return "\n".join(lines)


def _journal(entries: list[JournalEntry]) -> str:
    out = [f"## Your last {len(entries)} journal entries"]
    for e in entries:
        out.append(f"Trial {e.trial_id}:\n"
                   f"  hypothesis: {_excerpt(e.hypothesis, FIELD_CHARS)}\n"
                   f"  change: {_excerpt(e.change, FIELD_CHARS)}\n"
                   f"  result: {_excerpt(e.result, FIELD_CHARS)}\n"
                   f"  interpretation: {_excerpt(e.interpretation, FIELD_CHARS)}\n"
                   f"  next step: {_excerpt(e.next_step, FIELD_CHARS)}")
    return "\n".join(out)


def _reflection(r: Reflection) -> str:
    triggers = "; ".join(r.triggers)
    return (f"## The latest reflection (after trial {r.after_trial}"
            + (f"; {triggers}" if triggers else "") + ")\n"
            f"load-bearing: {_excerpt(r.load_bearing, REFLECTION_FIELD_CHARS)}\n"
            f"dead ends: {_excerpt(r.dead_ends, REFLECTION_FIELD_CHARS)}\n"
            f"re-test: {_excerpt(r.retest, REFLECTION_FIELD_CHARS)}\n"
            f"plan: {_excerpt(r.plan, REFLECTION_FIELD_CHARS)}")


def _plans(plans: list[Plan]) -> str:
    open_ = [p for p in plans if p.status == PlanStatus.OPEN]
    tried = [p for p in plans if p.status == PlanStatus.TRIED][-PLANS_SHOWN:]
    dropped = [p for p in plans if p.status == PlanStatus.DROPPED][-PLANS_SHOWN:]
    lines = ["## Plan queue"]
    if not plans:
        lines.append("(empty: add ideas with plan_add, especially ambitious ones, so they are not forgotten)")
    for p in open_:
        why = f" (why: {_cut(p.rationale, 200)})" if p.rationale else ""
        lines.append(f"open #{p.id}: {_cut(p.idea, 200)}{why}")
    for p in tried:
        lines.append(f"tried #{p.id}: {_cut(p.idea, 120)}" + (f" (trial {p.trial_id})" if p.trial_id else ""))
    for p in dropped:
        lines.append(f"dropped #{p.id}: {_cut(p.idea, 120)}; because {_cut(p.reason, 200)}")
    return "\n".join(lines)


def render_previous(prior: PriorTurn) -> str:
    """The previous reply and what each of its calls returned, as text (for a protocol that cannot replay it)."""
    lines = ["## Your previous reply", prior.text or "(no text)"]
    if prior.calls:
        lines.append("Its tool calls, in order, and what each returned:")
    for i, (call, outcome) in enumerate(zip(prior.calls, prior.results, strict=False), start=1):
        mark = "REFUSED" if outcome.refused else ("ok" if outcome.ok else "ERROR")
        lines.append(f"{i}. {call.name} {_echo(call.input)} -> {mark}:\n"
                     f"{outcome.content}")
    return "\n".join(lines)


def _outcomes(outcomes: list[ToolOutcome]) -> str:
    lines = ["## Results of your previous tool calls"]
    for o in outcomes:
        mark = "REFUSED" if o.refused else ("ok" if o.ok else "ERROR")
        content = o.content if len(o.content) <= MAX_RESULT_CHARS else o.content[:MAX_RESULT_CHARS] + " ..."
        lines.append(f"{o.tool} [{mark}]: {content}")
    return "\n".join(lines)


def _pending(t: dict[str, Any]) -> str:
    parts = [f"Trial {t['id']} just finished: {str(t.get('status', '')).upper()}"
             + (" (flagged: under the noise floor)" if t.get("flagged") else "")
             + f". {t.get('description', '')}"]
    if t.get("val_bpb") is not None:
        vs = (f" vs parent {_fmt(t.get('parent_val_bpb'))} (delta {t['delta']:+.6f})"
              if t.get("delta") is not None else "")
        parts.append(f"val_bpb {_fmt(t['val_bpb'])}{vs}")
    if t.get("decision"):
        parts.append(f"decision: {t['decision']}")
    numbers = []
    for key, label, digits in (("num_steps", "steps", 0), ("tokens_per_s", "tokens/s", 0),
                               ("mfu_percent", "MFU %", 1), ("peak_vram_mb", "peak VRAM MB", 0),
                               ("training_seconds", "training s", 1)):
        if t.get(key) is not None:
            numbers.append(f"{label} {t[key]:.{digits}f}")
    if numbers:
        parts.append("; ".join(numbers))
    if t.get("status") == "crash":
        parts.append(f"crash: {t.get('crash_reason') or 'see the log'}\nlog tail:\n"
                     f"{(t.get('log_tail') or '')[-CRASH_TAIL_CHARS:]}")
    return "\n".join(parts)


def _task(ctx: TurnContext, previous: PriorTurn | None) -> str:
    lines = [prompts.TASK_HEADING]
    if previous is not None and not previous.calls:
        lines.append(prompts.TASK_NO_TOOL_CALLED)
    if ctx.obligation == "journal":
        if ctx.pending_trial:
            lines.append(_pending(ctx.pending_trial))
        lines.append(ctx.obligation_message)
    elif ctx.obligation == "reflection":
        lines.append(ctx.obligation_message)
        lines.append(prompts.TASK_REFLECT)
    elif not ctx.results:
        lines.append(prompts.TASK_BASELINE)
    else:
        left = prompts.TASK_TRIALS_LEFT.format(left=ctx.max_trials - ctx.trials_done) if ctx.max_trials else ""
        lines.append(prompts.TASK_NEXT_EXPERIMENT.format(left=left))
    if ctx.uncommitted_lines:
        lines.append(prompts.TASK_UNCOMMITTED.format(editable=ctx.editable, lines=ctx.uncommitted_lines))
    refused = [o for o in ctx.last_outcomes if o.refused]
    if refused:
        lines.append(prompts.TASK_LAST_REFUSED.format(tool=refused[-1].tool, content=_cut(refused[-1].content, 500)))
    return "\n".join(lines)


def estimate_tokens(text: str) -> int:
    """About four characters per token for English and Python; the API reports the exact count."""
    return (len(text) + 3) // 4


# ---- failures of the API, sorted ------------------------------------------------------------------------
def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove secrets (and any 8+ character stretch of one) from a message that may be written to disk."""
    for secret in secrets:
        if not secret or secret == PLACEHOLDER_KEY:
            continue
        text = text.replace(secret, "[redacted]")
        if len(secret) >= 16:  # an error that echoes part of the key, e.g. "sk-abc...xyz"
            for size in (12, 8):
                for i in range(0, len(secret) - size + 1):
                    piece = secret[i:i + size]
                    if piece in text:
                        text = text.replace(piece, "[redacted]")
    return text


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait (retry-after-ms or retry-after seconds), if any."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except (TypeError, ValueError):
            continue
    return None


def status_error(label: str, key_variable: str, status: int, detail: str, *, retry_after: float | None = None,
                 code: str | None = None) -> AgentError:
    """The typed error for an HTTP status the SDK gave up on (after its own retries, for the retryable ones)."""
    detail = _cut(detail, 300)
    if status == 401:
        return AgentAuthError(f"{label} rejected the API key (401: {detail}); set {key_variable} to a valid key "
                              "and continue the run with --resume")
    if status == 403:
        return AgentAuthError(f"{label} refused access (403: {detail}); check that the key in {key_variable} "
                              "may use this model, then continue with --resume")
    if status == 404:
        return AgentConfigError(f"{label} does not know this model or endpoint (404: {detail}); check --model "
                                "and --base-url, then continue with --resume")
    if code == "insufficient_quota":
        return AgentRequestError(f"{label} says the account's quota is exhausted ({status}: {detail}); add "
                                 "credit, then resume")
    if status in (408, 409, 429) or status >= 500:
        kind = {429: "rate limited", 529: "overloaded", 408: "request timeout", 409: "conflict"}.get(
            status, "server error")
        return AgentUnavailable(f"{label} {kind} ({status}: {detail})", retry_after=retry_after, status=status)
    return AgentRequestError(f"{label} refused the request ({status}: {detail})")


# ---- the agent -------------------------------------------------------------------------------------------
class LLMAgent:
    """An agent driven by a language model through a provider adapter."""

    def __init__(self, adapter: ProviderAdapter, *, price: Price | None = None) -> None:
        self.adapter = adapter
        self.name = adapter.provider
        self.price = price
        self.on_text: TextListener | None = None
        self._previous: tuple[str, list[ToolCall]] | None = None
        self._turns = 0

    @property
    def model(self) -> str:
        return self.adapter.model

    @property
    def prices_known(self) -> bool:
        return self.price is not None

    def turn(self, ctx: TurnContext) -> AgentTurn:
        prompt = build_prompt(ctx, self._prior_turn(ctx))
        started = time.monotonic()
        reply = self.adapter.complete(prompt, self.on_text)
        self._turns += 1
        calls = [self._tool_call(c, i) for i, c in enumerate(reply.calls)]
        usage = self.usage(reply.usage, model=reply.model, stop_reason=reply.stop_reason,
                           seconds=time.monotonic() - started)
        self._previous = (reply.text, calls)
        return AgentTurn(text=reply.text.strip(), calls=calls, usage=usage)

    def probe(self) -> dict[str, Any] | None:
        usage = self.adapter.probe()
        return self.usage(usage, probe=True) if usage else None

    def close(self) -> None:
        self.adapter.close()

    # ---- helpers ---------------------------------------------------------------------------------------
    def usage(self, counts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        usage = {"provider": self.adapter.provider, "model": extra.pop("model", None) or self.adapter.model,
                 "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0}
        usage.update(counts)
        usage["cost_usd"] = round(self.price.cost(usage), 6) if self.price else None
        usage["price_source"] = price_source(self.price)  # status and the UI say who priced the spend
        if "seconds" in extra:
            extra["seconds"] = round(extra["seconds"], 3)
        usage.update({k: v for k, v in extra.items() if v is not None})
        return usage

    def _tool_call(self, call: ModelCall, index: int) -> ToolCall:
        call_id = call.id or f"call_{self._turns}_{index}"
        return ToolCall(call.name, call.arguments if call.arguments is not None else {}, id=call_id,
                        problem=call.problem)

    def _prior_turn(self, ctx: TurnContext) -> PriorTurn | None:
        """The previous reply paired with its results, when the loop ran exactly those calls."""
        if self._previous is None:
            return None
        text, calls = self._previous
        if [o.call_id for o in ctx.last_outcomes] != [c.id for c in calls]:
            return None  # a restart or another agent in between: the state shows the results as text
        if not text.strip() and not calls:
            return None
        results = [ToolOutcome(o.tool, o.ok, tool_result_text(c, o, ctx.editable), o.refused, o.call_id)
                   for c, o in zip(calls, ctx.last_outcomes, strict=True)]
        return PriorTurn(text.strip(), calls, results)

