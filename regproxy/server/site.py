# -*- test-case-name: tests.unit.test_forward -*-
"""
The HTTP server every request passes through: the connection, the request
class, the root of the resource tree and the one log line per request.

What hangs under the root is decided by L{regproxy.app}.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from regproxy.server.cors import CORSPolicy
from regproxy.server.errors import errorBody, notFound
from regproxy.server.request import StreamingRequest

_log = Logger()


class JSONResource(Resource):
    """
    A fixed JSON answer.
    """

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self._code = code
        self._body = body

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return self._body


def healthResource() -> IResource:
    return JSONResource(200, json.dumps({"status": "ok"}).encode() + b"\n")


class RootResource(Resource):
    """
    The top of the tree: named children, and a registry-format 404 for
    everything else.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        error = notFound(f"no such path: {request.path.decode('latin-1')[:200]}")
        return JSONResource(error.status, error.body())

    def render(self, request: Request) -> bytes:
        return self.getChild(b"", request).render(request)


class RegproxyChannel(http.HTTPChannel):
    """
    Our HTTP/1.1 connection: malformed requests (huge headers, bad
    chunking) get a registry-format error instead of a bare status line.

    A TLS handshake sent to a plain listener is refused at once: clients
    told that a registry is insecure try HTTPS first and fall back to HTTP
    only when that fails, and without this they wait for their handshake
    timeout (ten seconds for docker and skopeo) on every command.
    """

    _firstBytesSeen = False

    def dataReceived(self, data: bytes) -> None:
        if not self._firstBytesSeen and data:
            self._firstBytesSeen = True
            if data[:1] == b"\x16":
                self._respondToBadRequestAndDisconnect(
                    "this port speaks plain HTTP, not TLS"
                )
                return
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect(
            "request line or header too long", 431, b"Request Header Fields Too Large"
        )

    def _respondToBadRequestAndDisconnect(
        self,
        message: str = "malformed HTTP request",
        status: int = 400,
        phrase: bytes = b"Bad Request",
    ) -> None:
        body = errorBody("BAD_REQUEST", message)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, phrase, len(body))
            + body
        )
        self.loseConnection()


class LoggingRequest(StreamingRequest):
    """
    Notes when the request started, for the one log line per request.
    """

    def __init__(self, channel, *args, **kwargs) -> None:
        super().__init__(channel, *args, **kwargs)
        reactor = getattr(getattr(channel, "site", None), "reactor", None)
        self.startedAt = reactor.seconds() if reactor is not None else None

    def process(self) -> None:
        # Site.buildProtocol sets the channel's site; HTTPChannel does not
        # declare it.
        policy = getattr(self.channel.site, "cors", None)  # type: ignore[attr-defined]
        if policy is not None and policy.apply(self):
            return
        super().process()


class RegproxySite(Site):
    """
    A L{Site} that streams request bodies, never shows tracebacks and logs
    one line per request without query strings (which may carry secrets).
    """

    # Twisted types this as a factory of its HTTP/2-negotiating wrapper;
    # buildProtocol works as well with a plain HTTPChannel subclass.
    protocol = RegproxyChannel  # type: ignore[assignment]
    requestFactory = LoggingRequest
    cors: CORSPolicy | None = None
    # The LAN cache's forwarder, closed at shutdown (set by regproxy.app).
    cache: object = None
    # The --warm-fleet follower, run by regproxy.tap on a timer.
    warmer: object = None
    displayTracebacks = False
    _log = Logger()

    def log(self, request: http.Request) -> None:
        started = getattr(request, "startedAt", None)
        duration = self.reactor.seconds() - started if started is not None else 0.0
        self._log.info(
            "{method} {path} -> {code} {bytes}B {duration:.3f}s upstream={upstream} cache={cache}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:300],
            code=request.code,
            bytes=request.sentLength,
            duration=duration,
            upstream=getattr(request, "upstreamStatus", None) or "-",
            cache=getattr(request, "cacheOutcome", None) or "-",
        )
