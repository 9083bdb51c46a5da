"""Serving one variant: llama-server behind a small front that makes every answer a cart intent.

    make serve                               # VARIANT=Q4_K_M PORT=8080 -> http://127.0.0.1:8080/v1
    python -m tools.serve --variant Q4_K_M   # any level, F16, or a .gguf path

The front (stdlib HTTP, a thread per connection, loopback only) checks each OpenAI chat-completions
request, puts the project's system prompt first when the client sent none (the model was trained with
it), sets greedy decoding and the answer schema (products from the catalog) as response_format, and
forwards the request to llama-server on a private loopback port. So every answer is JSON naming a
catalog product, whatever the client asks; a malformed request gets a 400 with an OpenAI-style error
and the server keeps serving. llama-server itself answers 500 to a body that is not JSON, hence the
front. Streaming is not offered: an answer is one short JSON object.

Read from params.yaml: serve (the load_test stage and tools/serve.py).
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from ecommerce_slm.catalog import load_catalog
from ecommerce_slm.llama_tools import LOOPBACK, LlamaServer
from ecommerce_slm.params import Section, check, is_pos_int
from ecommerce_slm.paths import DEFAULT_CATALOG
from ecommerce_slm.task import SYSTEM_PROMPT, answer_schema

ROLES = ("system", "user", "assistant")
MAX_BODY_BYTES = 1 << 20
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class LoadTestConfig(Section):
    """`serve.load_test:` concurrent clients against the served variant, a fixed number of requests."""

    clients: list = field(default_factory=lambda: [1, 8])  # each count is measured on its own
    requests: int = 96  # per client count and repeat, spread over the clients
    repeats: int = 3  # median and spread over repeats
    warmup: int = 8  # requests before each count's measured ones (not counted)

    def __post_init__(self):
        check(
            len(self.clients) > 0 and all(is_pos_int(c) for c in self.clients),
            "clients",
            "a non-empty list of positive integers",
            self.clients,
        )
        for name in ("requests", "repeats"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        check(self.warmup >= 0, "warmup", "an integer >= 0", self.warmup)


@dataclass
class ServeConfig(Section):
    """`serve:` the variant `make serve` and the load_test stage put behind llama-server."""

    SECTION: ClassVar[str] = "serve"
    variant: str = "Q4_K_M"  # a level of gguf.levels or F16
    threads: int = 2
    parallel: int = 8  # llama-server slots: requests decoded at once
    context_per_slot: int = 1024  # tokens; the KV buffer is shared, so one long request may use more
    max_tokens: int = 48  # an answer needs ~20; a client may ask for fewer
    catalog: str = DEFAULT_CATALOG  # the products the answer schema allows
    load_test: LoadTestConfig = field(default_factory=LoadTestConfig)

    def __post_init__(self):
        for name in ("threads", "parallel", "context_per_slot", "max_tokens"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        check(bool(self.variant), "variant", "a GGUF level such as Q4_K_M, or F16", self.variant)


class BadRequest(ValueError):
    pass


def checked_request(body: bytes, schema: dict, max_tokens: int) -> dict:
    """The request forwarded to llama-server, built from what the client may choose; BadRequest if malformed."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: expected a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            raise BadRequest(f"messages[{i}]: expected {{role: {' | '.join(ROLES)}, content: string}}")
    if request.get("stream"):
        raise BadRequest("stream: not offered (an answer is one short JSON object)")
    wanted = request.get("max_tokens", max_tokens)
    if not is_pos_int(wanted):
        raise BadRequest(f"max_tokens: expected a positive integer, got {wanted!r}")
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
    return {
        "model": str(request.get("model", "")),
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": min(wanted, max_tokens),
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "cart_intent", "schema": schema}},
    }


def error_body(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


class Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, backend: LlamaServer, schema: dict, max_tokens: int):
        self.backend, self.schema, self.max_tokens = backend, schema, max_tokens
        self.connections = threading.local()  # one keep-alive connection to llama-server per thread
        super().__init__((LOOPBACK, port), FrontHandler)

    def forward(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        connection = getattr(self.connections, "backend", None)
        for attempt in range(2):  # a kept-alive connection the backend closed is opened again once
            if connection is None:
                connection = http.client.HTTPConnection(LOOPBACK, self.backend.port, timeout=600)
                self.connections.backend = connection
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                connection = self.connections.backend = None
                if attempt:
                    return 502, error_body("llama-server did not answer", "server_error")
        raise AssertionError("unreachable")


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: an answer goes out as two writes (headers, then body), and with Nagle's algorithm the
    # body waits for the client's delayed ACK of the headers: +41-46 ms on a 235 ms single request here
    disable_nagle_algorithm = True
    server: Front

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/health", "/v1/models", "/models"):
            self._send(*self.server.forward("GET", self.path))
        else:
            self._send(404, error_body(f"{self.path}: not found (POST /v1/chat/completions)"))

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._send(411, error_body("a Content-Length header is required"))
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._send(413, error_body(f"the body is {length} bytes; at most {MAX_BODY_BYTES}"))
        body = self.rfile.read(length)
        if self.path not in CHAT_PATHS:
            return self._send(404, error_body(f"{self.path}: not found (POST /v1/chat/completions)"))
        try:
            request = checked_request(body, self.server.schema, self.server.max_tokens)
        except BadRequest as err:
            return self._send(400, error_body(str(err)))
        self._send(*self.server.forward("POST", "/v1/chat/completions", json.dumps(request).encode()))

    def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass  # one line per request would drown the load test's output


class Service:
    """llama-server on a private port behind the front on `port` (0: a free one); a context manager."""

    def __init__(self, model: str | Path, cfg: ServeConfig, port: int = 0):
        self.model, self.cfg, self.port = str(model), cfg, port
        names = load_catalog(cfg.catalog, [], key="serve.catalog").names if cfg.catalog else None
        self.products = set(names) if names else None  # what a valid answer may name (None: any product)
        self.schema = answer_schema(names)
        self.backend: LlamaServer | None = None
        self.front: Front | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.front.server_address[1]}/v1"

    def start(self) -> Service:
        self.backend = LlamaServer(
            self.model, self.cfg.threads, self.cfg.parallel, self.cfg.context_per_slot, ready_timeout=300
        ).start()
        try:
            self.front = Front(self.port, self.backend, self.schema, self.cfg.max_tokens)
        except BaseException:
            self.backend.stop()
            raise
        threading.Thread(target=self.front.serve_forever, name="front", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.front is not None:
            self.front.shutdown()
            self.front.server_close()
            self.front = None
        if self.backend is not None:
            self.backend.stop()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
