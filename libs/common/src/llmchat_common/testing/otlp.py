"""A real OTLP/HTTP trace receiver for tests: the services export their spans to it exactly as
they would to a collector (`OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`), and tests assert
on what arrived.

Accepts protobuf (what the SDK sends, optionally gzip/deflate compressed) and OTLP/JSON on
POST /v1/traces; /v1/metrics and /v1/logs are accepted and dropped.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
IGNORED_PATHS = frozenset({"/v1/metrics", "/v1/logs"})
MAX_BODY = 64 * 1024 * 1024

# OTLP's numbering (opentelemetry.proto.trace.v1.Span.SpanKind / Status.StatusCode), which is
# not the Python API's `SpanKind` enum (that one starts at INTERNAL = 0).
SPAN_KIND_UNSPECIFIED = 0
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

_KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str | None
    name: str
    kind: int  # SPAN_KIND_* (OTLP numbering)
    service: str  # resource attribute service.name
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int
    status_code: int  # STATUS_*
    links: list[tuple[str, str]]  # (trace_id, span_id)
    scope: str = ""  # instrumentation scope name
    status_message: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, attributes)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def describe(self) -> str:
        parent = self.parent_span_id or "-"
        status = _STATUS_NAMES.get(self.status_code, str(self.status_code))
        kind = _KIND_NAMES.get(self.kind, str(self.kind))
        return (
            f"{self.service or '?'}: {self.name!r} kind={kind} span={self.span_id} parent={parent} "
            f"status={status} attrs={self.attributes}"
        )


def summarize(spans: Iterable[ReceivedSpan], limit: int = 60) -> str:
    """Spans grouped by trace, children indented under their parents (for failure messages)."""
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    if not by_trace:
        return "  (no spans)"
    lines: list[str] = []
    for trace_id, members in by_trace.items():
        lines.append(f"  trace {trace_id} ({len(members)} spans)")
        ids = {s.span_id for s in members}
        children: dict[str | None, list[ReceivedSpan]] = {}
        for span in sorted(members, key=lambda s: s.start_ns):
            parent = span.parent_span_id if span.parent_span_id in ids else None
            children.setdefault(parent, []).append(span)
        _describe_tree(children, None, 0, lines)
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... {len(lines) - limit} more lines"]
    return "\n".join(lines)


def _describe_tree(
    children: dict[str | None, list[ReceivedSpan]], parent: str | None, depth: int, lines: list[str]
) -> None:
    for span in children.get(parent, []):
        lines.append("    " + "  " * depth + span.describe())
        _describe_tree(children, span.span_id, depth + 1, lines)


class OtlpReceiver:
    """OTLP/HTTP on 127.0.0.1; keeps at most `max_traces` traces (the oldest go first)."""

    def __init__(self, port: int = 0, *, max_traces: int = 20_000) -> None:
        self._port = port
        self.max_traces = max_traces
        self._traces: OrderedDict[str, list[ReceivedSpan]] = OrderedDict()
        self._cond = threading.Condition()
        self._requests = 0
        self._rejected = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the SDK appends /v1/traces)."""
        if self._server is None:
            raise RuntimeError("OtlpReceiver is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def traces_endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or an exporter's `endpoint=` (used as is)."""
        return self.endpoint + TRACES_PATH

    def env(self) -> dict[str, str]:
        """What a service process needs to export every span here, promptly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    # -- what arrived -----------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Export requests received (any signal, including rejected ones)."""
        with self._cond:
            return self._requests

    @property
    def rejected(self) -> int:
        """Requests answered with an error status (undecodable, wrong type or path)."""
        with self._cond:
            return self._rejected

    def spans(self, trace_id: str) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._traces.get(trace_id.lower(), ()))

    def all_spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return [span for spans in self._traces.values() for span in spans]

    def trace_ids(self) -> list[str]:
        """Oldest first."""
        with self._cond:
            return list(self._traces)

    def clear(self) -> None:
        with self._cond:
            self._traces.clear()

    def wait_for(
        self,
        predicate: Callable[[list[ReceivedSpan]], bool],
        trace_id: str | None = None,
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """The spans of `trace_id` (all spans when None) once `predicate` holds for them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                current = self._snapshot(trace_id)
                if predicate(current):
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=min(remaining, 0.25))
        scope = f"trace {trace_id}" if trace_id else "any trace"
        raise AssertionError(
            f"spans for {scope} did not satisfy the condition within {timeout:.1f}s "
            f"({len(current)} spans, {self.count} export requests received):\n{summarize(current)}"
        )

    def wait_for_span(self, name: str, trace_id: str | None = None, timeout: float = 10.0) -> ReceivedSpan:
        """The first span called `name` (of `trace_id`, or of any trace)."""
        spans = self.wait_for(lambda ss: any(s.name == name for s in ss), trace_id, timeout)
        return next(s for s in spans if s.name == name)

    def _snapshot(self, trace_id: str | None) -> list[ReceivedSpan]:
        if trace_id is None:
            return [span for spans in self._traces.values() for span in spans]
        return list(self._traces.get(trace_id.lower(), ()))

    # -- ingestion (request threads) --------------------------------------------------------
    def _note_request(self, ok: bool) -> None:
        with self._cond:
            self._requests += 1
            if not ok:
                self._rejected += 1

    def _add(self, spans: list[ReceivedSpan]) -> None:
        if not spans:
            return
        with self._cond:
            for span in spans:
                members = self._traces.get(span.trace_id)
                if members is None:
                    members = self._traces[span.trace_id] = []
                else:
                    self._traces.move_to_end(span.trace_id)
                members.append(span)
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
            self._cond.notify_all()


# -- decoding -------------------------------------------------------------------------------
def decode_traces(body: bytes, content_type: str) -> list[ReceivedSpan]:
    """The spans of an ExportTraceServiceRequest (protobuf or OTLP/JSON). ValueError if it is
    neither."""
    request = ExportTraceServiceRequest()
    if content_type == "application/json":
        try:
            payload = json.loads(body)
            json_format.ParseDict(_hex_ids_to_base64(payload), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, binascii.Error) as exc:
            raise ValueError(f"invalid OTLP/JSON: {exc}") from exc
    else:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise ValueError(f"invalid OTLP protobuf: {exc}") from exc
    received: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=int(span.kind),
                        service=service,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        status_code=int(span.status.code),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        scope=scope,
                        status_message=span.status.message,
                        events=[(event.name, _attributes(event.attributes)) for event in span.events],
                    )
                )
    return received


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping expects bytes as base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted: dict[str, Any] = {}
    for key, item in node.items():
        if key in _ID_FIELDS and isinstance(item, str):
            converted[key] = base64.b64encode(bytes.fromhex(item)).decode() if item else ""
        else:
            converted[key] = _hex_ids_to_base64(item)
    return converted


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


# -- HTTP -----------------------------------------------------------------------------------
def _handler_for(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # idle keep-alive connections go away on their own
        server_version = "llmchat-otlp-receiver"

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                body = self._read_body()
            except ValueError as exc:
                self._reply(400, str(exc).encode(), "text/plain", ok=False)
                return
            if path in IGNORED_PATHS:
                self._reply(200, b"", self.headers.get("Content-Type") or "application/x-protobuf")
                return
            if path != TRACES_PATH:
                self._reply(404, b"not found", "text/plain", ok=False)
                return
            content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if content_type not in ("application/x-protobuf", "application/protobuf", "application/json"):
                self._reply(
                    415, f"unsupported Content-Type {content_type!r}".encode(), "text/plain", ok=False
                )
                return
            try:
                body = _decompress(body, (self.headers.get("Content-Encoding") or "").strip().lower())
                spans = decode_traces(body, content_type)
            except (ValueError, OSError, EOFError, zlib.error) as exc:
                log.warning("otlp receiver: rejected a trace export: %s", exc)
                self._reply(400, str(exc).encode(), "text/plain", ok=False)
                return
            receiver._add(spans)
            if content_type == "application/json":
                self._reply(200, b"{}", "application/json")
            else:
                self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def do_GET(self) -> None:
            self._reply(405, b"POST OTLP/HTTP exports to /v1/traces", "text/plain", count=False)

        def _read_body(self) -> bytes:
            if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                chunks: list[bytes] = []
                total = 0
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    total += size
                    if total > MAX_BODY:
                        raise ValueError("body too large")
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("body too large")
            return self.rfile.read(length) if length > 0 else b""

        def _reply(
            self, status: int, body: bytes, content_type: str, *, ok: bool = True, count: bool = True
        ) -> None:
            if count:
                receiver._note_request(ok)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("otlp receiver: " + format, *args)

    return Handler
