"""A loopback HTTP server that speaks the Anthropic Messages API and OpenAI Chat Completions, for tests.

The real `anthropic` and `openai` SDKs talk to it over 127.0.0.1 exactly as they talk to the real services:
JSON responses and server-sent-event streams (chunked transfer encoding), tool calls in each protocol's own
form, usage with prompt-cache counts, and error bodies in each protocol's own shape. Replies are scripted
(a list consumed in order, or a function of the request), and faults can be injected: 429 with
retry-after, 500, Anthropic's 529 overloaded_error, 401, a stall longer than the client's timeout, a
connection dropped before the response or in the middle of a stream, an error event inside a stream, and
tool calls whose JSON is malformed.

    with LLMServer([Reply("reading", [ToolUse("read_file", {"path": "train.py"})]), overloaded()]) as server:
        client = anthropic.Anthropic(api_key=server.api_key, base_url=server.url)
        client_oa = openai.OpenAI(api_key=server.api_key, base_url=server.openai_url)

Every request is recorded (`server.requests`) with its headers and JSON body, so tests can check what was
sent: the tools, the cache breakpoints, the prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


# ---- what the script holds -------------------------------------------------------------------------------
@dataclass
class ToolUse:
    name: str
    # A dict is the normal case. A str is sent verbatim as the arguments' JSON text (malformed on purpose);
    # a list is sent as a JSON array (valid JSON, but not the object a tool call needs).
    input: dict[str, Any] | list[Any] | str
    id: str | None = None


@dataclass
class Reply:
    text: str = ""
    tools: list[ToolUse] = field(default_factory=list)
    stop_reason: str | None = None  # default: tool_use / end_turn (Anthropic), tool_calls / stop (OpenAI)
    chunk_chars: int = 7            # streamed text and tool JSON arrive in pieces this long
    output_tokens: int | None = None


@dataclass
class Fault:
    kind: str                 # status | drop | stall | drop_mid_stream | stream_error
    status: int = 500
    error_type: str = "api_error"
    message: str = "Internal server error"
    retry_after: float | None = None
    seconds: float = 0.0
    echo_key: bool = False    # put the key the client sent into the error message (as some servers do)


def rate_limited(retry_after: float = 0.05) -> Fault:
    return Fault("status", 429, "rate_limit_error", "Number of requests has exceeded your rate limit", retry_after)


def server_error(retry_after: float | None = 0.05) -> Fault:
    return Fault("status", 500, "api_error", "Internal server error", retry_after)


def overloaded(retry_after: float | None = 0.05) -> Fault:
    return Fault("status", 529, "overloaded_error", "Overloaded", retry_after)


def unauthorized(echo_key: bool = True) -> Fault:
    return Fault("status", 401, "authentication_error", "invalid x-api-key", echo_key=echo_key)


def not_found(message: str = "model: no-such-model") -> Fault:
    return Fault("status", 404, "not_found_error", message)


def bad_request(message: str = "prompt is too long: 250000 tokens > 200000 maximum") -> Fault:
    return Fault("status", 400, "invalid_request_error", message)


def stall(seconds: float = 3.0) -> Fault:
    """Say nothing for `seconds` (longer than the client's timeout), then give up."""
    return Fault("stall", seconds=seconds)


def dropped() -> Fault:
    """Close the connection after reading the request, without a response."""
    return Fault("drop")


def dropped_mid_stream() -> Fault:
    """Start a streamed reply, then close the connection in the middle of it."""
    return Fault("drop_mid_stream")


def stream_error(error_type: str = "overloaded_error", message: str = "Overloaded") -> Fault:
    """A 200 stream that carries an error event instead of a message."""
    return Fault("stream_error", 200, error_type, message)


# ---- what was received --------------------------------------------------------------------------------------
@dataclass
class Recorded:
    protocol: str            # anthropic | openai
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def text(self) -> str:
        """Everything the request says, as one string (for 'is X in the prompt' checks)."""
        return json.dumps(self.body, ensure_ascii=False)


Responder = Callable[[Recorded], "Reply | Fault"]


def tokens(value: Any) -> int:
    """The server's token count: four characters of JSON per token, as the agent's estimate assumes."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return math.ceil(len(text) / 4)


class LLMServer:
    def __init__(self, script: Iterable[Reply | Fault] | Responder = (), *, api_key: str = "sk-test-loopback",
                 require_key: bool = True, model: str | None = None) -> None:
        self.api_key = api_key
        self.require_key = require_key
        self.model = model
        self.requests: list[Recorded] = []
        self._responder: Responder | None = script if callable(script) else None
        self._script: deque[Reply | Fault] = deque() if callable(script) else deque(script)
        self._lock = threading.Lock()
        self._cache: set[str] = set()
        self._closing = threading.Event()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llm-server", daemon=True)

    # ---- lifecycle --------------------------------------------------------------------------------------
    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        """The Anthropic base URL (the SDK adds /v1/messages)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        """The OpenAI base URL (the SDK adds /chat/completions)."""
        return self.url + "/v1"

    # ---- the script ------------------------------------------------------------------------------------------
    def add(self, *items: Reply | Fault) -> None:
        with self._lock:
            self._script.extend(items)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def set_responder(self, responder: Responder | None) -> None:
        self._responder = responder

    def next_for(self, request: Recorded) -> Reply | Fault:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self._responder is not None:
            return self._responder(request)
        return Fault("status", 400, "invalid_request_error", "the loopback script has no more replies")

    def requests_to(self, protocol: str) -> list[Recorded]:
        return [r for r in self.requests if r.protocol == protocol]

    # ---- usage with a simulated prompt cache ------------------------------------------------------------
    def anthropic_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Anthropic caches the prefix up to each cache_control breakpoint (tools, system, then messages)."""
        parts: list[Any] = [("tools", t) for t in body.get("tools", [])]
        system = body.get("system", [])
        parts += [("system", b) for b in (system if isinstance(system, list) else [{"text": system}])]
        for m in body.get("messages", []):
            content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            parts += [(m["role"], b) for b in content]
        total = sum(tokens(p) for p in parts)
        breakpoints = [i for i, (_, block) in enumerate(parts) if isinstance(block, dict) and block.get("cache_control")]
        read = write = 0
        with self._lock:
            hit = 0
            for i in reversed(breakpoints):
                if self._key(parts[: i + 1]) in self._cache:
                    hit = i + 1
                    break
            read = sum(tokens(p) for p in parts[:hit])
            last = breakpoints[-1] + 1 if breakpoints else 0
            if last > hit:
                write = sum(tokens(p) for p in parts[hit:last])
            for i in breakpoints:
                self._cache.add(self._key(parts[: i + 1]))
        return {"input_tokens": total - read - write, "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write}

    def openai_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """OpenAI caches automatically: the longest prefix of whole messages seen before (1024+ tokens)."""
        head = [("tools", body.get("tools", []))]
        messages = body.get("messages", [])
        total = tokens(head) + sum(tokens(m) for m in messages)
        cached = 0
        with self._lock:
            for k in range(len(messages), 0, -1):
                if self._key(head + messages[:k]) in self._cache:
                    cached = tokens(head) + sum(tokens(m) for m in messages[:k])
                    break
            for k in range(1, len(messages) + 1):
                self._cache.add(self._key(head + messages[:k]))
        if cached < 1024:
            cached = 0
        return {"prompt_tokens": total, "cached_tokens": cached}

    @staticmethod
    def _key(parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---- the wire -------------------------------------------------------------------------------------------------
def _handler(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `server` (http.server makes one handler object per request)."""
    return type("Handler", (_Handler,), {"llm": server})


class _Handler(BaseHTTPRequestHandler):
    # The scripted server this handler answers for (`self.server` is http.server's own server object).
    llm: LLMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- routing ------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            data = [{"id": self.llm.model or "loopback-model", "object": "model", "type": "model",
                     "owned_by": "loopback", "created": 0, "display_name": "Loopback"}]
            self._json(200, {"object": "list", "data": data, "has_more": False})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unreadable": raw.decode(errors="replace")}
        if self.path.endswith("/v1/messages"):
            protocol = "anthropic"
        elif self.path.endswith("/chat/completions"):
            protocol = "openai"
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Recorded(protocol, self.path, headers, body, time.time())
        with self.llm._lock:
            self.llm.requests.append(request)
        sent_key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.llm.require_key and sent_key != self.llm.api_key:
            self._error(protocol, Fault("status", 401, "authentication_error", "invalid x-api-key"), sent_key)
            return
        item = self.llm.next_for(request)
        if isinstance(item, Fault):
            self._fault(protocol, item, sent_key, request)
        elif protocol == "anthropic":
            self._anthropic(item, body)
        else:
            self._openai(item, body)

    # ---- faults ---------------------------------------------------------------------------------------
    def _fault(self, protocol: str, fault: Fault, sent_key: str, request: Recorded) -> None:
        if fault.kind == "status":
            self._error(protocol, fault, sent_key)
        elif fault.kind == "drop":
            self._drop()
        elif fault.kind == "stall":
            self.llm._closing.wait(fault.seconds)
            self._drop()
        elif fault.kind == "drop_mid_stream":
            self._start_stream()
            if protocol == "anthropic":
                self._event("message_start", {"type": "message_start", "message": self._message_shell(request.body)})
                self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
                self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": "Let me th"}})
            else:
                self._data(self._chunk(request.body, {"role": "assistant", "content": "Let me th"}))
            self._drop()
        elif fault.kind == "stream_error":
            self._start_stream()
            if protocol == "anthropic":
                self._event("message_start", {"type": "message_start", "message": self._message_shell(request.body)})
                self._event("error", {"type": "error", "error": {"type": fault.error_type, "message": fault.message}})
            else:
                self._data({"error": {"message": fault.message, "type": fault.error_type, "code": None}})
            self._end_stream()

    def _error(self, protocol: str, fault: Fault, sent_key: str) -> None:
        message = fault.message + (f": {sent_key}" if fault.echo_key and sent_key else "")
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
            headers["retry-after-ms"] = f"{fault.retry_after * 1000:g}"
        if protocol == "anthropic":
            body: dict[str, Any] = {"type": "error", "error": {"type": fault.error_type, "message": message},
                                    "request_id": "req_" + uuid.uuid4().hex[:12]}
        else:
            code = {401: "invalid_api_key", 429: "rate_limit_exceeded", 404: "model_not_found"}.get(fault.status)
            body = {"error": {"message": message, "type": fault.error_type, "param": None, "code": code}}
        self._json(fault.status, body, headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- Anthropic Messages ----------------------------------------------------------------------------
    def _message_shell(self, body: dict[str, Any]) -> dict[str, Any]:
        usage = self.llm.anthropic_usage(body)
        return {"id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
                "model": self.llm.model or body.get("model"), "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}

    def _anthropic(self, reply: Reply, body: dict[str, Any]) -> None:
        stop = reply.stop_reason or ("tool_use" if reply.tools else "end_turn")
        tool_ids = [t.id or "toolu_" + uuid.uuid4().hex[:20] for t in reply.tools]
        out_tokens = reply.output_tokens or max(1, tokens(reply.text) + sum(tokens(t.input) for t in reply.tools))
        if not body.get("stream"):
            message = self._message_shell(body)
            content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
            for t, tid in zip(reply.tools, tool_ids, strict=True):
                content.append({"type": "tool_use", "id": tid, "name": t.name, "input": t.input})
            message.update(content=content, stop_reason=stop)
            message["usage"]["output_tokens"] = out_tokens
            self._json(200, message)
            return
        self._start_stream()
        self._event("message_start", {"type": "message_start", "message": self._message_shell(body)})
        self._event("ping", {"type": "ping"})
        index = 0
        if reply.text:
            self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}})
            for piece in _pieces(reply.text, reply.chunk_chars):
                self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "text_delta", "text": piece}})
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        for t, tid in zip(reply.tools, tool_ids, strict=True):
            self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "tool_use", "id": tid, "name": t.name,
                                                                  "input": {}}})
            text = t.input if isinstance(t.input, str) else json.dumps(t.input)
            for piece in _pieces(text, reply.chunk_chars):
                self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": piece}})
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": out_tokens}})
        self._event("message_stop", {"type": "message_stop"})
        self._end_stream()

    # ---- OpenAI Chat Completions -------------------------------------------------------------------------
    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, Any] | None = None, choices: bool = True) -> dict[str, Any]:
        return {"id": "chatcmpl-loopback", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.llm.model or body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                if choices else [], "usage": usage}

    def _openai(self, reply: Reply, body: dict[str, Any]) -> None:
        finish = reply.stop_reason or ("tool_calls" if reply.tools else "stop")
        calls = []
        for i, t in enumerate(reply.tools):
            args = t.input if isinstance(t.input, str) else json.dumps(t.input)
            calls.append({"index": i, "id": t.id or "call_" + uuid.uuid4().hex[:20], "type": "function",
                          "function": {"name": t.name, "arguments": args}})
        cache = self.llm.openai_usage(body)
        out_tokens = reply.output_tokens or max(1, tokens(reply.text) + sum(tokens(c["function"]["arguments"])
                                                                           for c in calls))
        usage = {"prompt_tokens": cache["prompt_tokens"], "completion_tokens": out_tokens,
                 "total_tokens": cache["prompt_tokens"] + out_tokens,
                 "prompt_tokens_details": {"cached_tokens": cache["cached_tokens"]}}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if calls:
                message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
            self._json(200, {"id": "chatcmpl-loopback", "object": "chat.completion", "created": int(time.time()),
                             "model": self.llm.model or body.get("model"),
                             "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                          "logprobs": None}], "usage": usage})
            return
        self._start_stream()
        self._data(self._chunk(body, {"role": "assistant", "content": ""}))
        for piece in _pieces(reply.text, reply.chunk_chars):
            self._data(self._chunk(body, {"content": piece}))
        for c in calls:
            head = {"index": c["index"], "id": c["id"], "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": ""}}
            self._data(self._chunk(body, {"tool_calls": [head]}))
            for piece in _pieces(c["function"]["arguments"], reply.chunk_chars):
                self._data(self._chunk(body, {"tool_calls": [{"index": c["index"],
                                                              "function": {"arguments": piece}}]}))
        self._data(self._chunk(body, {}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._data(self._chunk(body, {}, usage=usage, choices=False))
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_stream()

    # ---- HTTP helpers ---------------------------------------------------------------------------------------
    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_" + uuid.uuid4().hex[:12])
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def _data(self, data: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(data)}\n\n".encode())

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout test) is expected, not a failure


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]
