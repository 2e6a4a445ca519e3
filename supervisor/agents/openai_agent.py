"""`--agent openai`: Chat Completions with tool calls, through the official `openai` SDK.

The same protocol is spoken by vLLM, Ollama, llama.cpp's server, LM Studio and most hosted models: give
`--base-url` (or OPENAI_BASE_URL) and `--model`. Translation only, as for Anthropic: the turn, the reading of
tool calls and the cost live in llm.py.

The key comes from OPENAI_API_KEY only. A local server usually needs none: then the SDK gets a placeholder.
The `autoresearch` command moves OPENAI_* out of its own environment at start (supervisor/core/secrets.py), so
the key, base URL, organization and project are read from that store and passed to the client explicitly.
OpenAI caches prompt prefixes by itself; the prompt's stable parts come first so the cache sees them, and
`prompt_cache_key` keeps turns of one run on the same cache. Parameters only api.openai.com understands
(`max_completion_tokens`, `prompt_cache_key`) are not sent to other servers, which get `max_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import httpx2
import openai

from supervisor.agents.base import (
    AgentAuthError,
    AgentConfigError,
    AgentError,
    AgentUnavailable,
    TextListener,
)
from supervisor.agents.llm import (
    PLACEHOLDER_KEY,
    LLMAgent,
    ModelCall,
    ModelReply,
    Prompt,
    estimate_tokens,
    read_arguments,
    retry_after_seconds,
    scrub,
    status_error,
)
from supervisor.core.pricing import canonical_model, price_for
from supervisor.core.prompts import PREVIOUS_NOTE
from supervisor.core.secrets import credential, lookup

DEFAULT_MODEL = "gpt-5.4"
KEY_VARIABLE = "OPENAI_API_KEY"
FINISH_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens",
                  "content_filter": "refusal"}


class OpenAIAdapter:
    provider = "openai"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, stream: bool = True,
                 max_tokens: int | None = None, timeout_s: float = 300.0, max_retries: int = 3,
                 official: bool | None = None) -> None:
        # From the process's secrets (the entry point moved them out of the environment), else the
        # environment; always handed to the client explicitly, so the SDK never looks for them itself.
        base_url = base_url or lookup("OPENAI_BASE_URL") or None
        # api.openai.com itself, or a server that speaks its newest dialect (official=True)
        self.official = official if official is not None else (base_url is None or "api.openai.com" in base_url)
        if model is None and not self.official:
            raise AgentConfigError(f"--agent openai with the server at {base_url} needs --model: the name that "
                                   "server knows the model by (`ollama list`, or GET /v1/models on the server)")
        self.model = model or DEFAULT_MODEL
        key = credential(KEY_VARIABLE)
        if not key:
            if self.official:
                raise AgentAuthError(f"--agent openai needs an API key: set {KEY_VARIABLE} in the environment, or "
                                     "give --base-url for a local OpenAI-compatible server that needs none")
            key = PLACEHOLDER_KEY
        self._secrets = [key]
        self.label = "the OpenAI API" if self.official else f"the OpenAI-compatible server at {base_url}"
        self.stream = stream
        # Reasoning models spend output tokens on thinking; a small local model's context is short.
        self.max_tokens = max_tokens or (16384 if self.official else 4096)
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries,
                                    organization=lookup("OPENAI_ORG_ID") or None,
                                    project=lookup("OPENAI_PROJECT_ID") or None,
                                    timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)))

    # ---- the request ------------------------------------------------------------------------------------
    def request(self, prompt: Prompt) -> dict[str, Any]:
        stable = prompt.system + "\n\n" + prompt.program_block
        prev = prompt.previous
        after_code = prompt.state if prev is None else PREVIOUS_NOTE
        if self.official and explicit_breakpoints(self.model):
            # Newer OpenAI models take cache breakpoints like Anthropic's: the stable prefix, then the code.
            mark = {"mode": "explicit"}
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": [{"type": "text", "text": stable, "prompt_cache_breakpoint": mark}]},
                {"role": "user", "content": [{"type": "text", "text": prompt.code, "prompt_cache_breakpoint": mark},
                                             {"type": "text", "text": after_code}]}]
        else:  # plain strings: what every OpenAI-compatible server understands
            messages = [{"role": "system", "content": stable},
                        {"role": "user", "content": prompt.code + "\n\n" + after_code}]
        if prev is not None:
            said: dict[str, Any] = {"role": "assistant", "content": prev.text or None}
            if prev.calls:
                said["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.input if c.problem is None else {})}}
                    for c in prev.calls]
            messages.append(said)
            messages += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content or "(no output)"}
                         for r in prev.results]
            messages.append({"role": "user", "content": prompt.state})
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "tools": [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                        "parameters": t["input_schema"]}} for t in prompt.tools],
        }
        if self.official:
            request["max_completion_tokens"] = self.max_tokens
            request["prompt_cache_key"] = "autoresearch-" + hashlib.sha256(stable.encode()).hexdigest()[:16]
        else:
            request["max_tokens"] = self.max_tokens
        return request

    # ---- the reply ---------------------------------------------------------------------------------------
    def complete(self, prompt: Prompt, on_text: TextListener | None) -> ModelReply:
        kwargs = self.request(prompt)
        try:
            if self.stream:
                reply = self._streamed(kwargs, on_text)
            else:
                reply = self._reply(self.client.chat.completions.create(**kwargs))
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APIConnectionError as exc:
            what = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise AgentUnavailable(self._clean(f"{self.label}: {what}{cause}")) from None
        except openai.APIError as exc:  # an error sent inside a streamed response
            raise AgentUnavailable(self._clean(f"{self.label} sent an error during the reply: {exc.message}")
                                   ) from None
        except httpx2.TransportError as exc:
            raise AgentUnavailable(self._clean(f"{self.label}: the connection dropped during the reply ({exc})")
                                   ) from None
        if not reply.usage:  # some servers report no usage: estimate, and say so
            reply.usage = {"input_tokens": sum(estimate_tokens(v) for v in prompt.sections().values()),
                           "output_tokens": estimate_tokens(reply.text + "".join(c.raw for c in reply.calls)),
                           "cache_read_tokens": 0, "cache_write_tokens": 0, "estimated": True}
        return reply

    def _streamed(self, kwargs: dict[str, Any], on_text: TextListener | None) -> ModelReply:
        text: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        finish = None
        usage: dict[str, Any] = {}
        model = None
        with self.client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}) as chunks:
            for chunk in chunks:
                model = model or getattr(chunk, "model", None)
                if getattr(chunk, "usage", None):
                    usage = _usage(chunk.usage)
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        if on_text:
                            on_text(delta.content)
                    for piece in (delta.tool_calls if delta is not None else None) or []:
                        index = piece.index if piece.index is not None else len(slots)
                        slot = slots.setdefault(index, {"id": None, "name": "", "args": ""})
                        if piece.id:
                            slot["id"] = piece.id
                        function = piece.function
                        if function is not None:
                            if function.name and not slot["name"]:
                                slot["name"] = function.name
                            if function.arguments:
                                slot["args"] += function.arguments if isinstance(function.arguments, str) \
                                    else json.dumps(function.arguments)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if finish is None:
            raise AgentUnavailable(f"{self.label}: the reply stream ended before the message was complete")
        stop = FINISH_REASONS.get(finish, finish)
        calls = []
        for _, s in sorted(slots.items()):
            args, problem = read_arguments(s["args"], cut_off=stop == "max_tokens", max_tokens=self.max_tokens)
            calls.append(ModelCall(s["id"] or "", s["name"], args, raw=s["args"], problem=problem))
        return ModelReply("".join(text), calls, stop, usage, model)

    def _reply(self, completion: Any) -> ModelReply:
        if not completion.choices:
            raise AgentUnavailable(f"{self.label} answered with no choices")
        choice = completion.choices[0]
        message = choice.message
        stop = FINISH_REASONS.get(choice.finish_reason, choice.finish_reason)
        text = message.content or getattr(message, "refusal", None) or ""
        calls = []
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            raw = getattr(function, "arguments", None)
            args, problem = read_arguments(raw, cut_off=stop == "max_tokens", max_tokens=self.max_tokens)
            calls.append(ModelCall(call.id or "", getattr(function, "name", "") or "", args,
                                   raw=raw if isinstance(raw, str) else "", problem=problem))
        return ModelReply(text, calls, stop, _usage(completion.usage), completion.model)

    def probe(self) -> dict[str, Any] | None:
        """One tiny request without retries: AgentUnavailable while the API is down, else its usage."""
        limit = {"max_completion_tokens": 1} if self.official else {"max_tokens": 1}
        try:
            completion = self.client.with_options(max_retries=0, timeout=30.0).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "ping"}], **limit)
        except openai.APIStatusError as exc:
            error = self._status_error(exc)
            if isinstance(error, AgentUnavailable | AgentAuthError):
                raise error from None
            return None  # it refused this tiny request, but it answers
        except (openai.APIConnectionError, httpx2.TransportError) as exc:
            raise AgentUnavailable(self._clean(f"{self.label}: no connection ({exc})")) from None
        return _usage(completion.usage)

    def close(self) -> None:
        self.client.close()

    # ---- errors --------------------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _status_error(self, exc: openai.APIStatusError) -> AgentError:
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message") or exc.message
        code = body.get("code") if isinstance(body.get("code"), str) else getattr(exc, "code", None)
        return status_error(self.label, KEY_VARIABLE, exc.status_code, self._clean(str(detail)),
                            retry_after=retry_after_seconds(exc.response.headers), code=code)


def explicit_breakpoints(model: str) -> bool:
    """Whether the model takes `prompt_cache_breakpoint` marks (gpt-5.6 and later)."""
    m = re.match(r"^gpt-(\d+)(?:\.(\d+))?", canonical_model(model))
    return bool(m) and (int(m.group(1)), int(m.group(2) or 0)) >= (5, 6)


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    prompt = getattr(usage, "prompt_tokens", None) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    written = (getattr(details, "cache_write_tokens", None) or 0) if details is not None else 0
    return {
        "input_tokens": max(0, prompt - cached - written),
        "output_tokens": getattr(usage, "completion_tokens", None) or 0,
        "cache_read_tokens": cached,
        "cache_write_tokens": written,
    }


def create_agent(model: str | None = None, base_url: str | None = None, price: list[float] | None = None,
                 **options: Any) -> LLMAgent:
    adapter = OpenAIAdapter(model, base_url=base_url, **options)
    # The server's address picks genai-prices' provider for a model missing from the table; a local one has none.
    return LLMAgent(adapter, price=price_for(adapter.model, price, base_url=str(adapter.client.base_url)))
