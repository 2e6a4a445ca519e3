"""`--agent anthropic`: the Messages API with tool use, through the official `anthropic` SDK.

Translation only: a provider-neutral Prompt becomes a Messages request (one user message, with
cache_control breakpoints on the stable prefix and on the training script), and the response (streamed or
not) becomes a ModelReply. The turn itself, reading
tool calls and counting cost live in llm.py.

The key comes from the environment only: ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN for a bearer token);
the base URL from --base-url or ANTHROPIC_BASE_URL. The `autoresearch` command moves these out of its own
environment at start (supervisor/core/secrets.py), so they are read from that store and passed to the client
explicitly. The SDK retries 408/409/429/5xx/529 and dropped
connections itself (max_retries, honouring retry-after); what is still failing after that is handed to the
loop as AgentUnavailable, which waits longer and pauses the run after a long outage.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from supervisor.agents.base import AgentAuthError, AgentError, AgentUnavailable, TextListener
from supervisor.agents.llm import (
    PLACEHOLDER_KEY,
    LLMAgent,
    ModelCall,
    ModelReply,
    Prompt,
    read_arguments,
    render_previous,
    retry_after_seconds,
    scrub,
    status_error,
)
from supervisor.core.pricing import price_for
from supervisor.core.secrets import credential, lookup

DEFAULT_MODEL = "claude-sonnet-5-5"
KEY_VARIABLE = "ANTHROPIC_API_KEY"
TOKEN_VARIABLE = "ANTHROPIC_AUTH_TOKEN"

# An error sent inside a 200 stream carries only its type; these are the statuses the same error has
# when it comes as an HTTP response.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}


def _custom_headers() -> dict[str, str] | None:
    """ANTHROPIC_CUSTOM_HEADERS ("Name: value" lines), parsed as the SDK does: the SDK reads it from the
    environment, where the entry point no longer leaves it (a gateway may authenticate through it)."""
    text = lookup("ANTHROPIC_CUSTOM_HEADERS")
    if not text:
        return None
    headers = {}
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return headers or None


class AnthropicAdapter:
    provider = "anthropic"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, stream: bool = True,
                 max_tokens: int = 16384, timeout_s: float = 300.0, max_retries: int = 3,
                 cache_ttl: str = "5m") -> None:
        self.model = model or DEFAULT_MODEL
        # From the process's secrets (the entry point moved them out of the environment), else the
        # environment; always handed to the client explicitly, so the SDK never looks for them itself.
        base_url = base_url or lookup("ANTHROPIC_BASE_URL") or None
        key = credential(KEY_VARIABLE)
        token = credential(TOKEN_VARIABLE)
        if not key and not token:
            if base_url is None:
                raise AgentAuthError(f"--agent anthropic needs an API key: set {KEY_VARIABLE} in the environment "
                                     "(keys are never read from files or the command line)")
            key = PLACEHOLDER_KEY  # a gateway on --base-url that wants no key
        self._secrets = [key, token]
        self.label = "the Anthropic API" if base_url is None else f"the Anthropic-compatible server at {base_url}"
        self.stream = stream
        self.max_tokens = max_tokens
        self.cache_control: dict[str, Any] = {"type": "ephemeral"}
        if cache_ttl != "5m":
            self.cache_control["ttl"] = cache_ttl
        given = {"api_key": key} if key else {"auth_token": token}
        self.client = anthropic.Anthropic(
            **given, base_url=base_url, max_retries=max_retries, default_headers=_custom_headers(),
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )

    # ---- the request ------------------------------------------------------------------------------------
    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The Messages request for a prompt: tools, system and program.md form the cached prefix; the
        training script is a second breakpoint (it changes only when an edit is made or kept)."""
        system = [{"type": "text", "text": prompt.system},
                  {"type": "text", "text": prompt.program_block, "cache_control": self.cache_control}]
        tools = [{"name": t["name"], "description": t["description"], "input_schema": t["input_schema"]}
                 for t in prompt.tools]
        # One user message, rebuilt each turn. The previous reply is shown as text, never replayed as an
        # assistant message: with thinking on (the default of current models), a replayed turn must carry
        # its thinking blocks, bound to the exact conversation before them, which a fresh build never has.
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt.code, "cache_control": self.cache_control}]
        if prompt.previous is not None:
            content.append({"type": "text", "text": render_previous(prompt.previous)})
        content.append({"type": "text", "text": prompt.state})
        messages = [{"role": "user", "content": content}]
        return {"model": self.model, "max_tokens": self.max_tokens, "system": system, "tools": tools,
                "messages": messages}

    # ---- the reply ---------------------------------------------------------------------------------------
    def complete(self, prompt: Prompt, on_text: TextListener | None) -> ModelReply:
        kwargs = self.request(prompt)
        try:
            if self.stream:
                return self._streamed(kwargs, on_text)
            return self._reply(self.client.messages.create(**kwargs))
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from None
        except anthropic.APIConnectionError as exc:
            raise self._connection_error(exc) from None
        except httpx2.TransportError as exc:  # the SDK does not wrap a connection lost in mid-stream
            raise AgentUnavailable(self._clean(f"{self.label}: the connection dropped during the reply ({exc})")
                                   ) from None

    def _streamed(self, kwargs: dict[str, Any], on_text: TextListener | None) -> ModelReply:
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        usage: dict[str, Any] = {}
        stop_reason = None
        model = None
        complete = False
        with self.client.messages.create(**kwargs, stream=True) as events:
            for event in events:
                kind = event.type
                if kind == "message_start":
                    model = event.message.model
                    usage = _usage(event.message.usage)
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = {"id": block.id, "name": block.name, "json": "",
                                               "input": getattr(block, "input", None)}
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        text.append(delta.text)
                        if on_text:
                            on_text(delta.text)
                    elif delta.type == "input_json_delta" and event.index in blocks:
                        blocks[event.index]["json"] += delta.partial_json
                elif kind == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    usage.update({k: v for k, v in _usage(event.usage).items() if v})
                elif kind == "message_stop":
                    complete = True
        if not complete:
            raise AgentUnavailable(f"{self.label}: the reply stream ended before the message was complete")
        cut = stop_reason == "max_tokens"
        calls = []
        for _, b in sorted(blocks.items()):
            args, problem = read_arguments(b["json"] if b["json"] else b["input"], cut_off=cut,
                                           max_tokens=self.max_tokens)
            calls.append(ModelCall(b["id"], b["name"], args, raw=b["json"], problem=problem))
        return ModelReply("".join(text), calls, stop_reason, usage, model)

    def _reply(self, message: Any) -> ModelReply:
        text, calls = [], []
        cut = message.stop_reason == "max_tokens"
        for block in message.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                args, problem = read_arguments(block.input, cut_off=cut, max_tokens=self.max_tokens)
                calls.append(ModelCall(block.id, block.name, args, problem=problem))
        return ModelReply("".join(text), calls, message.stop_reason, _usage(message.usage), message.model)

    def probe(self) -> dict[str, Any] | None:
        """One tiny request without retries: AgentUnavailable while the API is down, else its usage."""
        try:
            message = self.client.with_options(max_retries=0, timeout=30.0).messages.create(
                model=self.model, max_tokens=1, messages=[{"role": "user", "content": "ping"}])
        except anthropic.APIStatusError as exc:
            error = self._status_error(exc)
            if isinstance(error, AgentUnavailable | AgentAuthError):
                raise error from None
            return None  # it refused this tiny request, but it answers
        except (anthropic.APIConnectionError, httpx2.TransportError) as exc:
            raise AgentUnavailable(self._clean(f"{self.label}: no connection ({exc})")) from None
        return _usage(message.usage)

    def close(self) -> None:
        self.client.close()

    # ---- errors --------------------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _status_error(self, exc: anthropic.APIStatusError) -> AgentError:
        status = exc.status_code
        error_type = getattr(exc, "type", None)
        if status < 400:  # an error event inside a streamed 200 response
            status = ERROR_TYPE_STATUS.get(error_type or "", 500)
        detail = getattr(exc, "api_message", None) or exc.message
        error = status_error(self.label, KEY_VARIABLE, status, self._clean(str(detail)),
                             retry_after=retry_after_seconds(exc.response.headers))
        return error

    def _connection_error(self, exc: anthropic.APIConnectionError) -> AgentUnavailable:
        what = "timed out" if isinstance(exc, anthropic.APITimeoutError) else "connection failed"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        return AgentUnavailable(self._clean(f"{self.label}: {what}{cause}"))


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "input_tokens": getattr(usage, "input_tokens", None) or 0,
        "output_tokens": getattr(usage, "output_tokens", None) or 0,
        "cache_read_tokens": getattr(usage, "cache_read_input_tokens", None) or 0,
        "cache_write_tokens": getattr(usage, "cache_creation_input_tokens", None) or 0,
    }


def create_agent(model: str | None = None, base_url: str | None = None, price: list[float] | None = None,
                 **options: Any) -> LLMAgent:
    adapter = AnthropicAdapter(model, base_url=base_url, **options)
    # The server's address picks genai-prices' provider for a model missing from the table; a local one has none.
    return LLMAgent(adapter, price=price_for(adapter.model, price, base_url=str(adapter.client.base_url)))
